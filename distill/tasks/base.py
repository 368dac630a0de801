"""The questions every stage asks of a task, answered once per task family.

A family says what a label is (a class name, a set of names, a number), how a model's outputs
become a decision, which losses train it, which metrics judge it (primary first), how two
models are compared on the same examples, and which cheap baseline it must beat. Stages ask
`data.family`; none of them tests the task's type.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

    from distill.data.augment import Augmenter
    from distill.data.datasets import Example
    from distill.recipe import TaskSection

Label = Any  # str (single-label), tuple[str, ...] (multi-label) or float (regression)


class TaskFamily(ABC):
    """One kind of task; instances are stateless, so the registry holds one of each."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]  # the report's metric keys, primary first
    metric_minimum: ClassVar[float] = 0.0  # the lowest value a metric (and agreement) can take
    head: ClassVar[str] = "sequence"  # a transformer's head: one output row per text ("token": per token)
    rows_name: ClassVar[str] = "texts"  # what a test row is, as the report names it
    agreement_means: ClassVar[str]  # what `agreement` measures, as the report states it
    # when `exactly_right` counts a row as right, as the report states McNemar's input (None: no such notion)
    right_means: ClassVar[str | None] = None

    @property
    def primary(self) -> str:
        """The metric that early stopping, retention and the recommendation follow."""
        return self.metrics[0]

    # ------------------------------------------------------------------ data

    @abstractmethod
    def read_label(self, value: object, task: TaskSection) -> Label:
        """A label from a data file's cell (CSV string or JSON value); ValueError says what is wrong."""

    @abstractmethod
    def from_json(self, value: object) -> Label:
        """A label as the prepared `data/*.jsonl` files store it; ValueError when it is not one."""

    def to_json(self, label: Label) -> object:
        return label

    @abstractmethod
    def label_names(self, train: Sequence[Label]) -> list[str]:
        """`labels.json`: the names of the model's output columns."""

    @abstractmethod
    def check(self, labels: list[str], splits: dict[str, Sequence[Label]], where: str) -> None:
        """Refuse data a model of this family cannot learn from or be scored on (UserError)."""

    def names_in(self, label: Label) -> tuple[str, ...]:
        """The label names a label mentions (each must be in labels.json)."""
        return ()

    def refuse_unseen(self, labels: list[str], splits: dict[str, Sequence[Label]], where: str, fix: str) -> None:
        """A dev or test label name that training never shows cannot be learnt: UserError."""
        from distill.errors import UserError

        known = set(labels)
        for name in ("dev", "test"):
            unknown = sorted({n for label in splits[name] for n in self.names_in(label)} - known)
            if unknown:
                raise UserError(f"{name} data has labels absent from training: {', '.join(unknown[:5])}", where, fix)

    def is_empty(self, label: Label) -> bool:
        """A row that carries no label at all (dropped when cleaning)."""
        return label == ""

    def stratum(self, label: Label) -> Hashable:
        """The group a seeded split keeps in proportion."""
        return label

    def label_counts(self, labels: Sequence[Label]) -> dict[str, float]:
        """prepare's summary of a split's labels: rows per label."""
        return dict(sorted(Counter(labels).items()))

    def outputs(self, labels: list[str]) -> int:
        """Width of the model's output layer."""
        return len(labels)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """The outputs as probabilities (softmax over the last axis; NaN rows stay NaN): what a
        teacher ensemble averages."""
        from distill.export.runtime import softmax

        return softmax(np.asarray(logits, dtype=np.float64))

    def logits_from_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """Logits whose `probabilities` are the given ones (softmax ignores log's missing constant)."""
        return np.log(np.clip(probabilities, 1e-12, 1.0))

    def manifest_fields(self, task: TaskSection) -> dict[str, Any]:
        """What an exported model's manifest adds so that its predictor reads raw text as the
        run's data did (token classification: how text splits into tokens)."""
        return {}

    @abstractmethod
    def targets(self, examples_labels: Sequence[Label], labels: list[str]) -> list:
        """Training targets, one per row, in the form `hard_loss` reads (collated with torch.as_tensor)."""

    def augment(self, augmenter: Augmenter, train: Sequence[Example], exclude: Sequence[Example]) -> list[Example]:
        """Data distillation's new rows, made by `augmenter` from the training texts: unlabelled
        (label None; the teacher labels them), none equal to a training, dev or test text."""
        from distill.data.datasets import Example

        texts = [example.text for example in train]
        made = augmenter.fit(texts).augment(texts, exclude=[example.text for example in exclude])
        return [Example(text, None) for text in made]

    # ------------------------------------------------------------------ losses

    @abstractmethod
    def hard_loss(self, logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """Loss against gold (or teacher-decided) targets, batch mean."""

    @abstractmethod
    def soft_loss(self, student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
        """Loss pulling the student's outputs towards the teacher's, batch mean."""

    @abstractmethod
    def teacher_targets(self, teacher_logits: Tensor) -> list:
        """Hard targets decided from the teacher's outputs (for augmented texts without gold)."""

    # ------------------------------------------------------------------ decisions and metrics

    @abstractmethod
    def decide(self, logits: np.ndarray, labels: list[str], thresholds: Sequence[float] | None = None) -> list[Label]:
        """The model's decision per row, comparable with the gold labels."""

    @abstractmethod
    def score(self, gold: Sequence[Label], predicted: Sequence[Label], labels: list[str]) -> dict[str, Any]:
        """Every metric in `metrics` (plus details such as per-label F1), from decisions."""

    @abstractmethod
    def paired_rows(self, gold: Sequence[Label], predicted: Sequence[Label]) -> np.ndarray:
        """(rows, k) per-row values from which `statistic` computes the primary metric."""

    @abstractmethod
    def statistic(self, rows: np.ndarray) -> np.ndarray:
        """The primary metric from (..., rows, k) `paired_rows`, one value per leading index."""

    def exactly_right(self, gold: Sequence[Label], predicted: Sequence[Label]) -> list[bool] | None:
        """Per row, whether the decision is wholly right (McNemar's input); None when no such notion fits."""
        return None

    def paired(self, gold: Sequence[Label], a: Sequence[Label], b: Sequence[Label], seed: int) -> dict[str, float]:
        """Primary metric of a minus that of b on the same rows: diff, low, high of a bootstrap over
        rows, and McNemar's exact p on wholly right rows where the family has them."""
        from distill.report.stats import mcnemar_exact, paired_statistic_bootstrap

        diff, low, high = paired_statistic_bootstrap(self.statistic, self.paired_rows(gold, a), self.paired_rows(gold, b), seed=seed)
        result = {"diff": diff, "low": low, "high": high}
        right_a, right_b = self.exactly_right(gold, a), self.exactly_right(gold, b)
        if right_a is not None and right_b is not None:
            result["p_value"] = mcnemar_exact(right_a, right_b)
        return result

    def report_details(self, scores: dict[str, Any]) -> dict[str, Any]:
        """What the report keeps of a model's `score` beside `metrics`, for every model and the
        baseline alike (token classification: per entity type precision, recall, F1 and support)."""
        return {}

    @abstractmethod
    def agreement(self, a: Sequence[Label], b: Sequence[Label]) -> float:
        """How closely two models' decisions match (fidelity of a student to its teacher)."""

    @abstractmethod
    def output(self, logits: np.ndarray, labels: list[str], thresholds: Sequence[float] | None = None) -> list[dict[str, Any]]:
        """What `predict` and `serve` return for each row of (rows, outputs) logits."""

    def tunes_thresholds(self, labels: list[str]) -> bool:
        """Whether decisions follow thresholds chosen on dev (multi-label; binary single-label)."""
        return False

    def tune_thresholds(self, logits: np.ndarray, gold: Sequence[Label], labels: list[str]) -> list[float] | None:
        """Decision thresholds chosen on dev, or None when the family decides without them."""
        return None

    # ------------------------------------------------------------------ baseline

    @abstractmethod
    def baseline(self, examples: dict[str, Sequence[Any]], labels: list[str], language: str) -> dict[str, Any]:
        """A cheap model on `examples` (train, dev for its setting, test for its metrics)."""


def split_texts(examples: dict[str, Sequence[Any]]) -> dict[str, list[str]]:
    """Each split's texts, a pair joined to its text with a space (how one-text readers see it)."""
    return {split: [example.joined for example in rows] for split, rows in examples.items()}


def split_labels(examples: dict[str, Sequence[Any]]) -> dict[str, list[Label]]:
    return {split: [example.label for example in rows] for split, rows in examples.items()}
