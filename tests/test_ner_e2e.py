"""A token-classification (NER) run through every stage that takes it on a tiny teacher: prepare,
fine-tuning with a per-token head, task-adaptive and task-specific distillation (cached per-word
teacher logits, gold-only twin), the ONNX export and the report, whose entity F1, figures per
entity type, paired tests and CRF baseline are checked against seqeval on the models' decisions."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from scipy.stats import binomtest
from seqeval.metrics import classification_report, precision_score, recall_score
from seqeval.metrics import f1_score as seqeval_f1
from seqeval.metrics.sequence_labeling import get_entities
from tiny_models import tiny_teacher_dir

from distill.errors import UserError
from distill.export.runtime import OnnxPredictor
from distill.models.teacher import load_classifier
from distill.pipeline import Run
from distill.recipe import load_recipe
from distill.report.baseline import baseline_for_run
from distill.report.schema import validate_report
from distill.stages.common import text_encoder
from distill.stages.export import onnx_predictions
from distill.validate import check_recipe

NOUNS, ADJECTIVES, FILLERS = ["film", "book", "plot"], ["good", "great", "awful"], ["the", "was", "very", "not", "ok"]


def tagged_sentences(count: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Sentences whose nouns are ART entities (two words with a leading "a") and adjectives EVAL ones."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        tokens: list[str] = []
        tags: list[str] = []
        for _ in range(rng.randint(3, 7)):
            draw = rng.random()
            if draw < 0.25:
                tokens += ["a", rng.choice(NOUNS)]
                tags += ["B-ART", "I-ART"]
            elif draw < 0.45:
                tokens.append(rng.choice(NOUNS))
                tags.append("B-ART")
            elif draw < 0.65:
                tokens.append(rng.choice(ADJECTIVES))
                tags.append("B-EVAL")
            else:
                tokens.append(rng.choice(FILLERS))
                tags.append("O")
        sentences.append((tokens, tags))
    return sentences


STEPS = {"max_steps": 40, "lr": 3e-3, "batch_size": 16, "warmup_ratio": 0.0}
STAGES = {
    "finetune": {**STEPS, "max_steps": 200, "lr": 2e-3},
    "task_adaptive": {**STEPS, "max_steps": 10},
    "task_specific": {**STEPS, "baseline_twin": True},
}


def write_recipe(tmp_path: Path, **changes: object) -> Path:
    data = tmp_path / "ner.conll"
    data.write_text("".join("".join(f"{t} {g}\n" for t, g in zip(*s)) + "\n" for s in tagged_sentences(240)), encoding="utf-8")
    teacher = tiny_teacher_dir(tmp_path / "teacher")
    recipe = {
        "run": {"name": "ner", "out_dir": str(tmp_path / "runs"), "threads": 1},
        "task": {"dataset": str(data), "type": "token_classification", "max_length": 16, "split": [0.6, 0.2, 0.2]},
        "teacher": {"model": str(teacher)},
        "student": {"layers": 1},
        "stages": STAGES,
        "export": {"enabled": False},
        "report": {"enabled": False},
        **changes,
    }
    path = tmp_path / "ner.toml"
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory) -> Run:
    """The tiny NER recipe through every stage that takes it: training, export (int8 kept) and report."""
    tmp_path = tmp_path_factory.mktemp("ner")
    recipe = write_recipe(
        tmp_path, export={"quantize": "int8", "int8_keep": "always"}, report={"batch_sizes": [1], "warmup": 1, "repeats": 2}
    )
    run = Run(load_recipe(recipe))
    run.execute()
    return run


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_ner_teacher_and_students_learn_entities(ner_run):
    labels = read_json(ner_run.dir / "data" / "labels.json")
    assert labels == ["O", "B-ART", "I-ART", "B-EVAL", "I-EVAL"]
    teacher = read_json(ner_run.dir / "teacher" / "metrics.json")
    assert teacher["test"]["entity_f1"] > 0.75  # the tags follow the words (and "a" before a noun): a tagger learns them
    assert set(teacher["test"]["per_type"]) == {"ART", "EVAL"}
    assert load_classifier(ner_run.dir / "teacher").config.distill_head == "token"
    student = read_json(ner_run.dir / "student" / "metrics.json")
    for model in (student, read_json(ner_run.dir / "student" / "twin" / "metrics.json")):
        assert 0.0 <= model["test"]["entity_f1"] <= 1.0
        assert model["test"]["token_accuracy"] > 0.5
    assert load_classifier(ner_run.dir / "student").config.num_hidden_layers == 1


def exported(run: Run) -> dict[str, dict]:
    """The export's summary entry of each model, by name."""
    return {entry["name"]: entry for entry in read_json(run.dir / "onnx" / "summary.json")["models"]}


