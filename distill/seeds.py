"""A run's students again under other student seeds, on the run's own split and teacher.

One seed cannot tell a gain from noise: a student's accuracy moves by about a point from one
seed to the next on a few thousand test texts. A repeat is its own run directory that links
the base run's `data/`, `teacher/` (and `mlm/`, `cache/`) and copies their `done/` markers, so
the pipeline skips those stages; their config hashes are checked first, so a base recipe
edited since its run fails instead of training a new teacher. A teacher variant (`[teacher]
seed`, other fine-tuning settings) requires only the split and links the teacher where it
matches. A seed is `[student] seed`: it changes the students' initial weights and training
order, never the split or the teacher.
`tools/ablate.py` repeats variants of the student path; the report stage (`[report] seeds`)
repeats the recipe's own.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.data.datasets import Example
from distill.errors import UserError
from distill.export.runtime import TRANSFORMER_KIND
from distill.pipeline import STUDENT_STAGES, Run, stage_hashes
from distill.recipe import Recipe, parse_recipe
from distill.report.stats import (
    mean_std,
    pooled_interval,
    pooled_paired_bootstrap,
    pooled_statistic_bootstrap,
    significant,
)
from distill.stages.run_models import TWIN_DIR, RunModel, torch_predictions
from distill.tasks import Label, TaskFamily, family

CLASSIFICATION = family("classification")

SHARED_STAGES = ("prepare", "pretrain", "finetune")  # done once in the base run
# each shared stage's artifacts; the caches (teacher labels of augmented texts) travel with the teacher
SHARED_ARTIFACTS = {"prepare": ("data",), "pretrain": ("mlm",), "finetune": ("teacher", "cache")}
TWIN_NAME = "twin"  # the transformer student's gold-only twin among a run's models


def _laid_over(table: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """`table` with `settings` laid over it, nested tables key by key: a variant that adds one
    augment key keeps the recipe's (or the command line's) other augment keys."""
    merged = dict(table)
    for key, value in settings.items():
        below = merged.get(key)
        merged[key] = _laid_over(below, value) if isinstance(value, dict) and isinstance(below, dict) else value
    return merged


def seeded_recipe(
    base: Recipe,
    seed: int,
    out_dir: Path,
    name: str,
    stages: dict[str, dict[str, Any]] | None = None,
    teacher_seed: int | None = None,
    student: dict[str, Any] | None = None,
) -> Recipe:
    """The base recipe with [student] seed = `seed`, its own run name, and no export or report.

    `stages` (stage -> settings laid over the base recipe's table) replaces the student path:
    only those student stages run, and data distillation only when listed. None keeps the
    recipe's own student stages and data distillation. `teacher_seed` sets [teacher] seed, for a
    teacher fine-tuned again on the base run's split (`stages` then names finetune). `student`
    is laid over the [student] table (another shape or init of the transformer student).
    """
    data = base.model_dump(mode="json", exclude_none=True)
    if stages is not None:
        for stage in STUDENT_STAGES:
            data["stages"].pop(stage, None)
        if "data_distill" in data["stages"]:
            data["stages"]["data_distill"]["enabled"] = False  # its augment settings still shape TAD's texts
        for stage, settings in stages.items():
            table = getattr(base.stages, stage)
            own = table.model_dump(mode="json", exclude_none=True) if table is not None else {}
            data["stages"][stage] = {**_laid_over(own, settings), "enabled": True}
    data["student"] = {**_laid_over(data["student"], student or {}), "seed": seed}
    if teacher_seed is not None:
        data["teacher"]["seed"] = teacher_seed
    data["run"].update(name=name, out_dir=str(out_dir))
    data["export"]["enabled"] = False
    data["report"]["enabled"] = False
    return parse_recipe(data, f"{name} (seed {seed})")


def shared_hashes(recipe: Recipe) -> dict[str, str]:
    """The config hashes the pipeline expects for the shared stages."""
    return {name: digest for name, digest in stage_hashes(recipe).items() if name in SHARED_STAGES}


def link_base_run(base_dir: Path, run_dir: Path, recipe: Recipe, required: Sequence[str] = SHARED_STAGES) -> None:
    """Give `run_dir` the base run's split and teacher, marked done with hashes the repeat matches.

    Every stage in `required` must be done in the base run with the recipe's hash; another shared
    stage (a teacher fine-tuned again, say) is linked only where its hash matches the base run's,
    so a variant with other fine-tuning settings trains its own teacher and its own caches.
    """
    (run_dir / "done").mkdir(parents=True, exist_ok=True)
    linked = []
    for name, expected in shared_hashes(recipe).items():
        marker = base_dir / "done" / f"{name}.json"
        made = json.loads(marker.read_text(encoding="utf-8"))["config_hash"] if marker.is_file() else None
        if name in required and made is None:
            raise UserError(
                f"the base run has not finished the '{name}' stage",
                str(base_dir),
                f"run `distill run RECIPE --stages {','.join(n for n in shared_hashes(recipe) if n in required)}` first",
            )
        if name in required and made != expected:
            raise UserError(
                f"the base run's '{name}' stage was made with other settings than the recipe has now",
                str(base_dir),
                "rerun the base recipe's shared stages, or restore the recipe they were made with",
            )
        if made == expected:
            shutil.copy2(marker, run_dir / "done" / marker.name)
            linked.append(name)
    for artifact in (artifact for stage in linked for artifact in SHARED_ARTIFACTS[stage]):
        if (base_dir / artifact).exists() and not (run_dir / artifact).exists():
            os.symlink((base_dir / artifact).resolve(), run_dir / artifact, target_is_directory=True)


def run_repeat(base: Run, recipe: Recipe, required: Sequence[str] = SHARED_STAGES) -> tuple[Run, dict[str, Any]]:
    """Run `recipe` on the base run's split and teacher (its done stages are skipped on a rerun)."""
    run = Run(recipe)
    link_base_run(base.dir, run.dir, recipe, required)
    return run, run.execute()


def trained_students(run: Run) -> list[RunModel]:
    """The students a run trained: the transformer student (and its gold-only twin), word-level ones
    (those of a recipe's data distillation that has not run yet are left out)."""
    models = []
    if (run.dir / "student" / "metrics.json").is_file():
        models.append(RunModel("student", TRANSFORMER_KIND, "student", run.dir / "student"))
        if (run.dir / "student" / TWIN_DIR).is_dir():
            models.append(RunModel(TWIN_NAME, TRANSFORMER_KIND, "student", run.dir / "student" / TWIN_DIR))
    section = run.recipe.stages.data_distill
    if run.recipe.stage_enabled("data_distill"):
        models += [RunModel(kind, kind, "student", run.dir / "shallow" / kind) for kind in section.students if (run.dir / "shallow" / kind).is_dir()]
    return models


@dataclass(frozen=True)
class SeedRun:
    """One model at one seed: its test figures and its test predictions."""

    figures: dict[str, Any]  # seed, the task's metrics (accuracy, macro_f1, ...), agreement (with the teacher)
    predictions: list[Label]  # the decision per test example, in split order


def seed_run(run: Run, model: RunModel, seed: int, teacher_predictions: list[Label]) -> SeedRun:
    """A trained model's test metrics and its torch decisions on the test split.

    The metrics are computed from those decisions (a multi-label model's at thresholds tuned on
    dev, as exported), not read from the stage's metrics.json, so every figure and paired test
    agrees with the same decisions.
    """
    data = run.data()
    family = data.family
    predictions = torch_predictions(run, model, data.test)
    metrics = family.score([e.label for e in data.test], predictions, data.labels)
    figures = {"seed": seed, **{name: metrics[name] for name in family.metrics}}
    figures["agreement"] = family.agreement(teacher_predictions, predictions)
    return SeedRun(figures, predictions)


def summary(runs: list[SeedRun], keys: tuple[str, ...] = ("accuracy", "macro_f1", "agreement")) -> dict[str, Any]:
    """The seeds, and mean and standard deviation over them of each figure in `keys`."""
    result: dict[str, Any] = {"seeds": [run.figures["seed"] for run in runs]}
    for key in keys:
        result[f"{key}_mean"], result[f"{key}_std"] = mean_std([run.figures[key] for run in runs])
    return result


def correctness(predictions: Sequence[str], examples: Sequence[Example]) -> list[bool]:
    """Whether each predicted label is the example's gold label (the paired tests' input)."""
    return [label == example.label for label, example in zip(predictions, examples, strict=True)]


def versus(
    runs: list[SeedRun], reference: list[SeedRun], test: list[Example], seed: int, family: TaskFamily | None = None
) -> dict[str, Any]:
    """Difference in the primary metric (accuracy unless `family` says otherwise) to a reference
    model trained at the same seeds on the same test texts.

    Per seed: paired bootstrap interval (and exact McNemar p where the family has it). Pooled:
    the mean difference over seeds with a bootstrap interval over seeds and texts (over texts for
    one seed), named under "interval"; significant only when it excludes zero.
    """
    family = family or CLASSIFICATION
    gold = [e.label for e in test]
    per_seed = [
        {"seed": run.figures["seed"], **family.paired(gold, run.predictions, other.predictions, seed)}
        for run, other in zip(runs, reference, strict=True)
    ]
    if family is CLASSIFICATION:  # accuracy is a mean over texts: the same interval as every earlier table
        correct = [correctness(r.predictions, test) for r in runs], [correctness(r.predictions, test) for r in reference]
        diff, low, high = pooled_paired_bootstrap(*correct, seed=seed)
    else:
        rows = [family.paired_rows(gold, r.predictions) for r in runs], [family.paired_rows(gold, r.predictions) for r in reference]
        diff, low, high = pooled_statistic_bootstrap(family.statistic, *rows, seed=seed)
    pooled = {"diff": diff, "low": low, "high": high, "interval": pooled_interval(len(runs)), "significant": significant(low, high)}
    return {"pooled": pooled, "per_seed": per_seed}
