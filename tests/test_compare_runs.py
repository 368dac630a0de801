"""tools/compare_runs.py: two runs of one split compared model by model, B minus A, paired."""

from __future__ import annotations

import json
import shutil

import pytest
import tomli_w
from conftest import load_tool, tiny_rows, write_rows
from tiny_models import tiny_teacher_dir

from distill.errors import UserError
from distill.pipeline import Run
from distill.recipe import load_recipe
from distill.report.stats import HIERARCHICAL_BOOTSTRAP, mcnemar_exact
from distill.stages.run_models import torch_predictions


def tiny_run(tmp_path, name: str, seed: int = 42, soft_weight: float = 1.0, student_seed: int | None = None) -> Run:
    """A tiny teacher and a one-layer TSD student (soft and hard labels, or gold only); `student_seed`
    gives the student other initial weights and order on the same split."""
    data = tmp_path / "data.csv"
    if not data.is_file():
        write_rows(data, tiny_rows())
    steps = {"max_steps": 6, "batch_size": 8, "lr": 1e-3}
    recipe = {
        "run": {"name": name, "out_dir": str(tmp_path / "runs"), "threads": 1, "seed": seed},
        "task": {"dataset": str(data), "max_length": 16},
        "teacher": {"model": str(tiny_teacher_dir(tmp_path / "teacher"))},
        "student": {"layers": 1, **({} if student_seed is None else {"seed": student_seed})},
        "stages": {"finetune": steps, "task_specific": {**steps, "soft_weight": soft_weight}},
        "export": {"enabled": False},
        "report": {"enabled": False},
    }
    path = tmp_path / f"{name}.toml"
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")
    run = Run(load_recipe(path))
    run.execute()
    return run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Run, Run, object]:
    tmp_path = tmp_path_factory.mktemp("compare")
    return tiny_run(tmp_path, "soft"), tiny_run(tmp_path, "gold", soft_weight=0.0), tmp_path


def test_every_shared_model_is_scored_in_both_runs_and_differenced_b_minus_a(two_runs):
    a, b, _ = two_runs
    result = load_tool("compare_runs").compare(a.dir, b.dir)
    rows = {row["model"]: row for row in result["models"]}
    assert list(rows) == ["teacher", "student"]
    for name, directory in (("student", "student"), ("teacher", "teacher")):
        stage_a = json.loads((a.dir / directory / "metrics.json").read_text(encoding="utf-8"))["test"]["accuracy"]
        stage_b = json.loads((b.dir / directory / "metrics.json").read_text(encoding="utf-8"))["test"]["accuracy"]
        assert rows[name]["a"]["accuracy"] == pytest.approx(stage_a, abs=1e-9)  # the stage's own figure
        assert rows[name]["b"]["accuracy"] == pytest.approx(stage_b, abs=1e-9)
        assert rows[name]["b_minus_a"]["diff"] == pytest.approx(stage_b - stage_a, abs=1e-9)
        assert rows[name]["b_minus_a"]["low"] <= rows[name]["b_minus_a"]["diff"] <= rows[name]["b_minus_a"]["high"]
    # the same teacher settings on the same split: the teachers agree, so the test finds nothing
    assert rows["teacher"]["b_minus_a"]["diff"] == 0 and rows["teacher"]["b_minus_a"]["p_value"] == 1.0
    assert result["runs"]["a"]["stages"]["task_specific"]["git_commit"] == result["runs"]["b"]["stages"]["task_specific"]["git_commit"]
    assert result["runs"]["b"]["recipe"]["stages"]["task_specific"]["soft_weight"] == 0.0


def test_the_mcnemar_p_is_that_of_the_two_students_decisions(two_runs):
    a, b, _ = two_runs
    tool = load_tool("compare_runs")
    test = a.data().test
    correct = []
    for run in (b, a):
        model = tool.compared_models(run)["student"]
        correct.append([label == example.label for label, example in zip(torch_predictions(run, model, test), test)])
    row = tool.compare(a.dir, b.dir, ["student"])["models"][0]
    assert row["b_minus_a"]["p_value"] == pytest.approx(mcnemar_exact(*correct))


