"""Teacher ensembles: how members' outputs combine (by hand on small arrays), the recipe table,
and a tiny run whose finetune stage makes two members that task-specific distillation learns from."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from conftest import tiny_rows, write_rows
from tiny_models import tiny_teacher_dir

from distill.errors import UserError
from distill.models.ensemble import combine_logits, planned_members, read_ensemble
from distill.models.teacher import load_classifier
from distill.pipeline import Run
from distill.recipe import load_recipe
from distill.stages import finetune
from distill.stages.augmentation import teacher_logits
from distill.stages.common import model_logits
from distill.stages.task import cache_teacher_logits
from distill.tasks import family as family_of


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_mean_of_probabilities_is_what_the_combined_logits_give_back():
    a = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    b = np.array([[0.0, 1.0, 0.0], [3.0, -3.0, 0.0]])
    combined = combine_logits(family_of("classification"), [a, b], [0.25, 0.75], "probabilities")
    # row 0 by hand: softmax(a0) = (0.8438, 0.1142, 0.0420), softmax(b0) = (0.2119, 0.5761, 0.2119)
    expected = 0.25 * np.array([0.84379473, 0.11419519, 0.04201007]) + 0.75 * np.array([0.21194156, 0.57611688, 0.21194156])
    assert softmax(combined)[0] == pytest.approx(expected, abs=1e-6)
    assert softmax(combined)[1] == pytest.approx(0.25 * softmax(a[1]) + 0.75 * softmax(b[1]), abs=1e-6)


def test_mean_of_logits_is_the_weighted_mean():
    a, b = np.array([[2.0, -2.0]]), np.array([[0.0, 4.0]])
    combined = combine_logits(family_of("classification"), [a, b], [1.0, 3.0], "logits")
    assert combined == pytest.approx(np.array([[0.5, 2.5]]))  # (2 + 0*3)/4, (-2 + 4*3)/4


def test_multi_label_ensembles_average_each_labels_sigmoid():
    a, b = np.array([[0.0, 2.0]]), np.array([[np.log(3.0), -2.0]])  # sigmoids (0.5, 0.881) and (0.75, 0.119)
    combined = combine_logits(family_of("multi_label"), [a, b], [0.5, 0.5], "probabilities")
    assert 1 / (1 + np.exp(-combined)) == pytest.approx(np.array([[0.625, 0.5]]), abs=1e-6)


def test_regression_ensembles_average_the_scores_either_way():
    a, b = np.array([[0.2], [1.0]]), np.array([[0.6], [0.0]])
    for how in ("probabilities", "logits"):
        combined = combine_logits(family_of("regression"), [a, b], [0.5, 0.5], how)
        assert combined == pytest.approx(np.array([[0.4], [0.5]]))


def test_per_word_outputs_of_different_widths_are_padded_and_stay_nan_past_the_words():
    a = np.array([[[1.0, 0.0], [0.0, 1.0]]])  # one sentence, 2 words
    b = np.array([[[0.0, 0.0], [0.0, 0.0], [np.nan, np.nan]]])  # the same words, padded to 3
    combined = combine_logits(family_of("token_classification"), [a, b], [0.5, 0.5], "probabilities")
    assert combined.shape == (1, 3, 2)
    assert softmax(combined[0, 0]) == pytest.approx(0.5 * softmax(a[0, 0]) + 0.5 * np.array([0.5, 0.5]), abs=1e-6)
    assert np.isnan(combined[0, 2]).all()


def test_members_differ_only_in_shape_they_cannot_be_combined():
    with pytest.raises(ValueError, match="differ in shape"):
        combine_logits(family_of("classification"), [np.zeros((2, 3)), np.zeros((2, 2))], [1, 1], "logits")


def _recipe(tmp_path: Path, ensemble: dict, stages: dict | None = None, report: bool = False) -> Path:
    data = write_rows(tmp_path / "data.csv", tiny_rows())
    steps = {"max_steps": 12, "lr": 3e-3, "batch_size": 16, "warmup_ratio": 0.0}
    recipe = {
        "run": {"name": "ensemble", "out_dir": str(tmp_path / "runs"), "threads": 1, "seed": 7},
        "task": {"dataset": str(data), "max_length": 16},
        "teacher": {"model": str(tiny_teacher_dir(tmp_path / "teacher")), "ensemble": ensemble},
        "student": {"layers": 1},
        "stages": stages if stages is not None else {"finetune": steps, "task_specific": {**steps, "max_steps": 4}},
        "export": {"quantize": "none"} if report else {"enabled": False},
        "report": {"batch_sizes": [1], "warmup": 1, "repeats": 2} if report else {"enabled": False},
    }
    path = tmp_path / "ensemble.toml"
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")
    return path


def test_members_are_each_model_at_each_seed_in_order(tmp_path):
    other = tiny_teacher_dir(tmp_path / "other")
    recipe = load_recipe(_recipe(tmp_path, {"seeds": 2, "models": [str(other)], "weights": [1, 1, 2, 2]}))
    members = planned_members(recipe)
    assert [(m.name, Path(m.source).name, m.seed) for m in members] == [
        ("member-1", "teacher", 7), ("member-2", "teacher", 8), ("member-3", "other", 7), ("member-4", "other", 8)
    ]


@pytest.mark.parametrize(
    "ensemble, message",
    [
        ({"seeds": 2, "weights": [1.0]}, "1 weights for 2 members"),
        ({"seeds": 2, "relation_member": 3}, "relation_member 3 but the ensemble has 2 members"),
        ({"seeds": 0}, "greater than or equal to 1"),
        ({"seeds": 2, "weights": [-1.0, 2.0]}, "non-negative weights"),
    ],
)
def test_bad_ensemble_tables_are_refused_with_the_reason(tmp_path, ensemble, message):
    with pytest.raises(UserError, match=message):
        load_recipe(_recipe(tmp_path, ensemble))


def test_an_ensemble_needs_the_finetune_stage(tmp_path):
    from distill.validate import check_recipe

    recipe = load_recipe(_recipe(tmp_path, {"seeds": 2}, stages={"task_specific": {"max_steps": 2}}))
    with pytest.raises(UserError, match="made by the finetune stage"):
        check_recipe(recipe)


RELATION_STAGES = {
    "finetune": {"max_steps": 12, "lr": 3e-3, "batch_size": 16, "warmup_ratio": 0.0},
    "task_adaptive": {"max_steps": 3, "batch_size": 16},
    "task_specific": {"max_steps": 3, "batch_size": 16, "relation_weight": 1.0},
}


def test_mean_relation_targets_teach_relations_from_every_member(tmp_path):
    run = Run(load_recipe(_recipe(tmp_path, {"seeds": 2, "relation_targets": "mean"}, stages=RELATION_STAGES)))
    run.execute()
    tad = json.loads((run.path("student_tad") / "metrics.json").read_text(encoding="utf-8"))
    assert tad["relation_teachers"] == 2 and tad["dev_relation_loss_after"] < tad["dev_relation_loss_before"]
    assert (run.path("student") / "config.json").is_file()


def test_mean_relation_targets_need_members_with_one_tokenizer(tmp_path):
    other = tiny_teacher_dir(tmp_path / "other", words=["good", "bad", "film", "plot", "the"])
    recipe = _recipe(tmp_path, {"models": [str(other)], "relation_targets": "mean"}, stages=RELATION_STAGES)
    with pytest.raises(UserError, match="tokenizer is not") as info:
        Run(load_recipe(recipe)).execute()
    assert info.value.where == "[teacher.ensemble] relation_targets"


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory) -> Run:
    tmp_path = tmp_path_factory.mktemp("ensemble")
    run = Run(load_recipe(_recipe(tmp_path, {"seeds": 2, "combine": "probabilities"}, report=True)))
    run.execute()
    return run


def test_finetune_makes_every_member_and_scores_their_combination(ensemble_run):
    run = ensemble_run
    teacher = run.path("teacher")
    ensemble = read_ensemble(teacher)
    assert ensemble is not None and ensemble.members == ["member-1", "member-2"]
    assert ensemble.weights == [0.5, 0.5]
    record = json.loads((teacher / "ensemble.json").read_text(encoding="utf-8"))
    assert [member["seed"] for member in record["members"]] == [7, 8]
    metrics = json.loads((teacher / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["members"]) == {"member-1", "member-2"}
    best = max(ensemble.members, key=lambda name: (metrics["members"][name]["dev"]["accuracy"], name == "member-1"))
    assert metrics["relation_member"] == ensemble.relation_member
    assert metrics["members"][ensemble.relation_member]["dev"]["accuracy"] == metrics["members"][best]["dev"]["accuracy"]
    assert run.teacher_dir() == teacher / "members" / ensemble.relation_member
    # the two seeds made two different teachers
    data = run.data()
    logits = [model_logits(run.recipe, path, data.test, data, run.device) for path in ensemble.member_dirs()]
    assert not np.allclose(logits[0], logits[1])
    # the ensemble's test accuracy is that of the mean of the members' probabilities
    mean = 0.5 * softmax(logits[0]) + 0.5 * softmax(logits[1])
    gold = [data.labels.index(example.label) for example in data.test]
    assert metrics["test"]["accuracy"] == pytest.approx(float(np.mean(mean.argmax(axis=1) == np.array(gold))))


def test_a_single_teacher_at_a_members_seed_is_that_member(ensemble_run, tmp_path):
    table = tomllib.loads(Path(ensemble_run.recipe.source).read_text(encoding="utf-8"))
    del table["teacher"]["ensemble"]
    table["teacher"]["seed"] = 8  # member-2's seed; [run] seed (the split) stays 7
    table["run"]["out_dir"] = str(tmp_path / "runs")
    path = tmp_path / "single.toml"
    path.write_text(tomli_w.dumps(table), encoding="utf-8")
    single = Run(load_recipe(path))
    single.execute(only=["prepare", "finetune"])
    mine = load_classifier(single.path("teacher")).state_dict()
    member = load_classifier(ensemble_run.path("teacher") / "members" / "member-2").state_dict()
    assert mine.keys() == member.keys() and all(torch.equal(mine[name], member[name]) for name in mine)


def test_task_specific_soft_labels_are_the_ensembles(ensemble_run):
    run = ensemble_run
    data = run.data()
    ensemble = read_ensemble(run.path("teacher"))
    cache = cache_teacher_logits(run, None, None, data)  # an ensemble's cache reads the members, not one model
    members = [softmax(model_logits(run.recipe, path, data.train, data, run.device)) for path in ensemble.member_dirs()]
    assert softmax(cache.logits.cpu().numpy()) == pytest.approx(0.5 * members[0] + 0.5 * members[1], abs=1e-5)
    assert (run.path("student") / "config.json").is_file()


def test_data_distillation_labels_are_the_ensembles_and_cached_per_member(ensemble_run):
    run = ensemble_run
    data = run.data()
    ensemble = read_ensemble(run.path("teacher"))
    texts = [example.text for example in data.dev]
    labels = teacher_logits(run, texts)
    members = [softmax(model_logits(run.recipe, path, data.dev, data, run.device)) for path in ensemble.member_dirs()]
    assert softmax(labels) == pytest.approx(0.5 * members[0] + 0.5 * members[1], abs=1e-5)
    assert teacher_logits(run, texts) == pytest.approx(labels)  # the second call reads both members' caches


def test_a_killed_ensemble_resumes_with_the_member_it_had_not_finished(tmp_path, monkeypatch):
    run = Run(load_recipe(_recipe(tmp_path, {"seeds": 3})))
    run.execute(only=["prepare"])
    run.current_stage = "finetune"  # as the pipeline sets it: the members' checkpoints go under the stage
    work = tmp_path / "work"
    trained: list[str] = []
    real = finetune.fine_tune

    def fine_tune_then_die(run_, source, seed, target, checkpoints):
        trained.append(target.name)
        if target.name == "member-2":
            raise KeyboardInterrupt  # killed while training the second member
        return real(run_, source, seed, target, checkpoints)

    monkeypatch.setattr(finetune, "fine_tune", fine_tune_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune.run(run, work)
    first = (work / "members" / "member-1" / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(finetune, "fine_tune", lambda *args: (trained.append(args[3].name), real(*args))[1])
    finetune.run(run, work)
    assert trained == ["member-1", "member-2", "member-2", "member-3"]  # member-1 was not trained again
    assert (work / "members" / "member-1" / "model.safetensors").stat().st_mtime_ns == first
    assert read_ensemble(work).members == ["member-1", "member-2", "member-3"]


def test_the_report_lists_the_members_and_compares_every_student_with_the_ensemble(ensemble_run):
    from distill.report.schema import validate_report

    run = ensemble_run
    report = json.loads((run.dir / "report.json").read_text(encoding="utf-8"))
    validate_report(report)
    ensemble = report["ensemble"]
    metrics = json.loads((run.path("teacher") / "metrics.json").read_text(encoding="utf-8"))
    assert ensemble["figures"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])  # the same members, the same test
    assert [member["name"] for member in ensemble["members"]] == ["member-1", "member-2"]
    assert [member["weight"] for member in ensemble["members"]] == [0.5, 0.5]
    for member in ensemble["members"]:
        assert member["test"]["accuracy"] == pytest.approx(metrics["members"][member["name"]]["test"]["accuracy"])
        assert "/" not in member["source"]  # a folder name, not a path
    assert ensemble["relation_member"] == metrics["relation_member"]
    for model in [report["teacher"], *report["students"]]:  # where each model's batch-size-1 call spends its time
        assert set(model["latency_split_ms"]) == {"tokenise", "run", "post"} and model["latency_split_ms"]["run"] > 0
    for student in report["students"]:
        assert student["ensemble_retention"] == pytest.approx(student["accuracy"] / ensemble["figures"]["accuracy"])
        assert {"diff", "low", "high"} <= set(student["vs_ensemble"])
    markdown = (run.dir / "report.md").read_text(encoding="utf-8")
    assert "teacher ensemble (2 members, mean of their probabilities)" in markdown
    assert "vs the teacher ensemble:" in markdown
