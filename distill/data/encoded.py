"""Examples turned into id tensors once, and batched for training and inference.

Every batch is a dict: `inputs` (what `model(**inputs)` takes), `labels` (gold targets, or -1
for unlabelled texts) and `index` (row numbers, so a loss can look up cached teacher
outputs for the same rows). Token-classification batches add `words`: each word's first-piece
position (-1 for none), or for a word-level tagger each token's own position, which
`word_logits` reads to turn per-piece outputs into per-word ones; their `labels` are
(batch, words) tag ids, IGNORED where there is none.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset

from distill.data.tokenize import TextEncoder
from distill.data.words import UNK_ID, WordTokenizer, WordVocab, token_positions
from distill.tasks.token_classification import IGNORED

NO_LABEL = -1
ENCODE_CHUNK = 2048


def targets_tensor(targets: Sequence) -> torch.Tensor:
    """A batch's targets: class ids as int64 (batch,), label indicators (batch, labels) or scores
    (batch,) as float32, whichever the task family gave."""
    if isinstance(targets[0], (float, list)):
        return torch.tensor(targets, dtype=torch.float32)
    return torch.tensor(targets, dtype=torch.long)


def word_logits(logits: torch.Tensor, batch: dict, inference: bool = False) -> torch.Tensor:
    """A model's outputs as losses and decisions read them: per text as they are, or, for a
    token-classification batch, (batch, words, tags) gathered at each word's first piece.

    A word without a piece gets NaN at inference (decided `O`); in training it keeps a finite
    value, since its target is already IGNORED and NaN would poison the gradients.
    """
    positions = batch.get("words")
    if positions is None:
        return logits
    index = positions.clamp(min=0).unsqueeze(-1).expand(-1, -1, logits.shape[-1])  # (batch, words, tags)
    gathered = torch.gather(logits, 1, index)
    if inference:
        gathered = gathered.masked_fill((positions < 0).unsqueeze(-1), float("nan"))
    return gathered


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    longest = max(len(row) for row in rows)
    out = torch.full((len(rows), longest), value, dtype=torch.long)  # (batch, longest)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


class EncodedDataset(Dataset):
    """Texts (and pairs) tokenised once by a TextEncoder, for transformer models."""

    def __init__(
        self,
        encoder: TextEncoder,
        texts: Sequence[str],
        labels: Sequence[int] | None = None,
        pairs: Sequence[str | None] | None = None,
        words: Sequence[Sequence[str]] | None = None,
        every_piece: bool = False,
    ) -> None:
        """`words`: the texts' tokens, for token classification (then `labels` are tag-id lists);
        `every_piece`: each piece of a word is a target of the word's tag, not only its first."""
        self.pad_id = encoder.pad_id
        self.ids: list[list[int]] = []
        self.types: list[list[int]] | None = [] if encoder.token_types else None  # only for models that read them
        self.positions: list[list[int]] | None = None  # per row, the piece each target reads
        self.labels = list(labels) if labels is not None else [NO_LABEL] * len(texts)
        if words is not None:
            self._encode_words(encoder, words, every_piece)
            return
        has_pairs = pairs is not None and any(p is not None for p in pairs)
        for start in range(0, len(texts), ENCODE_CHUNK):
            chunk = list(texts[start : start + ENCODE_CHUNK])
            chunk_pairs = [p or "" for p in pairs[start : start + ENCODE_CHUNK]] if has_pairs else None
            encoded = encoder.encode(chunk, chunk_pairs)
            lengths = encoded["attention_mask"].sum(axis=1)
            for row, length in enumerate(lengths):
                self.ids.append(encoded["input_ids"][row, :length].tolist())
                if self.types is not None:
                    self.types.append(encoded["token_type_ids"][row, :length].tolist())

    def _encode_words(self, encoder: TextEncoder, words: Sequence[Sequence[str]], every_piece: bool) -> None:
        self.positions = []
        for row, (ids, types, pieces) in enumerate(encoder.word_pieces(words)):
            self.ids.append(ids)
            if self.types is not None:
                self.types.append(types)
            if every_piece:  # one target per piece, each with its word's tag
                owners = [word for word, positions in enumerate(pieces) for _ in positions]
                self.positions.append([position for positions in pieces for position in positions])
                self.labels[row] = _tags_of(self.labels[row], owners)
            else:
                self.positions.append([positions[0] if positions else -1 for positions in pieces])
        self.labels = word_targets(self.labels, self.positions)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[int, list[int], list[int] | None, object]:
        types = None if self.types is None else self.types[index]
        return index, self.ids[index], types, self.labels[index]

    def length(self, index: int) -> int:
        return len(self.ids[index])

    def collate(self, items: list[tuple[int, list[int], list[int] | None, int]]) -> dict:
        indices, ids, types, labels = zip(*items)
        inputs = {
            "input_ids": _pad(ids, self.pad_id),  # (batch, longest)
            "attention_mask": _pad([[1] * len(row) for row in ids], 0),
        }
        if self.types is not None:
            inputs["token_type_ids"] = _pad(types, 0)
        return {"inputs": inputs, "index": torch.tensor(indices, dtype=torch.long), **_targets(labels, indices, self.positions)}


