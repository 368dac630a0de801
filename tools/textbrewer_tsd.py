"""The task-specific stage's time against TextBrewer's distiller doing the same work, in one process.

    pip install textbrewer tensorboard      # the baseline's packages; distill itself never imports them
    distill run recipes/tiny.toml --stages prepare,finetune,task_adaptive    # once: split, teacher, TAD student
    python tools/textbrewer_tsd.py recipes/tiny.toml --epochs 2 --repeats 2 [--fast] --out results/textbrewer-tiny.json

Every arm starts from the run's TAD student and its fine-tuned teacher and reads the same training
rows, encoded by distill (teacher ids, looked up in a pruned student's vocabulary), in batches of the
stage's size for `--epochs` epochs: AdamW with distill's parameter groups at the stage's learning
rate and weight decay, the stage's schedule and warm-up, gradient clipping at its norm, soft labels
at its temperature plus gold labels at its weights, fp32, an evaluation on dev and a checkpoint
after every epoch.

- `distill`: the `task_specific` stage itself, run in a scratch run directory beside the run
  (early stopping and the gold-only twin off), which runs the teacher once over the training set
  and reads its cached logits. Timed: its training loop plus that teacher pass (from the stage's
  metrics), and the whole stage with loading, final scoring and saving.
- `distill bf16+grouped` (with `--fast`): the same stage with distill's two speed switches on,
  `precision = "bf16"` (the teacher pass too) and `group_by_length = true`: the same rows, epochs
  and losses in a different numeric precision and batch composition, so its dev figure says
  whether they cost accuracy. The JSON records whether this CPU ran bf16 or fell back to fp32.
- `textbrewer live`: TextBrewer's BasicDistiller as its examples use it, the teacher forward at
  every step.
- `textbrewer cached`: the same with TextBrewer's own `is_caching_logits`, which runs the teacher
  once but also freezes each batch's rows for all epochs (only their order is shuffled).

TextBrewer's soft loss is cross-entropy at τ without the τ² factor that distill's KL carries; its
weight is multiplied by τ² so that both train with the same gradients. The arms alternate
`--repeats` times so that other load on the machine slows all alike. The JSON gives every repeat's
seconds and dev figure per arm, the medians, distill's time as a share of each baseline's, the
machine's load average, the commit and the resolved recipe.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import torch
from torch import nn
from torch.utils.data import DataLoader

from distill import provenance
from distill.pipeline import STAGES, Run
from distill.recipe import STAGE_ORDER, Recipe, load_recipe, parse_recipe
from distill.stages.common import dev_evaluator, student_seed, task_dataset
from distill.stages.distillation import TeacherStudent, fine_tuned_teacher, teacher_and_student
from distill.train.loop import autocast_dtype, seed_everything
from distill.train.optim import build_optimizer, build_scheduler

UPSTREAM = STAGE_ORDER[: STAGE_ORDER.index("task_specific")]  # the stages whose outputs TSD may read
FAST_ARM = "distill bf16+grouped"


def equal_work_recipe(base: Recipe, epochs: int) -> Recipe:
    """The base recipe with a TSD of exactly `epochs` epochs on random batches in fp32: no early
    stop, twin, adversarial step or weight average, the soft and gold terms only (what TextBrewer's
    BasicDistiller computes)."""
    changes = dict(
        epochs=epochs, baseline_twin=False, precision="fp32", group_by_length=False, relation_weight=0.0,
        adversarial="none", label_smoothing=0.0,
    )
    unset = ("early_stop_patience", "max_steps", "eval_every", "mixup_alpha", "rdrop_alpha", "ema", "swa_start")
    return with_task_specific(base, changes, unset)


def fast_recipe(equal: Recipe) -> Recipe:
    """The equal-work recipe with distill's speed switches on: bf16 autocast and length-grouped batches."""
    return with_task_specific(equal, {"precision": "bf16", "group_by_length": True})


def with_task_specific(base: Recipe, changes: dict[str, Any], unset: tuple[str, ...] = ()) -> Recipe:
    """A validated copy of `base` whose `[stages.task_specific]` takes `changes` and drops `unset`."""
    data = base.model_dump(mode="json", exclude_none=True)
    section = data["stages"]["task_specific"]
    section.update(changes)
    for key in unset:
        section.pop(key, None)
    recipe = parse_recipe(data)
    recipe.source = base.source
    return recipe


