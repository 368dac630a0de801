"""Regression: one number per text or text pair (e.g. a similarity score), one linear output.

Pearson correlation with the gold scores is the primary metric, Spearman's rank correlation
the second: a student is judged by how well it orders and scales scores, not by their offset.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from distill.errors import UserError
from distill.tasks.base import Label, TaskFamily, split_labels, split_texts

SCORE = "score"  # the single output column's name (labels.json)


class Regression(TaskFamily):
    name = "regression"
    metrics = ("pearson", "spearman")
    metric_minimum = -1.0
    agreement_means = "Pearson correlation of the scores"

    def read_label(self, value: object, task: Any) -> float:
        """A finite number, inside `[task] target_range` when the recipe declares one."""
        try:
            score = float(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"target {value!r} is not a number") from None
        if not math.isfinite(score):
            raise ValueError(f"target {value!r} is not a finite number")
        bounds = task.target_range
        if bounds is not None and not bounds[0] <= score <= bounds[1]:
            raise ValueError(f"target {score} is outside [task] target_range [{bounds[0]}, {bounds[1]}]")
        return score

    def from_json(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError('"label" must be a finite number')
        return float(value)

    def is_empty(self, label: Label) -> bool:
        return False

    def stratum(self, label: Label) -> Hashable:
        return None  # one group: every score is its own value, so the split is a seeded shuffle

    def label_counts(self, labels: Sequence[Label]) -> dict[str, float]:
        """The scores' mean, minimum and maximum."""
        return {"mean": sum(labels) / len(labels), "min": min(labels), "max": max(labels)} if labels else {}

    def label_names(self, train: Sequence[Label]) -> list[str]:
        return [SCORE]

    def outputs(self, labels: list[str]) -> int:
        return 1

    def check(self, labels: list[str], splits: dict[str, Sequence[Label]], where: str) -> None:
        if len(set(splits["train"])) < 2:
            raise UserError("every training row has the same target", where, "a regressor needs targets that vary")

    def targets(self, examples_labels: Sequence[Label], labels: list[str]) -> list[float]:
        return [float(score) for score in examples_labels]

    def hard_loss(self, logits, targets, label_smoothing: float = 0.0):
        from distill.losses import regression_loss

        return regression_loss(logits, targets)

    def soft_loss(self, student_logits, teacher_logits, temperature: float):
        from distill.losses import regression_loss

        return regression_loss(student_logits, teacher_logits)  # a score has no temperature

    def teacher_targets(self, teacher_logits) -> list[float]:
        return teacher_logits.reshape(-1).tolist()

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """A score has no probabilities: an ensemble averages the scores themselves."""
        return np.asarray(logits, dtype=np.float64)

    def logits_from_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        return probabilities

    def decide(self, logits: np.ndarray, labels: list[str], thresholds: Sequence[float] | None = None) -> list[float]:
        return [float(score) for score in np.asarray(logits).reshape(len(logits), -1)[:, 0]]

    def score(self, gold: Sequence[Label], predicted: Sequence[Label], labels: list[str]) -> dict[str, Any]:
        y_true, y_pred = np.asarray(gold, dtype=float), np.asarray(predicted, dtype=float)
        return {
            "pearson": _correlation(y_pred, y_true, rank=False),
            "spearman": _correlation(y_pred, y_true, rank=True),
            "mse": float(np.mean((y_pred - y_true) ** 2)),
        }

    def paired_rows(self, gold: Sequence[Label], predicted: Sequence[Label]) -> np.ndarray:
        """Per row: prediction and gold score, (rows, 2); no exact test exists for a correlation."""
        return np.stack([np.asarray(predicted, dtype=float), np.asarray(gold, dtype=float)], axis=1)

    def statistic(self, rows: np.ndarray) -> np.ndarray:
        return _pearson_rows(rows)

    def agreement(self, a: Sequence[Label], b: Sequence[Label]) -> float:
        return _correlation(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rank=False)

    def output(self, logits: np.ndarray, labels: list[str], thresholds: Sequence[float] | None = None) -> list[dict[str, Any]]:
        return [{SCORE: score} for score in self.decide(logits, labels)]

    def baseline(self, examples: dict[str, Sequence[Any]], labels: list[str], language: str) -> dict[str, Any]:
        from distill.report.baseline import regression_baseline

        texts, gold = split_texts(examples), split_labels(examples)
        return regression_baseline(texts["train"], gold["train"], texts["test"], gold["test"], language, texts["dev"], gold["dev"])


def _correlation(x: np.ndarray, y: np.ndarray, rank: bool) -> float:
    """Pearson (or Spearman) correlation; 0 when either side is constant (no linear relation to find)."""
    from scipy import stats

    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    value = (stats.spearmanr if rank else stats.pearsonr)(x, y)[0]
    return float(value)


def _pearson_rows(rows: np.ndarray) -> np.ndarray:
    """Pearson correlation of column 0 with column 1 over the rows axis of (..., rows, 2); 0 if constant."""
    centred = rows - rows.mean(axis=-2, keepdims=True)
    x, y = centred[..., 0], centred[..., 1]
    denominator = np.sqrt((x**2).sum(-1) * (y**2).sum(-1))
    return np.divide((x * y).sum(-1), denominator, out=np.zeros_like(denominator), where=denominator > 0)
