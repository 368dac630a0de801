"""Measure what length-grouped batches save: padding tokens per epoch and seconds per step.

    distill run recipes/tweets.toml --stages prepare,finetune     # once: the split and the teacher
    python tools/group_by_length.py recipes/tweets.toml --steps 20 --repeats 3 --out grouped.json

On the run's training split, encoded with the teacher's tokenizer at the recipe's length:
the real and padding tokens of one epoch of random batches (the loop's DistributedSampler
order) against length-grouped ones (distill.train.batching), at the fine-tuning batch size.
Then the teacher trains `--steps` optimiser steps each way through the one training loop
(hard labels, no evaluation), alternating random and grouped `--repeats` times so that other
work on the machine slows both alike; the JSON keeps every repeat, the median ratio, the
commit and the resolved recipe.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
import torch
from torch.utils.data import DistributedSampler

from distill import provenance
from distill.errors import UserError
from distill.models.teacher import load_classifier
from distill.pipeline import Run
from distill.recipe import load_recipe
from distill.stages.common import task_dataset, text_encoder, train_config
from distill.train.batching import LengthGroupedSampler, padded_tokens
from distill.train.loop import train


def epoch_padding(lengths: list[int], batch_size: int, seed: int) -> dict[str, dict[str, int]]:
    """Real and padding tokens of epoch 0 under each order."""
    orders = {
        "random": list(DistributedSampler(range(len(lengths)), num_replicas=1, rank=0, shuffle=True, seed=seed)),
        "grouped": list(LengthGroupedSampler(lengths, batch_size, seed=seed)),
    }
    counts = {}
    for name, order in orders.items():
        real, padding = padded_tokens(lengths, [order[i : i + batch_size] for i in range(0, len(order), batch_size)])
        counts[name] = {"real_tokens": real, "padding_tokens": padding}
    return counts


def timed_steps(run: Run, dataset: Any, steps: int, grouped: bool) -> float:
    """Seconds of `steps` fine-tuning steps of the teacher through the training loop."""
    model = load_classifier(run.teacher_dir()).train()
    family = run.data().family
    section = run.recipe.stages.finetune
    config = train_config(section, run.recipe.run.seed, max_steps=steps, group_by_length=grouped, log_every=10**9)

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return family.hard_loss(model(**batch["inputs"]).logits, batch["labels"]), {}

    with tempfile.TemporaryDirectory() as work:
        result = train(model, loss_fn, dataset, config, collate=dataset.collate, work_dir=Path(work), device=run.device, desc="timing")
    return result.seconds


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--steps", default=20, show_default=True, help="Optimiser steps per timed repeat.")
@click.option("--repeats", default=3, show_default=True, help="Alternating random/grouped repeats.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("group_by_length.json"), show_default=True)
def main(recipe: Path, steps: int, repeats: int, out: Path) -> None:
    try:
        run = Run(load_recipe(recipe))
        if not (run.dir / "done" / "finetune.json").is_file():
            raise UserError("the run has no fine-tuned teacher yet", str(run.dir), f"run `distill run {recipe} --stages prepare,finetune` first")
        data = run.data()
        dataset = task_dataset(text_encoder(run.recipe, run.teacher_dir()), data.train, data)
    except UserError as error:
        sys.exit(f"error: {error}")
    batch_size = run.recipe.stages.finetune.batch_size
    lengths = [dataset.length(i) for i in range(len(dataset))]
    timed_steps(run, dataset, 3, grouped=False)  # warm-up, not counted: the first steps of a process are slow
    seconds: dict[str, list[float]] = {"random": [], "grouped": []}
    for repeat in range(repeats):
        for name in ("random", "grouped"):
            seconds[name].append(timed_steps(run, dataset, steps, name == "grouped"))
            click.echo(f"repeat {repeat + 1}: {name} {steps} steps in {seconds[name][-1]:.1f}s")
    ratios = [r / g for r, g in zip(seconds["random"], seconds["grouped"])]
    result = {
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": recipe.name,
        "rows": len(lengths),
        "batch_size": batch_size,
        "tokens_per_epoch": epoch_padding(lengths, batch_size, run.recipe.run.seed),
        "steps_per_repeat": steps,
        "seconds": seconds,
        "speedup_per_repeat": ratios,
        "speedup_median": statistics.median(ratios),
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "provenance": provenance.shareable(provenance.record(run.recipe)),
    }
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tokens = result["tokens_per_epoch"]
    for name in ("random", "grouped"):
        share = tokens[name]["padding_tokens"] / (tokens[name]["real_tokens"] + tokens[name]["padding_tokens"])
        click.echo(f"{name}: {tokens[name]['padding_tokens']:,} padding tokens per epoch ({share:.1%} of the batch tokens)")
    click.echo(f"grouped steps are {result['speedup_median']:.2f}x as fast (median of {repeats}) -> {out}")


if __name__ == "__main__":
    main()