def exported_decisions(run: Run, manifest: str) -> list[list[str]]:
    """An exported model's test decisions, each as long as its gold sentence (words past the
    model's last one are O)."""
    test = run.data().test
    predictor = OnnxPredictor(run.dir / "onnx" / manifest, threads=1)
    decisions = onnx_predictions(predictor, test)
    return [list(tags) + ["O"] * (len(e.label) - len(tags)) for tags, e in zip(decisions, test, strict=True)]


def seqeval_per_type(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, dict]:
    """Precision, recall, F1 and support per type from seqeval (default mode): the independent reference."""
    figures = classification_report(gold, predicted, output_dict=True, zero_division=0)
    return {
        kind: {"precision": pytest.approx(row["precision"]), "recall": pytest.approx(row["recall"]),
               "f1": pytest.approx(row["f1-score"]), "support": int(row["support"])}
        for kind, row in figures.items() if not kind.endswith(" avg")
    }  # fmt: skip


def test_the_report_scores_every_exported_model_by_entity_f1_and_per_type(ner_run):
    report = read_json(ner_run.dir / "report.json")
    validate_report(report)
    assert report["task"]["type"] == "token_classification" and report["task"]["rows"] == "sentences"
    assert report["task"]["metrics"] == ["entity_f1", "entity_precision", "entity_recall"]
    gold = [list(e.label) for e in ner_run.data().test]
    summary = exported(ner_run)
    models = {"teacher": report["teacher"], **{student["name"]: student for student in report["students"]}}
    assert list(models) == ["teacher", "student"]
    decisions = {}
    for name, figures in models.items():
        torch_test = read_json(ner_run.dir / summary[name]["source"] / "metrics.json")["test"]
        assert figures["entity_f1"] == pytest.approx(torch_test["entity_f1"], abs=1e-6)  # ONNX decides as torch did
        for suffix, measured in (("", figures), ("_int8", figures["int8"])):
            predicted = decisions[name + suffix] = exported_decisions(ner_run, summary[name][f"manifest{suffix}"])
            assert measured["entity_f1"] == pytest.approx(summary[name][f"test_entity_f1{suffix}"])
            assert measured["entity_f1"] == pytest.approx(seqeval_f1(gold, predicted))
            assert measured["entity_precision"] == pytest.approx(precision_score(gold, predicted, zero_division=0))
            assert measured["entity_recall"] == pytest.approx(recall_score(gold, predicted, zero_division=0))
            assert measured["per_type"] == seqeval_per_type(gold, predicted)
    student = models["student"]
    assert student["retention"] == pytest.approx(student["entity_f1"] / report["teacher"]["entity_f1"])
    tokens = [(s, t) for a, b in zip(decisions["teacher"], decisions["student"]) for s, t in zip(a, b)]
    assert student["agreement"] == pytest.approx(np.mean([s == t for s, t in tokens]))  # share of tokens with the same tag


def test_the_paired_tests_compare_entity_f1_and_count_sentences_wholly_right(ner_run):
    report = read_json(ner_run.dir / "report.json")
    student, teacher = report["students"][0], report["teacher"]
    twin = read_json(ner_run.dir / "student" / "twin" / "metrics.json")["test"]
    assert student["vs_teacher"]["diff"] == pytest.approx(student["entity_f1"] - teacher["entity_f1"])
    assert student["vs_gold_twin"]["diff"] == pytest.approx(student["entity_f1"] - twin["entity_f1"], abs=1e-6)
    gold = [list(e.label) for e in ner_run.data().test]

    def right(name: str) -> np.ndarray:  # a sentence is right when its entity set is the gold one (seqeval's reading)
        predicted = exported_decisions(ner_run, exported(ner_run)[name]["manifest"])
        return np.array([set(get_entities(g)) == set(get_entities(p)) for g, p in zip(gold, predicted, strict=True)])

    student_right, teacher_right = right("student"), right("teacher")
    only_student, only_teacher = int(np.sum(student_right & ~teacher_right)), int(np.sum(teacher_right & ~student_right))
    expected = binomtest(only_student, only_student + only_teacher).pvalue if only_student + only_teacher else 1.0
    assert student["vs_teacher"]["p_value"] == pytest.approx(expected)
    for test_result in (student["vs_teacher"], student["vs_gold_twin"]):
        assert -1.0 <= test_result["low"] <= test_result["high"] <= 1.0
    markdown = (ner_run.dir / "report.md").read_text(encoding="utf-8")
    assert "resamples the test sentences with replacement" in markdown and "not of entity F1" in markdown


