"""tools/textbrewer_tsd.py: distill's side of the TextBrewer comparison (the baseline is not installed here)."""

from __future__ import annotations

import pytest
import tomli_w
import torch
from conftest import load_tool, tiny_rows, write_rows
from tiny_models import tiny_teacher_dir

from distill.pipeline import Run
from distill.recipe import load_recipe
from distill.stages.common import task_dataset
from distill.stages.distillation import fine_tuned_teacher, teacher_and_student


@pytest.fixture(scope="module")
def tad_run(tmp_path_factory) -> Run:
    """A tiny teacher and a one-layer student after TAD, with a pruned vocabulary and TSD settings
    that the comparison must switch off."""
    tmp_path = tmp_path_factory.mktemp("textbrewer")
    data = write_rows(tmp_path / "data.csv", tiny_rows())
    steps = {"max_steps": 4, "batch_size": 8, "lr": 1e-3}
    recipe = {
        "run": {"name": "tiny", "out_dir": str(tmp_path / "runs"), "threads": 1},
        "task": {"dataset": str(data), "max_length": 16},
        "teacher": {"model": str(tiny_teacher_dir(tmp_path / "teacher"))},
        "student": {"layers": 1, "prune_vocab": True},
        "stages": {
            "finetune": steps,
            "task_adaptive": steps,
            "task_specific": {**steps, "early_stop_patience": 1, "baseline_twin": True, "adversarial": "fgm", "ema": 0.99},
        },
        "export": {"enabled": False},
        "report": {"enabled": False},
    }
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")
    run = Run(load_recipe(path))
    run.execute(only=["prepare", "finetune", "task_adaptive"])
    return run


def test_the_equal_work_recipe_trains_whole_epochs_with_soft_and_gold_labels_only(tad_run):
    tool = load_tool("textbrewer_tsd")
    section = tool.equal_work_recipe(tad_run.recipe, 2).stages.task_specific
    assert section.epochs == 2 and section.max_steps is None and section.early_stop_patience is None
    assert not section.baseline_twin and section.adversarial == "none" and section.ema is None
    assert section.precision == "fp32" and not section.group_by_length and section.relation_weight == 0.0
    assert (section.lr, section.batch_size, section.temperature) == (1e-3, 8, tad_run.recipe.stages.task_specific.temperature)


def test_distills_arm_runs_the_stage_in_a_scratch_run_and_leaves_the_run_untouched(tad_run):
    tool = load_tool("textbrewer_tsd")
    before = sorted(path.name for path in tad_run.dir.iterdir())
    figures = tool.distill_arm(tad_run, tool.equal_work_recipe(tad_run.recipe, 2))
    assert sorted(path.name for path in tad_run.dir.iterdir()) == before  # no student, no TSD marker here
    assert not any(path.name.startswith(".textbrewer-tsd.") for path in tad_run.dir.parent.iterdir())
    rows = len(tad_run.data().train)
    assert figures["steps"] == 2 * -(-rows // 8)  # two whole epochs of batches of 8
    assert figures["seconds"] == pytest.approx(figures["loop_seconds"] + figures["teacher_logits_seconds"])
    assert figures["stage_seconds"] >= figures["loop_seconds"] and 0.0 <= figures["dev"] <= 1.0


def test_the_student_reads_teacher_ids_as_the_stage_feeds_it(tad_run, tmp_path):
    tool = load_tool("textbrewer_tsd")
    data = tad_run.data()
    tad_run.current_stage = "task_specific"
    teacher, teacher_dir = fine_tuned_teacher(tad_run, data.labels)
    pair = teacher_and_student(tad_run, tmp_path, teacher, teacher_dir, data)
    tad_run.current_stage = None
    assert pair.token_map is not None  # the student's vocabulary was pruned: its ids differ
    train_set = task_dataset(pair.teacher_encoder, data.train, data)
    batch = tool.flat_batch(train_set.collate([train_set[index] for index in range(4)]))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    pair.student.eval()
    wrapped = tool.StudentOnTeacherIds(pair)(**batch)
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    direct = pair.student(**pair.student_inputs(inputs))
    assert torch.equal(wrapped.logits, direct.logits)
    expected = torch.nn.functional.cross_entropy(direct.logits, batch["labels"])
    assert wrapped.loss.item() == pytest.approx(expected.item(), rel=1e-6)  # TextBrewer's hard-label term


def test_the_fast_arm_changes_only_precision_and_batching_and_is_shared_out_by_hand(tad_run, monkeypatch):
    tool = load_tool("textbrewer_tsd")
    equal = tool.equal_work_recipe(tad_run.recipe, 2)
    fast = tool.fast_recipe(equal)
    changed = {key for key, value in fast.stages.task_specific.model_dump().items() if value != getattr(equal.stages.task_specific, key)}
    assert changed == {"precision", "group_by_length"}
    assert (fast.stages.task_specific.precision, fast.stages.task_specific.group_by_length) == ("bf16", True)

    def fake_distill(run, recipe):
        seconds = 40.0 if recipe.stages.task_specific.precision == "bf16" else 80.0
        return {"seconds": seconds, "stage_seconds": seconds + 5.0}

    monkeypatch.setattr(tool, "distill_arm", fake_distill)
    monkeypatch.setattr(tool, "textbrewer_arm", lambda run, recipe, caching: {"seconds": 90.0 if caching else 100.0})
    result = tool.compare(tad_run, equal, repeats=1, fast=True)
    assert list(result["repeats"]) == ["distill", tool.FAST_ARM, "textbrewer live", "textbrewer cached"]
    assert result["distill_share_of"] == {"textbrewer live": 0.8, "textbrewer cached": pytest.approx(80 / 90)}
    assert result["fast_share_of"] == {"textbrewer live": 0.4, "textbrewer cached": pytest.approx(40 / 90)}
    assert result["fast_stage_share_of"]["textbrewer live"] == pytest.approx(0.45)
    assert result["fast_precision"] in ("bf16", "fp32 (no bf16 on this CPU)")
    assert "fast_share_of" not in tool.compare(tad_run, equal, repeats=1)
