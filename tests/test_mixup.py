"""Embedding mixup: the drawn weight mixes embeddings and targets, evaluation reads plain texts,
and the fine-tuning and task-specific stages train with it."""

from __future__ import annotations

import json
import math

import pytest
import tomli_w
import torch
from tiny_models import tiny_eager_bert, tiny_teacher_dir

from conftest import tiny_rows, write_rows
from distill.errors import UserError
from distill.pipeline import Run
from distill.recipe import load_recipe
from distill.tasks import family
from distill.train.mixup import MixedBatch, draw_weight, mix_inputs
from distill.validate import check_recipe


def test_the_weight_is_a_beta_draw_from_the_global_generator():
    torch.manual_seed(3)
    drawn = [draw_weight(0.4) for _ in range(2000)]
    torch.manual_seed(3)
    assert draw_weight(0.4) == drawn[0]  # reproducible, so a resumed run draws the same
    mean = sum(drawn) / len(drawn)
    variance = sum((w - mean) ** 2 for w in drawn) / len(drawn)
    # Beta(α, α): mean 1/2, variance 1 / (4 (2α + 1)) = 0.1389 at α = 0.4
    assert mean == pytest.approx(0.5, abs=0.02) and variance == pytest.approx(1 / (4 * 1.8), abs=0.01)
    with pytest.raises(ValueError, match="alpha"):
        draw_weight(0.0)


def test_embeddings_and_masks_are_mixed_with_the_drawn_weight():
    model = tiny_eager_bert(seed=0, width=32)
    inputs = {
        "input_ids": torch.tensor([[2, 7, 8, 3, 0], [2, 9, 3, 0, 0], [2, 10, 11, 12, 3]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
    }
    torch.manual_seed(5)
    mixed = mix_inputs(model, inputs, alpha=0.4)
    torch.manual_seed(5)
    weight = draw_weight(0.4)
    partner = torch.randperm(3)
    assert mixed.weight == weight and torch.equal(mixed.partner, partner)
    embeddings = model.get_input_embeddings()(inputs["input_ids"])
    assert torch.allclose(mixed.inputs["inputs_embeds"], weight * embeddings + (1 - weight) * embeddings[partner])
    assert torch.equal(mixed.inputs["attention_mask"], torch.maximum(inputs["attention_mask"], inputs["attention_mask"][partner]))
    assert "input_ids" not in mixed.inputs


def test_mixed_cross_entropy_is_the_loss_against_the_mixed_target():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    labels = torch.tensor([0, 1])
    batch = MixedBatch({}, partner=torch.tensor([1, 0]), weight=0.7)
    loss = batch.loss(lambda rows: family("classification").hard_loss(logits, labels[rows]))
    targets = [[0.7, 0.3, 0.0], [0.3, 0.7, 0.0]]  # row 0 mixes with row 1 and the reverse
    expected = 0.0
    for row, target in zip(logits.tolist(), targets):
        log_z = math.log(sum(math.exp(v) for v in row))
        expected -= sum(t * (v - log_z) for t, v in zip(target, row))
    assert loss.item() == pytest.approx(expected / 2, rel=1e-6)


def mixup_recipe(tmp_path, **task_specific: object):
    data = write_rows(tmp_path / "data.csv", tiny_rows())
    teacher = tiny_teacher_dir(tmp_path / "teacher")
    steps = {"max_steps": 8, "lr": 1e-3, "batch_size": 8, "warmup_ratio": 0.0, "mixup_alpha": 0.4}
    recipe = {
        "run": {"name": "mixup", "out_dir": str(tmp_path / "runs"), "threads": 1},
        "task": {"dataset": str(data), "max_length": 16},
        "teacher": {"model": str(teacher)},
        "student": {"layers": 1},
        "stages": {"finetune": steps, "task_specific": {**steps, "baseline_twin": True, **task_specific}},
        "export": {"enabled": False},
        "report": {"enabled": False},
    }
    path = tmp_path / "mixup.toml"
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")
    return load_recipe(path)


def test_teacher_and_student_train_with_mixup_and_log_the_weight(tmp_path):
    run = Run(mixup_recipe(tmp_path))
    run.execute()
    logged = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    weights = [record["mixup_weight"] for record in logged if "mixup_weight" in record]
    assert weights and all(0.0 <= w <= 1.0 for w in weights)
    for directory in ("teacher", "student", "student/twin"):
        assert json.loads((run.dir / directory / "metrics.json").read_text(encoding="utf-8"))["test"]["accuracy"] >= 0.0


@pytest.mark.parametrize("live", ["relation_weight", "hidden_weight"])
def test_mixup_with_a_live_teacher_is_refused(tmp_path, live):
    with pytest.raises(UserError, match="relation and hidden losses need the teacher"):
        check_recipe(mixup_recipe(tmp_path, **{live: 1.0}))