class WordDataset(Dataset):
    """Texts split into words and looked up in a word vocabulary, for BOW/CNN/BiGRU students."""

    def __init__(
        self,
        tokenizer: WordTokenizer,
        vocab: WordVocab,
        texts: Sequence[str],
        labels: Sequence[int] | None = None,
        max_len: int = 128,
        words: Sequence[Sequence[str]] | None = None,
    ) -> None:
        """`words`: the texts' tokens, for token classification: one word per token, so a per-token
        student's output position i is token i (then `labels` are tag-id lists)."""
        tokens = [None] * len(texts) if words is None else words
        self.ids = [vocab.encode(tokenizer.row_words(text, row), max_len) or [UNK_ID] for text, row in zip(texts, tokens, strict=True)]
        self.labels = list(labels) if labels is not None else [NO_LABEL] * len(self.ids)
        self.positions: list[list[int]] | None = None
        if words is not None:
            self.positions = [token_positions(len(row), max_len) for row in words]
            self.labels = word_targets(self.labels, self.positions)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[int, list[int], object]:
        return index, self.ids[index], self.labels[index]

    def length(self, index: int) -> int:
        return len(self.ids[index])

    def collate(self, items: list[tuple[int, list[int], object]]) -> dict:
        indices, ids, labels = zip(*items)
        inputs = {"input_ids": _pad(ids, 0)}  # (batch, longest), pad id 0
        return {"inputs": inputs, "index": torch.tensor(indices, dtype=torch.long), **_targets(labels, indices, self.positions)}


def word_targets(labels: Sequence[object], positions: Sequence[Sequence[int]]) -> list[list[int]]:
    """Per sentence, each word's tag id, IGNORED for a word the model has no position for (no
    loss) and for every word of an unlabelled row or past the end of a shorter tag list (the
    teacher's decisions stop at its last word with logits)."""
    targets = []
    for tags, first in zip(labels, positions, strict=True):
        tags = [] if tags == NO_LABEL else list(tags)
        tags += [IGNORED] * (len(first) - len(tags))
        targets.append([tag if position >= 0 else IGNORED for tag, position in zip(tags, first, strict=True)])
    return targets


def _tags_of(tags: object, owners: Sequence[int]) -> object:
    """A sentence's tags read once per piece (`owners`: each piece's word); unlabelled stays unlabelled."""
    if tags == NO_LABEL:
        return NO_LABEL
    tags = list(tags)
    return [tags[word] if word < len(tags) else IGNORED for word in owners]


def _targets(labels: Sequence[object], indices: Sequence[int], positions: Sequence[Sequence[int]] | None) -> dict:
    """A batch's `labels`, and for per-word rows (`positions` given) their `words`, both (batch, words)."""
    if positions is None:
        return {"labels": targets_tensor(labels)}
    return {"labels": _pad(labels, IGNORED), "words": _pad([positions[i] for i in indices], -1)}


def length_sorted_batches(dataset: EncodedDataset | WordDataset, batch_size: int) -> Iterator[list[int]]:
    """Row indices grouped by similar length, so inference pads little."""
    order = sorted(range(len(dataset)), key=dataset.length)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
