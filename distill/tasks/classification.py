"""Single-label classification: one class name per text, softmax over the classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from distill.errors import UserError
from distill.tasks.base import Label, TaskFamily, split_labels, split_texts


class Classification(TaskFamily):
    name = "classification"
    metrics = ("accuracy", "macro_f1")
    agreement_means = "share of test texts with the same label"
    right_means = "a text is right when its label is the gold one"

    def read_label(self, value: object, task: Any) -> str:
        return str(value).strip()

    def from_json(self, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError('"label" must be a class name (a string)')
        return value

    def names_in(self, label: Label) -> tuple[str, ...]:
        return (label,)

    def label_names(self, train: Sequence[Label]) -> list[str]:
        return sorted(set(train))

    def check(self, labels: list[str], splits: dict[str, Sequence[Label]], where: str) -> None:
        if len(labels) < 2:
            raise UserError(
                f"the label column has a single class ({labels[0] if labels else 'none'})",
                where,
                "a classifier needs at least two labels; check [task] label_column",
            )
        self.refuse_unseen(labels, splits, where, "every label must occur in the training data")

    def targets(self, examples_labels: Sequence[Label], labels: list[str]) -> list[int]:
        index = {label: i for i, label in enumerate(labels)}
        return [index[label] for label in examples_labels]

    def hard_loss(self, logits, targets, label_smoothing: float = 0.0):
        from distill.losses import hard_label_loss

        return hard_label_loss(logits, targets, label_smoothing)

    def soft_loss(self, student_logits, teacher_logits, temperature: float):
        from distill.losses import soft_label_loss

        return soft_label_loss(student_logits, teacher_logits, temperature)

    def teacher_targets(self, teacher_logits) -> list[int]:
        return teacher_logits.argmax(dim=-1).tolist()

    def decide(self, logits: np.ndarray, labels: list[str], thresholds: Sequence[float] | None = None) -> list[str]:
        """argmax; a binary task with tuned thresholds [1 - t, t] picks the second label where its
        probability is at least t."""
        if thresholds is None:
            return [labels[index] for index in np.asarray(logits).argmax(axis=-1)]
        second = self.probabilities(logits)[:, 1] >= thresholds[1]
        return [labels[1] if chosen else labels[0] for chosen in second]

    def tunes_thresholds(self, labels: list[str]) -> bool:
        return len(labels) == 2

    def tune_thresholds(self, logits: np.ndarray, gold: Sequence[Label], labels: list[str]) -> list[float] | None:
        """For a binary task, the cut-off on the second label's probability that maximises dev
        accuracy (ties: closest to 0.5), stored as [1 - t, t]; None with three or more labels."""
        from distill.tasks.thresholds import accuracy, tune_thresholds

        if not self.tunes_thresholds(labels):
            return None
        second = self.probabilities(logits)[:, 1:]  # (rows, 1)
        (cut,) = tune_thresholds(second, np.array([[label == labels[1]] for label in gold], dtype=int), score=accuracy)
        return [round(1 - cut, 10), cut]

    def score(self, gold: Sequence[Label], predicted: Sequence[Label], labels: list[str]) -> dict[str, Any]:
        from distill.report.evaluate import classification_metrics

        index = {label: i for i, label in enumerate(labels)}
        return classification_metrics([index[g] for g in gold], [index.get(p, -1) for p in predicted], labels)

    def paired_rows(self, gold: Sequence[Label], predicted: Sequence[Label]) -> np.ndarray:
        return np.asarray(_correct(gold, predicted), dtype=float)[:, None]

    def statistic(self, rows: np.ndarray) -> np.ndarray:
        return rows[..., 0].mean(axis=-1)  # accuracy

    def exactly_right(self, gold: Sequence[Label], predicted: Sequence[Label]) -> list[bool]:
        return _correct(gold, predicted)

    def paired(self, gold: Sequence[Label], a: Sequence[Label], b: Sequence[Label], seed: int) -> dict[str, float]:
        """Accuracy is a mean over rows, so the interval is scipy's bootstrap of the mean difference."""
        from distill.report.stats import paired_comparison

        return paired_comparison(_correct(gold, a), _correct(gold, b), seed)

    def agreement(self, a: Sequence[Label], b: Sequence[Label]) -> float:
        from distill.report.stats import agreement

        return agreement(a, b)

    def output(self, logits: np.ndarray, labels: list[str], thresholds: Sequence[float] | None = None) -> list[dict[str, Any]]:
        chosen = self.decide(logits, labels, thresholds)
        return [
            {"label": label, "probabilities": {name: float(p) for name, p in zip(labels, row, strict=True)}}
            for label, row in zip(chosen, self.probabilities(logits))
        ]

    def baseline(self, examples: dict[str, Sequence[Any]], labels: list[str], language: str) -> dict[str, Any]:
        from distill.report.baseline import tfidf_baseline

        texts, gold = split_texts(examples), split_labels(examples)
        return tfidf_baseline(texts["train"], gold["train"], texts["test"], gold["test"], language, texts["dev"], gold["dev"])


def _correct(gold: Sequence[Label], predicted: Sequence[Label]) -> list[bool]:
    return [p == g for p, g in zip(predicted, gold, strict=True)]
