"""Length-grouped batches: each batch holds texts of similar length, so padding costs little.

Training batches are padded to their longest row. Drawn at random, a batch of short tweets
often carries one long one and pays for its length in every row. Grouping (shuffle, sort by
length within windows of `GROUP_WINDOW_BATCHES` global batches, cut into batches, shuffle the
full batches, the short one last) keeps the randomness of which texts meet while removing most of that padding.

The order is a function of (seed, epoch) only, like torch's DistributedSampler, so a resumed
run slices the same list where it stopped. Under torch.distributed each global batch is cut
into one contiguous share per process: the processes' micro-batches of one step have similar
lengths too, and every row is seen once per epoch over all processes (rows are repeated to
fill the last share, as DistributedSampler does).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

GROUP_WINDOW_BATCHES = 50  # global batches sorted together: wide enough to group, narrow enough to mix


def grouped_order(lengths: Sequence[int], global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's global batches of row indices, length-grouped and in shuffled order."""
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = GROUP_WINDOW_BATCHES * global_batch
    batches = []
    for start in range(0, len(order), window):
        # sorted() is stable: rows of equal length keep their shuffled order
        ranked = sorted(order[start : start + window], key=lambda index: lengths[index], reverse=True)
        batches += [ranked[i : i + global_batch] for i in range(0, len(ranked), global_batch)]
    # only full batches are shuffled: the one short batch stays last, so cutting the epoch's rows
    # into consecutive batches (what the loader does) gives back exactly these batches
    full = [batch for batch in batches if len(batch) == global_batch]
    short = [batch for batch in batches if len(batch) < global_batch]
    shuffled = torch.randperm(len(full), generator=generator).tolist()
    return [full[i] for i in shuffled] + short


class LengthGroupedSampler(Sampler[int]):
    """This process's rows of an epoch, in global batches of similar lengths (see the module note).

    Consecutive runs of `global_batch // world_size` indices form this process's micro-batches.
    """

    def __init__(self, lengths: Sequence[int], global_batch: int, world_size: int = 1, rank: int = 0, seed: int = 0) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} does not split over {world_size} processes")
        self.lengths = list(lengths)
        self.global_batch = global_batch
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.num_samples = math.ceil(len(self.lengths) / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rows = len(self.lengths)
        padded = self.num_samples * self.world_size
        # rows repeated from the start fill the last shares, so every process gets as many
        lengths = [self.lengths[i % rows] for i in range(padded)]
        for batch in grouped_order(lengths, self.global_batch, self.seed, self.epoch):
            share = len(batch) // self.world_size
            yield from (index % rows for index in batch[self.rank * share : (self.rank + 1) * share])


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(real tokens, padding tokens) when each batch is padded to its longest row."""
    real = sum(lengths[i] for batch in batches for i in batch)
    total = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)
    return real, total - real
