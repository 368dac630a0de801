"""A teacher ensemble: several fine-tuned teachers whose combined outputs teach the students.

The finetune stage fine-tunes each member into `teacher/members/NAME/` (resumable member by
member) and writes `teacher/ensemble.json`, which names the members, their weights, how their
outputs combine and the member the single-teacher parts use. Every stage that reads the
teacher's *outputs* (TSD's soft labels, data distillation's teacher labels) combines the
members' logits; everything that needs *one* model (attention relations, the student's
initial layers, the export and timing of the teacher) uses the relation member, the best on
dev unless the recipe names another, so `Run.teacher_dir()` returns that member's directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.recipe import Recipe
from distill.tasks.base import TaskFamily

ENSEMBLE_FILE = "ensemble.json"
MEMBERS_DIR = "members"


@dataclass(frozen=True)
class Member:
    """One teacher of the ensemble: fine-tuned from `source` with `seed`."""

    name: str
    source: str
    seed: int


def planned_members(recipe: Recipe) -> list[Member]:
    """The members the recipe asks for, in member order (each model, then each of its seeds)."""
    settings = recipe.teacher.ensemble
    if settings is None:
        return []
    sources = settings.sources(recipe.teacher.model)
    return [
        Member(f"member-{number}", source, recipe.teacher_seed() + (number - 1) % settings.seeds)
        for number, source in enumerate(sources, start=1)
    ]


@dataclass(frozen=True)
class Ensemble:
    """A finished ensemble as `ensemble.json` describes it."""

    directory: Path  # the teacher directory holding ensemble.json and members/
    members: list[str]
    weights: list[float]  # normalised to sum 1
    combine: str  # "probabilities" or "logits"
    relation_member: str

    def member_dir(self, name: str) -> Path:
        return self.directory / MEMBERS_DIR / name

    def member_dirs(self) -> list[Path]:
        return [self.member_dir(name) for name in self.members]

    def combined(self, family: TaskFamily, logits_of: Callable[[Path], np.ndarray]) -> np.ndarray:
        """The ensemble's logits: `logits_of(member_dir)` for every member, combined."""
        return combine_logits(family, [logits_of(path) for path in self.member_dirs()], self.weights, self.combine)


def write_ensemble(directory: Path, members: Sequence[Member], weights: Sequence[float] | None, combine: str,
                   relation_member: str, details: dict[str, Any]) -> Ensemble:
    """ensemble.json in `directory` (weights normalised; equal when None)."""
    raw = list(weights) if weights is not None else [1.0] * len(members)
    total = sum(raw)
    ensemble = Ensemble(directory, [m.name for m in members], [w / total for w in raw], combine, relation_member)
    record = {
        "members": [{"name": m.name, "source": m.source, "seed": m.seed, **details.get(m.name, {})} for m in members],
        "weights": ensemble.weights,
        "combine": combine,
        "relation_member": relation_member,
    }
    (directory / ENSEMBLE_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return ensemble


def read_ensemble(directory: Path) -> Ensemble | None:
    """The ensemble a teacher directory holds, or None for a single teacher."""
    path = directory / ENSEMBLE_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    names = [member["name"] for member in record["members"]]
    return Ensemble(directory, names, record["weights"], record["combine"], record["relation_member"])


def combine_logits(
    family: TaskFamily, member_logits: Sequence[np.ndarray], weights: Sequence[float], how: str
) -> np.ndarray:
    """The weighted mean of the members' outputs, as logits the family's losses and decisions read.

    "logits": the mean of the logits (at a distillation temperature τ the soft labels are then
    softmax(mean / τ)). "probabilities": the mean of the family's probabilities, mapped back to
    logits (log for softmax families, so softmax returns the mean exactly; logit for sigmoid
    labels; a score stays a score). Per-word outputs of different lengths are NaN-padded first.
    """
    if len(member_logits) != len(weights):
        raise ValueError(f"{len(member_logits)} members' logits but {len(weights)} weights")
    arrays = _same_shape([np.asarray(logits, dtype=np.float64) for logits in member_logits])
    weights_ = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    if how == "logits":
        return np.tensordot(weights_, np.stack(arrays), axes=1).astype(np.float32)
    if how == "probabilities":
        mean = np.tensordot(weights_, np.stack([family.probabilities(a) for a in arrays]), axes=1)
        return family.logits_from_probabilities(mean).astype(np.float32)
    raise ValueError(f"unknown combination {how!r}: expected probabilities or logits")


def _same_shape(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Per-word arrays (rows, words, C) NaN-padded to the most words; others must already agree."""
    if arrays[0].ndim == 3:
        words = max(a.shape[1] for a in arrays)
        arrays = [np.pad(a, ((0, 0), (0, words - a.shape[1]), (0, 0)), constant_values=np.nan) for a in arrays]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"members' outputs differ in shape: {sorted({a.shape for a in arrays})}")
    return arrays