def test_the_crf_baseline_is_reported_with_its_entity_f1_per_type(ner_run):
    report = read_json(ner_run.dir / "report.json")
    baseline = report["baseline"]
    assert baseline["name"] == "crf" and set(baseline) >= {"entity_f1", "entity_precision", "entity_recall", "c2", "per_type"}
    gold = [list(e.label) for e in ner_run.data().test]
    predicted = [list(tags) for tags in baseline_for_run(ner_run.dir)["predictions"]]  # the CRF again: its fit is deterministic
    assert baseline["entity_f1"] == pytest.approx(seqeval_f1(gold, predicted))
    assert baseline["per_type"] == seqeval_per_type(gold, predicted)
    markdown = (ner_run.dir / "report.md").read_text(encoding="utf-8")
    table = markdown.split("## F1 per entity type\n", 1)[1].strip().split("\n\n")[0].splitlines()
    kinds = sorted(baseline["per_type"])
    assert table[0] == "| model | " + " | ".join(f"{kind} (n={baseline['per_type'][kind]['support']:,})" for kind in kinds) + " |"
    expected_rows = {"teacher": report["teacher"], "student": report["students"][0], f"baseline {baseline['name']}": baseline}
    for label, model in expected_rows.items():
        assert f"| {label} | " + " | ".join(f"{model['per_type'][kind]['f1']:.4f}" for kind in kinds) + " |" in table
    assert f"Baseline crf: entity F1 {baseline['entity_f1']:.4f}" in markdown


def test_export_and_report_are_accepted(tmp_path):
    lines = check_recipe(load_recipe(write_recipe(tmp_path, export={"quantize": "int8"}, report={"batch_sizes": [1]})))
    assert any("primary metric entity_f1" in line for line in lines)


PIECES = ["a", "film", "book", "plot", "good", "gr", "##eat", "aw", "##ful", "the", "was", "very", "not", "ok"]


def continuation_agreement(tmp_path: Path, subword_labels: str) -> float:
    """Fine-tune a teacher whose vocabulary splits "great" and "awful" in two; the share of their
    second pieces whose own argmax is the word's gold tag on the test sentences."""
    teacher = tiny_teacher_dir(tmp_path / "pieces-teacher", words=PIECES)
    finetune = {**STAGES["finetune"], "subword_labels": subword_labels}
    recipe = write_recipe(tmp_path, teacher={"model": str(teacher)}, stages={**STAGES, "finetune": finetune})
    run = Run(load_recipe(recipe))
    run.execute(only=["prepare", "finetune"])
    data = run.data()
    model = load_classifier(run.teacher_dir())
    encoder = text_encoder(run.recipe, run.teacher_dir())
    right = total = 0
    for example, (ids, _, pieces) in zip(data.test, encoder.word_pieces([e.tokens for e in data.test]), strict=True):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0]
        for tag, positions in zip(example.label, pieces, strict=True):
            for position in positions[1:]:
                right += data.labels[int(logits[position].argmax())] == tag
                total += 1
    assert total > 20
    return right / total


def test_subword_labels_all_teaches_every_piece_its_words_tag(tmp_path):
    every = continuation_agreement(tmp_path / "all", "all")
    first = continuation_agreement(tmp_path / "first", "first")
    assert every > 0.95 and every > first  # the default leaves second pieces untrained


def test_subword_labels_are_refused_for_a_task_without_word_tags(tmp_path):
    recipe = write_recipe(tmp_path, stages={"finetune": {**STAGES["finetune"], "subword_labels": "all"}})
    text = recipe.read_text(encoding="utf-8").replace('type = "token_classification"', 'type = "classification"')
    data = tmp_path / "texts.csv"
    data.write_text("text,label\n" + "".join(f"good film {i},pos\nawful plot {i},neg\n" for i in range(30)), encoding="utf-8")
    recipe.write_text(text.replace(str(tmp_path / "ner.conll"), str(data)), encoding="utf-8")
    with pytest.raises(UserError, match="subword_labels"):
        check_recipe(load_recipe(recipe))
