"""Multi-label and regression tasks through every stage on a tiny teacher: fine-tuning, task-specific
distillation (with a gold-only twin), data distillation into BOW/CNN/BiGRU, ONNX export with
parity, tuned thresholds in the manifest, the report, `distill eval` and the predictor's output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from tiny_models import tiny_teacher_dir

from distill.export.runtime import OnnxPredictor
from distill.pipeline import Run
from distill.recipe import STAGE_ORDER, load_recipe
from distill.report.schema import validate_report
from distill.stages.report import evaluate_run
from distill.tasks.multi_label import sigmoid

SUBJECTS = ["film", "book", "plot"]
GOOD, BAD = ["good", "great", "fine"], ["bad", "awful", "poor"]


def multi_label_rows(count: int) -> list[dict[str, str]]:
    """Texts whose label set is which of the words 'good'-like and 'bad'-like they contain."""
    rows = []
    for index in range(count):
        words = [("the", "a")[(index // 6) % 2], SUBJECTS[index % 3], "was"] + ["very"] * (index // 12)
        labels = []
        if index % 2 == 0:
            words.append(GOOD[(index // 2) % 3])
            labels.append("pos")
        if index % 3 == 0:
            words.append(BAD[(index // 3) % 3])
            labels.append("neg")
        if not labels:
            words.append("ok")
        rows.append({"text": " ".join(words), "label": "|".join(labels)})
    return rows


def regression_rows(count: int) -> list[dict[str, str]]:
    """Texts scored by how many 'good'-like words they hold (0 to 3), with a repeated-'very' tail to keep them distinct."""
    rows = []
    for index in range(count):
        goods = index % 4
        words = ["the", SUBJECTS[index % 3], "was"] + GOOD[:goods] + ["not"] * (3 - goods) + ["very"] * (index // 8)
        rows.append({"text": " ".join(words), "label": str(goods / 3)})
    return rows


def write_run(tmp_path: Path, task_type: str, rows: list[dict[str, str]], students: list[str]) -> Run:
    data = tmp_path / "data.csv"
    with open(data, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    teacher = tiny_teacher_dir(tmp_path / "teacher")
    steps = {"max_steps": 30, "lr": 3e-3, "batch_size": 16, "warmup_ratio": 0.0}
    recipe = {
        "run": {"name": task_type, "out_dir": str(tmp_path / "runs"), "threads": 1},
        "task": {"dataset": str(data), "type": task_type, "max_length": 32, "split": [0.6, 0.2, 0.2]},
        "teacher": {"model": str(teacher)},
        "student": {"layers": 1},
        "stages": {
            "pretrain": {**steps, "max_steps": 3, "lr": 1e-5},  # the task-agnostic stages, briefly: each must take the task
            "finetune": {**steps, "max_steps": 400, "lr": 1e-3},  # the pooler starts afresh after pretraining
            "general": {**steps, "max_steps": 3},
            "general_enhanced": {**steps, "max_steps": 3},
            "task_adaptive": {**steps, "max_steps": 3},
            "task_specific": {**steps, "baseline_twin": True},
            "data_distill": {
                **steps, "students": students, "embed_dim": 16, "hidden": 16, "embeddings": "random",
                "augment": {"multiplier": 1, "pos_swap": 0.0},
            },
        },
        "export": {"quantize": "int8", "int8_keep": "always"},
        "report": {"batch_sizes": [1], "warmup": 1, "repeats": 2},
    }
    path = tmp_path / f"{task_type}.toml"
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")
    run = Run(load_recipe(path))
    run.execute()
    return run


@pytest.fixture(scope="module")
def multi_label_run(tmp_path_factory) -> Run:
    return write_run(tmp_path_factory.mktemp("multi"), "multi_label", multi_label_rows(150), ["bow", "cnn", "bigru"])


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory) -> Run:
    return write_run(tmp_path_factory.mktemp("regression"), "regression", regression_rows(150), ["bow", "cnn"])


@pytest.mark.parametrize("fixture", ["multi_label_run", "regression_run"])
def test_every_stage_runs_on_the_task(fixture, request):
    run = request.getfixturevalue(fixture)
    done = sorted(path.stem for path in (run.dir / "done").glob("*.json"))
    assert done == sorted(STAGE_ORDER)


def test_multi_label_run_reports_the_tasks_metrics_for_every_model(multi_label_run):
    run = multi_label_run
    report = json.loads((run.dir / "report.json").read_text(encoding="utf-8"))
    validate_report(report)
    assert report["task"]["type"] == "multi_label"
    assert report["task"]["metrics"] == ["micro_f1", "macro_f1", "subset_accuracy"]
    assert [s["name"] for s in report["students"]] == ["student", "bow", "cnn", "bigru"]
    teacher = report["teacher"]
    assert teacher["micro_f1"] > 0.8  # the words decide the labels: the tiny teacher learns them
    for student in report["students"]:
        assert student["retention"] == pytest.approx(student["micro_f1"] / teacher["micro_f1"])
        assert {"diff", "low", "high", "p_value"} <= set(student["vs_teacher"])
        assert "threshold_gain" in student
    assert "vs_gold_twin" in report["students"][0]
    assert report["baseline"]["name"] == "tfidf-ovr-logreg" and 0 <= report["baseline"]["micro_f1"] <= 1
    markdown = (run.dir / "report.md").read_text(encoding="utf-8")
    assert "| micro-F1 | macro-F1 | subset accuracy |" in markdown
    assert "student: thresholds tuned on dev change test micro-F1 by" in markdown


def test_multi_label_manifest_carries_dev_tuned_thresholds_that_predict_uses(multi_label_run):
    run = multi_label_run
    summary = json.loads((run.dir / "onnx" / "summary.json").read_text(encoding="utf-8"))
    assert summary["task"] == "multi_label" and summary["metric"] == "micro_f1"
    for entry in summary["models"]:  # sigmoid heads: ONNX logits match torch on real batches
        assert entry["parity_max_abs_diff"] <= entry["parity_tolerance"] and entry["parity_rows"] > 0
    manifest = json.loads((run.dir / "onnx" / "student.json").read_text(encoding="utf-8"))
    assert manifest["task"] == "multi_label" and len(manifest["thresholds"]) == 2
    predictor = OnnxPredictor(run.dir / "onnx" / "student.json")
    texts = ["the film was good", "the book was awful", "the plot was very great poor"]
    results = predictor.predict(texts)
    probabilities = sigmoid(predictor.predict_logits(texts))
    for result, row in zip(results, probabilities):
        assert set(result) == {"labels", "probabilities"}
        assert result["probabilities"] == pytest.approx(dict(zip(predictor.labels, row.tolist())))
        expected = [label for label, p, t in zip(predictor.labels, row, manifest["thresholds"]) if p >= t]
        assert result["labels"] == expected


def test_regression_run_reports_correlations_and_predicts_scores(regression_run):
    run = regression_run
    report = json.loads((run.dir / "report.json").read_text(encoding="utf-8"))
    validate_report(report)
    assert report["task"]["metrics"] == ["pearson", "spearman"]
    assert report["teacher"]["pearson"] > 0.5
    for student in report["students"]:
        assert "p_value" not in student["vs_teacher"] and -1 <= student["agreement"] <= 1
    assert report["baseline"]["name"] == "tfidf-ridge"
    summary = json.loads((run.dir / "onnx" / "summary.json").read_text(encoding="utf-8"))
    for entry in summary["models"]:  # one linear output: ONNX scores match torch on real batches
        assert entry["parity_max_abs_diff"] <= entry["parity_tolerance"] and entry["test_pearson"] is not None
    predictor = OnnxPredictor(run.dir / "onnx" / "bow.json")
    results = predictor.predict(["the film was good great fine", "the book was not not not"])
    assert [set(r) for r in results] == [{"score"}, {"score"}]
    assert np.isfinite([r["score"] for r in results]).all()
    table = evaluate_run(run)
    assert "Pearson" in table and "Spearman" in table and "onnx Pearson" in table


def test_serve_answers_with_label_sets_and_scores(multi_label_run, regression_run):
    from fastapi.testclient import TestClient

    from distill.export.serve import create_app

    multi = OnnxPredictor(multi_label_run.dir / "onnx" / "student.json")
    client = TestClient(create_app(multi))
    body = client.post("/predict", json={"texts": ["the film was good", "a book was awful"]}).json()
    assert body["predictions"] == multi.predict(["the film was good", "a book was awful"])
    metadata = client.get("/metadata").json()
    assert metadata["task"] == "multi_label" and metadata["thresholds"] == multi.thresholds
    mismatched = client.post("/predict", json={"texts": ["a", "b"], "pairs": ["c"]})
    assert mismatched.status_code == 422 and "1 pairs for 2 texts" in mismatched.json()["detail"]
    scores = OnnxPredictor(regression_run.dir / "onnx" / "student.json")
    body = TestClient(create_app(scores)).post("/predict", json={"texts": ["the film was good great"]}).json()
    assert body["predictions"] == [{"score": pytest.approx(scores.predict(["the film was good great"])[0]["score"])}]


def test_predict_command_prints_label_sets(multi_label_run, distill_main):
    code, out, err = distill_main("predict", str(multi_label_run.dir / "onnx" / "bow.json"), "--text", "the film was good")
    assert code == 0, err
    line = json.loads(out.strip().splitlines()[-1])
    assert line["text"] == "the film was good" and set(line) == {"text", "labels", "probabilities"}
    code, _, err = distill_main("predict", str(multi_label_run.dir / "onnx" / "bow.json"), "--text", "a", "--pair", "b", "--pair", "c")
    assert code == 2 and "2 --pair for 1 texts" in err