def scratch_run(run: Run, recipe: Recipe, scratch: Path) -> Run:
    """A run directory in `scratch` that shares `run`'s finished upstream outputs (linked, not
    copied) and their done markers, so that only the task-specific stage is left to run."""
    copy = parse_recipe(recipe.model_dump(mode="json", exclude_none=True))
    copy.run.out_dir = str(scratch)
    target = Run(copy)
    (target.dir / "done").mkdir(parents=True)
    for stage in UPSTREAM:
        marker = run.dir / "done" / f"{stage}.json"
        if marker.is_file():
            shutil.copy2(marker, target.dir / "done" / marker.name)
    for stage in UPSTREAM:
        output = run.path(STAGES[stage].output)
        if output.is_dir():
            (target.dir / output.name).symlink_to(output.resolve(), target_is_directory=True)
    return target


def distill_arm(run: Run, recipe: Recipe) -> dict[str, Any]:
    """The task-specific stage in a scratch copy of the run: its loop, teacher pass and whole stage."""
    scratch = Path(tempfile.mkdtemp(prefix=".textbrewer-tsd.", dir=run.dir.parent))
    try:
        target = scratch_run(run, recipe, scratch)
        start = time.perf_counter()
        target.execute(only=["task_specific"])
        stage_seconds = time.perf_counter() - start
        metrics = json.loads((target.path("student") / "metrics.json").read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    primary = run.data().family.primary
    return {
        "seconds": metrics["seconds"] + metrics["teacher_logits_seconds"],
        "loop_seconds": metrics["seconds"],
        "teacher_logits_seconds": metrics["teacher_logits_seconds"],
        "stage_seconds": stage_seconds,
        "steps": metrics["steps"],
        "dev": metrics[f"dev_{primary}"],
    }


class StudentOnTeacherIds(nn.Module):
    """The student reading a teacher-encoded batch as distill feeds it (ids looked up in a pruned
    vocabulary), so that TextBrewer can hand one batch to both models."""

    def __init__(self, pair: TeacherStudent) -> None:
        super().__init__()
        self.student = pair.student
        self.pair = pair

    def forward(self, labels: torch.Tensor | None = None, **inputs: torch.Tensor) -> Any:
        return self.student(**self.pair.student_inputs(inputs), labels=labels)


def textbrewer_arm(run: Run, recipe: Recipe, caching: bool) -> dict[str, Any]:
    """TextBrewer's BasicDistiller on the same start, rows, optimiser and losses; its `train` timed."""
    from textbrewer import BasicDistiller, DistillationConfig, TrainingConfig

    section = recipe.stages.task_specific
    seed_everything(student_seed(recipe))
    data = run.data()
    scratch = Path(tempfile.mkdtemp(prefix=".textbrewer-tsd.", dir=run.dir.parent))
    try:
        run.current_stage = "task_specific"
        teacher, teacher_dir = fine_tuned_teacher(run, data.labels)
        pair = teacher_and_student(run, scratch, teacher, teacher_dir, data)
        train_set = task_dataset(pair.teacher_encoder, data.train, data)
        evaluate = dev_evaluator(task_dataset(pair.student_encoder, data.dev, data), data.dev, data, run.device)
        loader = DataLoader(
            train_set, batch_size=section.batch_size, shuffle=True, collate_fn=lambda items: flat_batch(train_set.collate(items)),
            generator=torch.Generator().manual_seed(student_seed(recipe)),
        )
        steps = len(loader) * int(section.epochs)
        optimizer = build_optimizer(pair.student, section.lr, section.weight_decay, section.layer_lr_decay)
        scheduler = build_scheduler(optimizer, section.schedule, steps, section.warmup_ratio)
        distiller = BasicDistiller(
            TrainingConfig(output_dir=str(scratch / "out"), log_dir=str(scratch / "log"), device=run.device, ckpt_frequency=1),
            DistillationConfig(
                temperature=section.temperature, kd_loss_type="ce", kd_loss_weight=section.soft_weight * section.temperature**2,
                hard_label_weight=section.hard_weight, is_caching_logits=caching,
            ),
            teacher, StudentOnTeacherIds(pair),
            lambda batch, outputs: {"logits": outputs.logits},
            lambda batch, outputs: {"logits": outputs.logits, "losses": outputs.loss},
        )
        dev: list[float] = []
        start = time.perf_counter()
        distiller.train(
            optimizer, loader, num_epochs=int(section.epochs), scheduler=scheduler,
            max_grad_norm=section.max_grad_norm or -1.0,
            callback=lambda model, step: dev.append(evaluate(pair.student)[data.family.primary]),
        )
        seconds = time.perf_counter() - start
    finally:
        run.current_stage = None
        shutil.rmtree(scratch, ignore_errors=True)
    return {"seconds": seconds, "steps": steps, "dev": max(dev), "dev_by_epoch": dev}


def flat_batch(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """distill's collated batch as keyword arguments of both models: the teacher's inputs and the labels."""
    return {**batch["inputs"], "labels": batch["labels"]}


def compare(run: Run, recipe: Recipe, repeats: int, fast: bool = False) -> dict[str, Any]:
    """Every arm `repeats` times, alternating, and each baseline's median over each distill arm's."""
    fast_arm = fast_recipe(recipe) if fast else None
    arms = {
        "distill": lambda: distill_arm(run, recipe),
        **({FAST_ARM: lambda: distill_arm(run, fast_arm)} if fast_arm is not None else {}),
        "textbrewer live": lambda: textbrewer_arm(run, recipe, caching=False),
        "textbrewer cached": lambda: textbrewer_arm(run, recipe, caching=True),
    }
    measured: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for _ in range(repeats):
        for arm, measure in arms.items():
            measured[arm].append(measure())
    medians = {arm: statistics.median(row["seconds"] for row in rows) for arm, rows in measured.items()}
    ours = [arm for arm in arms if arm.startswith("distill")]
    baselines = [arm for arm in arms if arm.startswith("textbrewer")]
    stage = {arm: statistics.median(row["stage_seconds"] for row in measured[arm]) for arm in ours}
    result = {
        "repeats": measured,
        "median_seconds": medians,
        "distill_stage_median_seconds": stage["distill"],
        "distill_share_of": {arm: medians["distill"] / medians[arm] for arm in baselines},
        "distill_stage_share_of": {arm: stage["distill"] / medians[arm] for arm in baselines},
    }
    if fast:
        result["fast_share_of"] = {arm: medians[FAST_ARM] / medians[arm] for arm in baselines}
        result["fast_stage_share_of"] = {arm: stage[FAST_ARM] / medians[arm] for arm in baselines}
        result["fast_precision"] = "bf16" if autocast_dtype(run.device, "bf16") is not None else "fp32 (no bf16 on this CPU)"
    return result


@click.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (repeatable).")
@click.option("--epochs", type=click.IntRange(min=1), default=2, show_default=True, help="TSD epochs every arm trains.")
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True, help="Alternating repeats of the arms.")
@click.option("--fast", is_flag=True, help=f"Add the arm {FAST_ARM!r}: distill's stage with bf16 and length-grouped batches.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The JSON file to write.")
def main(recipe: Path, overrides: tuple[str, ...], epochs: int, repeats: int, fast: bool, out: Path) -> None:
    """Time RECIPE's task-specific stage against TextBrewer's distiller on its finished run."""
    try:
        import textbrewer  # noqa: F401  (the baseline: installed beside distill for this benchmark only)
    except ImportError:
        raise click.UsageError("the baseline needs TextBrewer: pip install textbrewer tensorboard") from None
    base = load_recipe(recipe, list(overrides))
    run = Run(base)
    if not (run.dir / "done" / "task_adaptive.json").is_file():
        raise click.UsageError(f"{run.dir} has no finished task_adaptive stage: run `distill run {recipe} --stages prepare,finetune,task_adaptive` first")
    equal = equal_work_recipe(base, epochs)
    torch.set_num_threads(base.run.threads)
    load_before = os.getloadavg()[0]
    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": str(recipe),
        "epochs": epochs,
        "threads": torch.get_num_threads(),
        "textbrewer": textbrewer.__version__,
        **compare(run, equal, repeats, fast),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "provenance": provenance.shareable(provenance.record(equal)),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
