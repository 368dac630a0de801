"""R-Drop: the loss of two dropout passes by hand, the doubled batch, and the recipe switch."""

from __future__ import annotations

import json
import math

import pytest
import tomli_w
import torch
from conftest import tiny_rows, write_rows
from tiny_models import tiny_teacher_dir

from distill.errors import UserError
from distill.pipeline import Run
from distill.recipe import Recipe, load_recipe, parse_recipe
from distill.tasks import family
from distill.train.rdrop import doubled, rdrop_loss
from distill.validate import check_recipe


def test_rdrop_loss_is_the_mean_task_loss_plus_alpha_times_the_symmetric_kl():
    first = torch.tensor([[1.0, 0.0]])
    second = torch.tensor([[0.0, 0.0]])
    labels = torch.tensor([0])
    classification = family("classification")
    loss, divergence = rdrop_loss(classification, first, second, lambda z: torch.nn.functional.cross_entropy(z, labels), 0.5)
    p = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]  # softmax(first) = (0.7311, 0.2689)
    q = [0.5, 0.5]
    kl_pq = sum(a * math.log(a / b) for a, b in zip(p, q))
    kl_qp = sum(b * math.log(b / a) for a, b in zip(p, q))
    ce = 0.5 * (-math.log(p[0]) - math.log(q[0]))
    assert divergence.item() == pytest.approx(0.5 * (kl_pq + kl_qp), rel=1e-5)
    assert loss.item() == pytest.approx(ce + 0.5 * 0.5 * (kl_pq + kl_qp), rel=1e-5)


def test_rdrop_on_scores_adds_their_mean_squared_difference():
    first, second = torch.tensor([[0.2], [0.9]]), torch.tensor([[0.6], [0.9]])
    loss, divergence = rdrop_loss(family("regression"), first, second, lambda z: torch.zeros(()), 1.0)
    assert divergence.item() == pytest.approx(((0.2 - 0.6) ** 2 + 0.0) / 2)  # 0.08 both ways
    assert loss.item() == pytest.approx(0.08)


def test_gradients_flow_through_both_passes():
    first = torch.tensor([[2.0, -1.0]], requires_grad=True)
    second = torch.tensor([[0.0, 0.5]], requires_grad=True)
    loss, _ = rdrop_loss(family("classification"), first, second, lambda z: z.sum() * 0, 1.0)
    loss.backward()
    assert first.grad.abs().sum() > 0 and second.grad.abs().sum() > 0


def test_a_doubled_batch_stacks_every_tensor_and_keeps_the_rest():
    batch = {"inputs": {"input_ids": torch.tensor([[1, 2], [3, 4]])}, "labels": torch.tensor([0, 1]), "name": "x"}
    twice = doubled(batch)
    assert twice["inputs"]["input_ids"].tolist() == [[1, 2], [3, 4], [1, 2], [3, 4]]
    assert twice["labels"].tolist() == [0, 1, 0, 1] and twice["name"] == "x"


def test_rdrop_and_mixup_refuse_each_other():
    with pytest.raises(UserError, match="rdrop_alpha and mixup_alpha"):
        parse_recipe({"stages": {"finetune": {"rdrop_alpha": 1.0, "mixup_alpha": 0.4}}})


def rdrop_recipe(tmp_path, **task_specific: object) -> Recipe:
    """A tiny run with dropout whose teacher (and, given settings, student) trains with R-Drop."""
    steps = {"max_steps": 4, "batch_size": 8, "lr": 1e-3}
    recipe = {
        "run": {"name": "rdrop", "out_dir": str(tmp_path / "runs"), "threads": 1},
        "task": {"dataset": str(write_rows(tmp_path / "data.csv", tiny_rows())), "max_length": 16},
        "teacher": {"model": str(tiny_teacher_dir(tmp_path / "teacher")), "dropout": 0.3},
        "student": {"layers": 1},
        "stages": {"finetune": {**steps, "rdrop_alpha": 1.0}, **({"task_specific": {**steps, **task_specific}} if task_specific else {})},
        "export": {"enabled": False},
        "report": {"enabled": False},
    }
    path = tmp_path / "rdrop.toml"
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")
    return load_recipe(path)


def logged_divergences(run: Run) -> dict[str, list[float]]:
    records = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    found: dict[str, list[float]] = {}
    for record in records:
        if "rdrop_divergence" in record:
            found.setdefault(record["stage"], []).append(record["rdrop_divergence"])
    return found


def test_a_teacher_fine_tuned_with_rdrop_logs_a_positive_divergence(tmp_path):
    run = Run(rdrop_recipe(tmp_path))
    run.execute()
    divergences = logged_divergences(run)["finetune"]
    assert divergences and all(value > 0 for value in divergences)  # two dropout masks, two outputs


def test_a_student_distilled_with_rdrop_and_its_twin_log_a_positive_divergence(tmp_path):
    run = Run(rdrop_recipe(tmp_path, rdrop_alpha=1.0, baseline_twin=True))
    run.execute()
    divergences = logged_divergences(run)
    for stage in ("task_specific", "task_specific twin"):  # the student's steps, and its gold-only twin's
        assert divergences[stage] and all(value > 0 for value in divergences[stage])
    assert (run.dir / "student" / "twin" / "metrics.json").is_file()


def test_student_rdrop_is_refused_beside_a_relation_loss(tmp_path):
    with pytest.raises(UserError, match="R-Drop reads each batch twice") as info:
        check_recipe(rdrop_recipe(tmp_path, rdrop_alpha=1.0, relation_weight=1.0))
    assert info.value.where == "[stages.task_specific] rdrop_alpha"