def test_runs_of_other_splits_or_models_are_refused(two_runs):
    a, _, data_home = two_runs
    tool = load_tool("compare_runs")
    other = tiny_run(data_home, "other-split", seed=7)
    with pytest.raises(UserError, match="different test splits"):
        tool.compare(a.dir, other.dir)
    with pytest.raises(UserError, match="not trained in every compared run: bow"):
        tool.compare(a.dir, a.dir, ["bow"])


def test_further_pairs_are_compared_seed_by_seed_and_pooled(two_runs):
    a, b, data_home = two_runs
    tool = load_tool("compare_runs")
    a7, b7 = (tiny_run(data_home, f"{name}-7", soft_weight=weight, student_seed=7) for name, weight in (("soft", 1.0), ("gold", 0.0)))
    result = tool.compare(a.dir, b.dir, ["student"], [(a7.dir, b7.dir)])
    row = result["models"][0]
    accuracy = {run.dir.name: json.loads((run.dir / "student" / "metrics.json").read_text())["test_accuracy"] for run in (a, b, a7, b7)}
    assert row["a_over_seeds"]["seeds"] == [42, 7] and row["b_over_seeds"]["seeds"] == [42, 7]
    assert row["a_over_seeds"]["accuracy_mean"] == pytest.approx((accuracy["soft"] + accuracy["soft-7"]) / 2, abs=1e-9)
    per_seed = [test["diff"] for test in row["b_minus_a_over_seeds"]["per_seed"]]
    assert per_seed == pytest.approx([accuracy["gold"] - accuracy["soft"], accuracy["gold-7"] - accuracy["soft-7"]], abs=1e-9)
    pooled = row["b_minus_a_over_seeds"]["pooled"]
    assert pooled["diff"] == pytest.approx(sum(per_seed) / 2, abs=1e-9) and pooled["interval"] == HIERARCHICAL_BOOTSTRAP
    assert row["b_minus_a"]["diff"] == pytest.approx(per_seed[0], abs=1e-9)  # the first pair alone, as without pairs
    assert [pair["b"]["run_dir"] for pair in result["pairs"]] == [str(b7.dir)]
    table = tool.markdown(result, "soft", "gold")
    assert "Over 2 pairs of runs (student seeds 42, 7)" in table
    assert f"{100 * per_seed[0]:+.2f}, {100 * per_seed[1]:+.2f}" in table
    other = tiny_run(data_home, "other-split", seed=7)
    with pytest.raises(UserError, match="different test splits"):
        tool.compare(a.dir, b.dir, ["student"], [(a7.dir, other.dir)])


def test_the_table_names_both_runs_and_every_model(two_runs):
    a, b, _ = two_runs
    tool = load_tool("compare_runs")
    table = tool.markdown(tool.compare(a.dir, b.dir), "soft labels", "gold only")
    assert table.startswith("A = soft labels, B = gold only")
    assert "| teacher |" in table and "| student |" in table and "not significant" in table


def test_each_training_stage_cost_is_read_from_its_metrics_and_compared_a_over_b(two_runs):
    a, b, _ = two_runs
    tool = load_tool("compare_runs")
    result = tool.compare(a.dir, b.dir)
    stages = {row["stage"]: row for row in result["stages"]}
    assert list(stages) == ["finetune", "task_specific"]  # the only training stages both runs ran
    for name, directory in (("finetune", "teacher"), ("task_specific", "student")):
        loops = []
        for run, side in ((a, "a"), (b, "b")):
            metrics = json.loads((run.dir / directory / "metrics.json").read_text(encoding="utf-8"))
            cost = stages[name][side]
            assert cost["seconds"] == metrics["seconds"] and cost["steps"] == metrics["steps"] == 6
            assert cost["steps_per_second"] == pytest.approx(6 / metrics["seconds"])
            assert cost["epochs"] is None and cost["seconds_per_epoch"] is None  # max_steps set the length
            assert cost["stage_seconds"] == json.loads((run.dir / "done" / f"{name}.json").read_text(encoding="utf-8"))["seconds"]
            loops.append(metrics["seconds"])
        assert stages[name]["speedup_per_step"] == pytest.approx(loops[0] / loops[1])
        assert stages[name]["speedup_per_epoch"] is None
    teacher = json.loads((a.dir / "teacher" / "metrics.json").read_text(encoding="utf-8"))
    assert stages["finetune"]["a"]["dev"] == {"name": "dev accuracy", "value": teacher["dev"]["accuracy"]}
    student = json.loads((b.dir / "student" / "metrics.json").read_text(encoding="utf-8"))
    assert stages["task_specific"]["b"]["dev"]["value"] == student["dev_accuracy"]
    assert "twin" not in stages["task_specific"]["a"]  # no gold-only twin asked for: none to time


