"""A token-classification (NER) run through the transformer path on a tiny teacher: prepare,
fine-tuning with a per-token head, task-adaptive and task-specific distillation (cached per-word
teacher logits, gold-only twin), with entity F1 reported by each stage."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import tomli_w
from tiny_models import tiny_teacher_dir

from distill.errors import UserError
from distill.models.teacher import load_classifier
from distill.pipeline import Run
from distill.recipe import load_recipe
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


def write_recipe(tmp_path: Path, **changes: object) -> Path:
    data = tmp_path / "ner.conll"
    data.write_text("".join("".join(f"{t} {g}\n" for t, g in zip(*s)) + "\n" for s in tagged_sentences(240)), encoding="utf-8")
    teacher = tiny_teacher_dir(tmp_path / "teacher")
    steps = {"max_steps": 40, "lr": 3e-3, "batch_size": 16, "warmup_ratio": 0.0}
    recipe = {
        "run": {"name": "ner", "out_dir": str(tmp_path / "runs"), "threads": 1},
        "task": {"dataset": str(data), "type": "token_classification", "max_length": 16, "split": [0.6, 0.2, 0.2]},
        "teacher": {"model": str(teacher)},
        "student": {"layers": 1},
        "stages": {
            "finetune": {**steps, "max_steps": 200, "lr": 2e-3},
            "task_adaptive": {**steps, "max_steps": 10},
            "task_specific": {**steps, "baseline_twin": True},
        },
        "export": {"enabled": False},
        "report": {"enabled": False},
        **changes,
    }
    path = tmp_path / "ner.toml"
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")
    return path


def test_ner_teacher_and_students_learn_entities(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path))
    run = Run(recipe)
    run.execute()
    labels = json.loads((run.dir / "data" / "labels.json").read_text(encoding="utf-8"))
    assert labels == ["O", "B-ART", "I-ART", "B-EVAL", "I-EVAL"]
    teacher = json.loads((run.dir / "teacher" / "metrics.json").read_text(encoding="utf-8"))
    assert teacher["test"]["entity_f1"] > 0.75  # the tags follow the words (and "a" before a noun): a tagger learns them
    assert set(teacher["test"]["per_type"]) == {"ART", "EVAL"}
    assert load_classifier(run.dir / "teacher").config.distill_head == "token"
    student = json.loads((run.dir / "student" / "metrics.json").read_text(encoding="utf-8"))
    for model in (student, json.loads((run.dir / "student" / "twin" / "metrics.json").read_text(encoding="utf-8"))):
        assert 0.0 <= model["test"]["entity_f1"] <= 1.0
        assert model["test"]["token_accuracy"] > 0.5
    assert load_classifier(run.dir / "student").config.num_hidden_layers == 1


def test_stages_without_a_token_path_are_refused_before_any_stage(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, report={"enabled": True}))
    with pytest.raises(UserError, match="report cannot take it yet"):
        check_recipe(recipe)
