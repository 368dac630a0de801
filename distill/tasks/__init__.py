"""Task families: what each kind of task (single-label, multi-label, regression, token
classification) means for every stage.

`family(name)` is the only place that maps `[task] type` to its family; see base.TaskFamily for
the questions a family answers.
"""

from __future__ import annotations

from distill.tasks.base import Label, TaskFamily
from distill.tasks.classification import Classification
from distill.tasks.multi_label import MultiLabel
from distill.tasks.regression import Regression
from distill.tasks.token_classification import TokenClassification

FAMILIES: dict[str, TaskFamily] = {f.name: f for f in (Classification(), MultiLabel(), Regression(), TokenClassification())}
TASK_TYPES = tuple(FAMILIES)

__all__ = ["FAMILIES", "TASK_TYPES", "Label", "TaskFamily", "family"]


def family(name: str) -> TaskFamily:
    """The family of a `[task] type` (the recipe model has already checked the name)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown task type {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]