def test_seconds_per_epoch_divide_the_loop_by_the_recipes_epochs(tmp_path):
    tool = load_tool("compare_runs")
    cost = tool._loop_cost({"seconds": 120.0, "steps": 60, "seconds_by_phase": {"step": 100.0}}, 2.0)
    assert cost["seconds_per_epoch"] == 60.0 and cost["steps_per_second"] == 0.5
    assert cost["seconds_by_phase"] == {"step": 100.0}


def test_the_cost_table_gives_each_stage_and_the_twin_is_timed_beside_its_student(two_runs):
    a, _, data_home = two_runs
    tool = load_tool("compare_runs")
    recipe = load_recipe(a.dir / "recipe.toml")
    twin = recipe.model_dump(mode="json", exclude_none=True)
    twin["run"].update(name="twin", out_dir=str(data_home / "runs"))
    twin["stages"]["task_specific"]["baseline_twin"] = True
    path = data_home / "twin.toml"
    path.write_text(tomli_w.dumps(twin), encoding="utf-8")
    run = Run(load_recipe(path))
    run.execute()
    result = tool.compare(a.dir, run.dir)
    tsd = {row["stage"]: row for row in result["stages"]}["task_specific"]
    assert tsd["b"]["twin"]["steps"] == 6 and "twin" not in tsd["a"]
    table = tool.markdown(result, "A", "B")
    assert "| finetune | — / — |" in table and "| task_specific | — / — |" in table


def test_word_level_students_of_a_data_distillation_not_yet_run_are_not_compared(two_runs):
    a, _, _ = two_runs
    tool = load_tool("compare_runs")
    pending = Run(load_recipe(a.dir / "recipe.toml", ['stages.data_distill.students=["bow"]']), a.dir.parent)
    assert pending.recipe.stage_enabled("data_distill") and not (a.dir / "shallow").exists()
    assert list(tool.compared_models(pending)) == ["teacher", "student"]


def test_an_ensembles_fine_tuning_has_no_one_loop_to_cost(two_runs, tmp_path):
    a, _, _ = two_runs
    tool = load_tool("compare_runs")
    copy = tmp_path / "runs" / "ensemble"
    shutil.copytree(a.dir, copy)
    (copy / "teacher" / "metrics.json").write_text(json.dumps({"dev": {"accuracy": 0.5}, "members": []}), encoding="utf-8")
    costs = tool.stage_costs(Run.from_dir(copy), "accuracy")
    assert "finetune" not in costs and "task_specific" in costs


def test_a_run_whose_stages_come_from_different_code_is_marked(two_runs, tmp_path):
    a, b, _ = two_runs
    tool = load_tool("compare_runs")
    copy = tmp_path / "soft"
    shutil.copytree(a.dir, copy)
    markers = sorted((copy / "done").glob("*.json"))

    def made_by(code_tree: str, commit: str, stages: list) -> None:
        for path in stages:
            record = json.loads(path.read_text(encoding="utf-8"))
            record["provenance"].update(code_tree=code_tree, git_commit=commit, git_dirty=False)
            path.write_text(json.dumps(record), encoding="utf-8")

    made_by("t" * 40, "c" * 40, markers)
    assert "mixed_code" not in tool._run_record(Run.from_dir(copy))
    made_by("u" * 40, "d" * 40, [copy / "done" / "finetune.json"])
    record = tool._run_record(Run.from_dir(copy))
    assert record["mixed_code"] == {path.stem: "c" * 40 for path in markers} | {"finetune": "d" * 40}
    result = tool.compare(a.dir, b.dir)
    assert "MIXED CODE" not in tool.markdown(result, "A", "B")
    result["runs"]["a"] = record
    assert "**⚠ MIXED CODE**: " in tool.markdown(result, "A", "B") and "finetune dddddddddddd" in tool.markdown(result, "A", "B")
