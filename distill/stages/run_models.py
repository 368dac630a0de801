"""The models a run trained, and their predictions from the saved torch weights.

The export, the report, `distill eval` and the seed repeats all need the same list of a run's
models and the same reference predictions; they live here so none of them imports another.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.data.datasets import Example
from distill.data.words import WordTokenizer
from distill.export.runtime import TRANSFORMER_KIND
from distill.models.shallow import SHALLOW_KINDS, load_shallow
from distill.models.teacher import label_names, load_classifier
from distill.pipeline import STAGES, STUDENT_STAGES, Run
from distill.report.evaluate import predict_logits
from distill.stages.common import task_dataset, text_encoder, word_dataset
from distill.tasks import Label

TWIN_DIR = "twin"  # inside student/: the transformer student trained on gold labels only


@dataclass(frozen=True)
class RunModel:
    """One model of a run: `name` is its file stem in onnx/ and its name in the report."""

    name: str
    kind: str  # transformer | bow | cnn | bigru
    role: str  # teacher | student
    directory: Path


def final_transformer_student(run: Run) -> Path | None:
    """`student/` when task-specific distillation ran, else the newest student with a trained head.

    Relation-only stages (GD, GED, TAD) leave the classification head untrained; a stage that
    trains the head records its test metrics in `metrics.json` beside the weights, as the
    teacher's fine-tuning does.
    """
    for stage in reversed(STUDENT_STAGES):
        directory = run.dir / STAGES[stage].output
        if stage == "task_specific" and directory.is_dir():
            return directory
        if (directory / "metrics.json").is_file():
            metrics = json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
            if "test" in metrics:
                return directory
    return None


def run_models(run: Run) -> list[RunModel]:
    """The teacher, the final transformer student and every shallow student, in report order."""
    models = [RunModel("teacher", TRANSFORMER_KIND, "teacher", run.teacher_dir())]
    student = final_transformer_student(run)
    if student is not None:
        models.append(RunModel(student.name, TRANSFORMER_KIND, "student", student))
    for kind in SHALLOW_KINDS:
        directory = run.dir / "shallow" / kind
        if directory.is_dir():
            models.append(RunModel(kind, kind, "student", directory))
    return models


def model_inputs(kind: str, examples: Sequence[Example]) -> tuple[list[str], list[str] | None]:
    """Texts (and second segments) as a model of `kind` reads them.

    Transformers take a text pair as two segments; word-level students read one text, so a
    pair is joined to its text (as the TF-IDF baseline does).
    """
    if kind == TRANSFORMER_KIND and any(example.text_pair is not None for example in examples):
        return [e.text for e in examples], [e.text_pair or "" for e in examples]
    return [example.joined for example in examples], None


def torch_predictions(run: Run, model: RunModel, examples: list[Example]) -> list[Label]:
    """The saved torch model's decisions (the reference the ONNX export must match): label names,
    label sets at thresholds tuned on the run's dev split, as the export tunes them, or scores."""
    if model.kind == TRANSFORMER_KIND:
        network = load_classifier(model.directory)
        encoder = text_encoder(run.recipe, model.directory)
        labels = label_names(network.config)

        def logits_of(rows: list[Example]) -> np.ndarray:
            return predict_logits(network, task_dataset(encoder, rows)).numpy()  # (rows, outputs)
    else:
        network, config, vocab = load_shallow(model.directory)
        labels = [config.id2label[index] for index in range(config.num_labels)]
        splitter = WordTokenizer(config.language)

        def logits_of(rows: list[Example]) -> np.ndarray:
            return predict_logits(network, word_dataset(splitter, vocab, rows, config.max_len)).numpy()

    data = run.data()
    thresholds = None
    if data.family.tunes_thresholds(labels):
        thresholds = data.family.tune_thresholds(logits_of(data.dev), [e.label for e in data.dev], labels)
    return data.family.decide(logits_of(examples), labels, thresholds)
