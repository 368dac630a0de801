"""Length-grouped batching: every row once per epoch, batches of similar lengths, exact resume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from distill.errors import UserError
from distill.recipe import parse_recipe
from distill.stages.common import train_config
from distill.train import batching
from distill.train.batching import LengthGroupedSampler, grouped_order, padded_tokens
from distill.train.checkpoint import checkpoint_path
from distill.train.loop import TrainConfig
from test_loop import RESUME_CONFIG, Interrupted, assert_same_parameters, run_with_projection, token_data


def test_one_window_sorts_the_rows_into_batches_of_neighbouring_lengths():
    lengths = [5, 1, 4, 2, 3, 6]
    batches = grouped_order(lengths, global_batch=2, seed=0, epoch=0)  # 6 rows fit in one window
    assert sorted(tuple(lengths[i] for i in batch) for batch in batches) == [(2, 1), (4, 3), (6, 5)]
    # by hand: each batch pads its shorter row by one token
    assert padded_tokens(lengths, batches) == (21, 3)


def test_padded_tokens_by_hand():
    lengths = [3, 7, 2, 2]
    assert padded_tokens(lengths, [[0, 1], [2, 3]]) == (14, 4)  # 3 -> 7 pads 4, 2 and 2 pad none
    assert padded_tokens(lengths, [[0, 2], [1, 3]]) == (14, 6)  # 2 -> 3 pads 1, 2 -> 7 pads 5


def test_every_row_once_per_epoch_and_the_order_is_a_function_of_seed_and_epoch():
    lengths = [1 + (7 * i) % 13 for i in range(1037)]
    orders = {}
    for seed, epoch in [(1, 0), (1, 1), (2, 0)]:
        batches = grouped_order(lengths, 32, seed, epoch)
        rows = [i for batch in batches for i in batch]
        assert sorted(rows) == list(range(len(lengths)))
        assert [len(batch) for batch in batches[:-1]] == [32] * (len(lengths) // 32)  # one short batch, last
        assert batches == grouped_order(lengths, 32, seed, epoch)
        orders[seed, epoch] = rows
    assert orders[1, 0] != orders[1, 1] and orders[1, 0] != orders[2, 0]


def test_grouping_pads_far_less_than_random_batches_and_windows_keep_the_mix(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    lengths = (torch.randint(4, 60, (4000,), generator=generator)).tolist()
    order = torch.randperm(len(lengths), generator=generator).tolist()
    random_batches = [order[i : i + 32] for i in range(0, len(order), 32)]
    grouped = grouped_order(lengths, 32, seed=0, epoch=0)
    assert padded_tokens(lengths, grouped)[1] < padded_tokens(lengths, random_batches)[1] / 10
    # grouping happens only inside a window: a window of one batch pads exactly as the epoch's
    # shuffled order cut into plain batches does
    monkeypatch.setattr(batching, "GROUP_WINDOW_BATCHES", 1)
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    plain = [shuffled[i : i + 32] for i in range(0, len(shuffled), 32)]
    assert padded_tokens(lengths, grouped_order(lengths, 32, 0, 0)) == padded_tokens(lengths, plain)


@pytest.mark.parametrize("rows, world", [(100, 2), (101, 3), (7, 4)])
def test_processes_share_each_global_batch_and_together_see_every_row(rows, world):
    lengths = [1 + (5 * i) % 11 for i in range(rows)]
    global_batch = 4 * world
    samplers = [LengthGroupedSampler(lengths, global_batch, world, rank, seed=3) for rank in range(world)]
    for sampler in samplers:
        sampler.set_epoch(2)
    shares = [list(sampler) for sampler in samplers]
    assert all(len(share) == len(samplers[0]) == -(-rows // world) for share in shares)
    seen = Counter(i for share in shares for i in share)
    assert set(seen) == set(range(rows))
    assert sum(seen.values()) - rows == len(samplers[0]) * world - rows  # repeats only to fill the last shares
    # step k of every process comes from the same global batch: neighbouring lengths
    expected = grouped_order([lengths[i % rows] for i in range(len(samplers[0]) * world)], global_batch, 3, 2)
    start = 0
    for batch in expected:
        share = len(batch) // world
        for rank in range(world):
            assert shares[rank][start : start + share] == [i % rows for i in batch[rank * share : (rank + 1) * share]]
        start += share


def test_the_loader_cutting_the_sampler_s_rows_gets_the_grouped_batches_back():
    lengths = [1 + (7 * i) % 13 for i in range(1037)]
    sampler = LengthGroupedSampler(lengths, 32, seed=5)
    sampler.set_epoch(1)
    rows = list(sampler)
    assert [rows[i : i + 32] for i in range(0, len(rows), 32)] == grouped_order(lengths, 32, 5, 1)


class SizedRows(list):
    """token_data rows that report lengths, as EncodedDataset and WordDataset do."""

    def length(self, index: int) -> int:
        return 1 + (3 * index) % 7


def test_grouped_training_resumes_mid_epoch_exactly(tmp_path: Path, monkeypatch) -> None:
    import test_loop

    monkeypatch.setattr(test_loop, "token_data", lambda: SizedRows(token_data()))
    cfg = TrainConfig(**RESUME_CONFIG, checkpoint_every=2, group_by_length=True)
    reference, reference_projection, reference_result = run_with_projection(tmp_path / "ref", cfg)
    with pytest.raises(Interrupted):
        run_with_projection(tmp_path / "run", cfg, crash_at_call=22)
    saved = torch.load(checkpoint_path(tmp_path / "run") / "state.pt", weights_only=True)
    assert (saved["progress"]["global_step"], saved["progress"]["batches_done"]) == (4, 2)
    model, projection, result = run_with_projection(tmp_path / "run", cfg)
    assert result.global_steps == reference_result.global_steps == 9
    assert_same_parameters(model, reference)
    assert_same_parameters(projection, reference_projection)
    # the grouped order is really used: random batches train other parameters
    shuffled, _, _ = run_with_projection(tmp_path / "random", TrainConfig(**RESUME_CONFIG, checkpoint_every=2))
    assert any(not torch.allclose(a, b) for a, b in zip(model.parameters(), shuffled.parameters()))


def test_data_without_lengths_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="group_by_length needs data that knows its rows' lengths"):
        run_with_projection(tmp_path / "run", TrainConfig(**RESUME_CONFIG, group_by_length=True))


def test_recipe_key_reaches_the_stages_and_pretraining_refuses_it():
    recipe = parse_recipe({"stages": {"finetune": {}, "task_specific": {"group_by_length": True}}}, "test")
    assert recipe.stages.task_specific.group_by_length and not recipe.stages.finetune.group_by_length
    assert "group_by_length" not in recipe.model_dump()["stages"]["finetune"]  # default: dumps as before
    assert train_config(recipe.stages.task_specific, 1).group_by_length
    with pytest.raises(UserError, match="group_by_length is for the other stages"):
        parse_recipe({"stages": {"pretrain": {"group_by_length": True}}}, "test")
