"""Multi-label classification: a set of label names per text (possibly empty), one sigmoid per label.

Each label is its own yes/no decision, taken at a per-label threshold chosen on dev (0.5 when
none is given); micro-F1 over all label decisions is the primary metric.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from distill.errors import UserError
from distill.tasks.base import Label, TaskFamily, split_labels, split_texts


class MultiLabel(TaskFamily):
    name = "multi_label"
    metrics = ("micro_f1", "macro_f1", "subset_accuracy")
    agreement_means = "share of test texts with the same label set"
    right_means = "a text is right when its label set is the gold one"

    def read_label(self, value: object, task: Any) -> tuple[str, ...]:
        """A JSON list of names, or a string of names split at `[task] label_delimiter` ("" is the empty set)."""
        if isinstance(value, str):
            text = value.strip()
            names = text.split(task.label_delimiter) if text else []
        elif isinstance(value, list):
            names = value
        else:
            raise ValueError(f"a label set must be a list or a delimited string, got {json.dumps(value)}")
        return _label_set(names)

    def from_json(self, value: object) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise ValueError('"label" must be a list of label names')
        return _label_set(value)

    def to_json(self, label: Label) -> object:
        return list(label)

    def names_in(self, label: Label) -> tuple[str, ...]:
        return tuple(label)

    def is_empty(self, label: Label) -> bool:
        return False  # the empty set is a label: "none of them"

    def label_names(self, train: Sequence[Label]) -> list[str]:
        return sorted({name for names in train for name in names})

    def label_counts(self, labels: Sequence[Label]) -> dict[str, float]:
        """Rows per label name, a row once for each of its names ("(none)" for the empty set)."""
        return dict(sorted(Counter(name for names in labels for name in (names or ("(none)",))).items()))

    def check(self, labels: list[str], splits: dict[str, Sequence[Label]], where: str) -> None:
        if not labels:
            raise UserError("no training row has any label", where, "check [task] label_column and label_delimiter")
        self.refuse_unseen(labels, splits, where, "every label must occur in the training data")

    def targets(self, examples_labels: Sequence[Label], labels: list[str]) -> list[list[float]]:
        return indicator(examples_labels, labels).astype(np.float32).tolist()

    def hard_loss(self, logits, targets, label_smoothing: float = 0.0):
        from distill.losses import sigmoid_hard_loss

        return sigmoid_hard_loss(logits, targets, label_smoothing)

    def soft_loss(self, student_logits, teacher_logits, temperature: float):
        from distill.losses import sigmoid_soft_loss

        return sigmoid_soft_loss(student_logits, teacher_logits, temperature)

    def teacher_targets(self, teacher_logits) -> list[list[float]]:
        return (teacher_logits >= 0).float().tolist()  # sigmoid(z) >= 0.5

    def decide(self, logits: np.ndarray, labels: list[str], thresholds: Sequence[float] | None = None) -> list[tuple[str, ...]]:
        from distill.tasks.thresholds import apply_thresholds

        chosen = apply_thresholds(sigmoid(logits), _thresholds(thresholds, labels))  # (rows, labels) bool
        return [tuple(label for label, on in zip(labels, row) if on) for row in chosen]

    def score(self, gold: Sequence[Label], predicted: Sequence[Label], labels: list[str]) -> dict[str, Any]:
        from sklearn.metrics import accuracy_score, f1_score

        y_true, y_pred = indicator(gold, labels), indicator(predicted, labels)
        per_label = f1_score(y_true, y_pred, average=None, zero_division=0)
        return {
            "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(y_true, y_pred)),
            "per_class_f1": {label: float(score) for label, score in zip(labels, per_label)},
        }

    def paired_rows(self, gold: Sequence[Label], predicted: Sequence[Label]) -> np.ndarray:
        """Per row: true positives, false positives, false negatives over its labels, (rows, 3)."""
        labels = sorted({name for names in (*gold, *predicted) for name in names})
        y_true, y_pred = indicator(gold, labels), indicator(predicted, labels)
        return np.stack(
            [(y_true & y_pred).sum(1), ((1 - y_true) & y_pred).sum(1), (y_true & (1 - y_pred)).sum(1)], axis=1
        )

    def statistic(self, rows: np.ndarray) -> np.ndarray:
        """Micro-F1 = 2TP / (2TP + FP + FN) of the rows; 0 when there is nothing to find."""
        tp, fp, fn = np.moveaxis(np.asarray(rows, dtype=float).sum(axis=-2), -1, 0)
        denominator = 2 * tp + fp + fn
        return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)

    def exactly_right(self, gold: Sequence[Label], predicted: Sequence[Label]) -> list[bool]:
        return [set(p) == set(g) for p, g in zip(predicted, gold, strict=True)]

    def agreement(self, a: Sequence[Label], b: Sequence[Label]) -> float:
        from distill.report.stats import agreement

        return agreement([tuple(sorted(x)) for x in a], [tuple(sorted(x)) for x in b])

    def output(self, logits: np.ndarray, labels: list[str], thresholds: Sequence[float] | None = None) -> list[dict[str, Any]]:
        probabilities = sigmoid(logits)
        chosen = self.decide(logits, labels, thresholds)
        return [
            {"labels": list(names), "probabilities": {label: float(p) for label, p in zip(labels, row, strict=True)}}
            for names, row in zip(chosen, probabilities)
        ]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits)

    def logits_from_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
        return np.log(clipped) - np.log1p(-clipped)

    def tunes_thresholds(self, labels: list[str]) -> bool:
        return True

    def tune_thresholds(self, logits: np.ndarray, gold: Sequence[Label], labels: list[str]) -> list[float]:
        from distill.tasks.thresholds import tune_thresholds

        return tune_thresholds(sigmoid(logits), indicator(gold, labels))

    def baseline(self, examples: dict[str, Sequence[Any]], labels: list[str], language: str) -> dict[str, Any]:
        from distill.report.baseline import multilabel_baseline

        texts, gold = split_texts(examples), split_labels(examples)
        return multilabel_baseline(
            texts["train"], gold["train"], texts["test"], gold["test"], labels, language, texts["dev"], gold["dev"]
        )


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function, stable for large |z|."""
    z = np.asarray(logits, dtype=np.float64)
    return np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))


def indicator(label_sets: Sequence[Label], labels: list[str]) -> np.ndarray:
    """(rows, labels) 0/1 matrix; names outside `labels` are ignored (they count as misses)."""
    column = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(label_sets), len(labels)), dtype=np.int64)
    for row, names in enumerate(label_sets):
        for name in names:
            if name in column:
                matrix[row, column[name]] = 1
    return matrix


def _label_set(names: Sequence[object]) -> tuple[str, ...]:
    cleaned = [name.strip() if isinstance(name, str) else name for name in names]
    if any(not isinstance(name, str) or not name for name in cleaned):
        raise ValueError(f"label names must be non-empty strings, got {json.dumps(list(names), ensure_ascii=False)}")
    return tuple(sorted(set(cleaned)))


def _thresholds(thresholds: Sequence[float] | None, labels: list[str]) -> list[float]:
    if thresholds is None:
        return [0.5] * len(labels)
    if len(thresholds) != len(labels):
        raise ValueError(f"{len(thresholds)} thresholds for {len(labels)} labels")
    return list(thresholds)


