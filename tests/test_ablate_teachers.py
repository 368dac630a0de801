"""tools/ablate.py's teacher variants: teachers fine-tuned again on the base run's split at teacher
seeds, paired against the plain teacher, and the plain teachers' ensemble against its best member."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from conftest import load_tool, write_rows
from tiny_models import tiny_teacher_dir

from distill.models.teacher import load_classifier
from distill.pipeline import Run
from distill.recipe import load_recipe
from distill.stages.common import model_logits

def sentiment_rows(count: int = 160) -> list[dict[str, str]]:
    """Texts of the tiny teacher's words whose label follows their adjective, a tenth flipped: learnable, not trivially."""
    rng = random.Random(0)
    rows = []
    for index in range(count):
        positive = rng.random() < 0.5
        adjective = rng.choice(["good", "great", "fine"] if positive else ["bad", "awful", "poor"])
        words = [rng.choice(["the", "a"]), rng.choice(["film", "book", "plot"]), "was", rng.choice(["very", "not", "ok"]), adjective]
        label = "pos" if positive != (rng.random() < 0.1) else "neg"
        rows.append({"text": " ".join(words) + f" {index}", "label": label})
    return rows


@pytest.fixture(scope="module")
def teacher_ablation(tmp_path_factory) -> tuple[Run, Path, dict]:
    tmp_path = tmp_path_factory.mktemp("teachers")
    recipe = {
        "run": {"name": "t", "out_dir": str(tmp_path / "runs"), "threads": 1, "seed": 7},
        "task": {"dataset": str(write_rows(tmp_path / "data.csv", sentiment_rows())), "max_length": 16},
        "teacher": {"model": str(tiny_teacher_dir(tmp_path / "teacher", dropout=0.1))},
        "stages": {"finetune": {"max_steps": 150, "lr": 3e-3, "batch_size": 8, "warmup_ratio": 0.0, "swa_every": 2}},
        "export": {"enabled": False},
        "report": {"enabled": False},
    }
    path = tmp_path / "t.toml"
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")
    base = Run(load_recipe(path))
    base.execute()
    variants = ["teacher_plain", "teacher_swa", "teacher_ensemble"]
    folder = load_tool("ablate").ablate(path, [7, 8], variants)
    return base, folder, json.loads((folder / "ablation.json").read_text(encoding="utf-8"))


def test_teacher_variants_run_at_teacher_seeds_on_the_base_split(teacher_ablation):
    base, folder, summary = teacher_ablation
    rows = {row["name"]: row for row in summary["variants"]}
    assert list(rows) == ["teacher_plain", "teacher_swa", "teacher_ensemble", "teacher_best_member"]
    assert summary["seeds"] == [7, 8]
    for seed in (7, 8):
        assert (folder / f"teacher_plain-seed{seed}" / "data").resolve() == (base.dir / "data").resolve()
    # seed 7 is the base run's own teacher seed with its own settings: its teacher is reused, not trained again
    assert (folder / "teacher_plain-seed7" / "teacher").resolve() == (base.dir / "teacher").resolve()
    assert not (folder / "teacher_plain-seed8" / "teacher").is_symlink()
    weights = [load_classifier(folder / f"teacher_plain-seed{seed}" / "teacher").state_dict() for seed in (7, 8)]
    name = "classifier.weight"
    assert not torch.equal(weights[0][name], weights[1][name])  # [teacher] seed gave another fine-tuning
    swa = load_recipe(folder / "teacher_swa-seed8" / "recipe.toml")
    assert swa.stages.finetune.swa_start == 0.75 and swa.stages.finetune.ema is None and swa.teacher.seed == 8


def test_each_teacher_variant_is_paired_with_the_plain_teacher_at_its_seed(teacher_ablation):
    _, _, summary = teacher_ablation
    rows = {row["name"]: row for row in summary["variants"]}
    versus = rows["teacher_swa"]["vs_reference"]
    assert versus["reference"] == "teacher_plain" and [test["seed"] for test in versus["per_seed"]] == [7, 8]
    diffs = [swa["accuracy"] - plain["accuracy"] for swa, plain in zip(rows["teacher_swa"]["runs"], rows["teacher_plain"]["runs"])]
    assert [test["diff"] for test in versus["per_seed"]] == pytest.approx(diffs, abs=1e-9)


def test_the_ensemble_is_the_mean_of_the_plain_teachers_probabilities_against_its_best_member(teacher_ablation):
    base, folder, summary = teacher_ablation
    rows = {row["name"]: row for row in summary["variants"]}
    data = base.data()
    logits = [model_logits(base.recipe, folder / f"teacher_plain-seed{seed}" / "teacher", data.test, data, base.device) for seed in (7, 8)]
    probabilities = [np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True) for z in logits]
    decided = [data.labels[i] for i in (0.5 * probabilities[0] + 0.5 * probabilities[1]).argmax(1)]
    accuracy = float(np.mean([d == e.label for d, e in zip(decided, data.test)]))
    assert rows["teacher_ensemble"]["accuracy_mean"] == pytest.approx(accuracy)
    dev = {seed: json.loads((folder / f"teacher_plain-seed{seed}" / "teacher" / "metrics.json").read_text())["dev"]["accuracy"] for seed in (7, 8)}
    best = max((7, 8), key=lambda seed: dev[seed])  # the first of equals, as max keeps it
    assert rows["teacher_best_member"]["runs"][0]["seed"] == best
    versus = rows["teacher_ensemble"]["vs_reference"]
    assert versus["reference"] == "teacher_best_member"
    assert versus["per_seed"][0]["diff"] == pytest.approx(accuracy - rows["teacher_best_member"]["accuracy_mean"], abs=1e-9)
    table = (folder / "ablation.md").read_text(encoding="utf-8")
    assert table.startswith("Teacher ablation of `t.toml`") and "teacher seeds 7, 8" in table


def test_teacher_and_student_variants_are_refused_together(teacher_ablation):
    from distill.errors import UserError

    base, _, _ = teacher_ablation
    with pytest.raises(UserError, match="different seeds"):
        load_tool("ablate").ablate(Path(base.recipe.source), [7], ["teacher_swa", "tsd"])
