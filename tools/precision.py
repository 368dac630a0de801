"""Fine-tune the recipe's teacher in fp32 and in bf16 autocast on the same split and seed: time and accuracy.

    python tools/precision.py recipes/tiny.toml --out results/precision-tiny.json
    python tools/precision.py recipes/tweets.toml --set stages.finetune.epochs=1 --set run.threads=2

Each precision is its own run directory (RUNS/NAME-precision/fp32, .../bf16) with the recipe's
prepare and finetune stages only, so the two teachers start from the same weights, see the
same batches and differ only in the autocast of their steps (`[stages.finetune] precision`).
The JSON gives, per precision, the stage's seconds, its steps, seconds per step, dev and test
metrics of the best checkpoint, and the ratios bf16 / fp32; the run's provenance (commit and
resolved recipe) and the machine's load average before and after, since another process on
the cores slows both runs but not necessarily alike. bf16 on a CPU needs AVX-512 BF16 or AMX
(`distill.train.loop.cpu_supports_bf16`); elsewhere the bf16 run trains in fp32 and says so.
A finished run directory is reused with its earlier times: delete the folder to measure again.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from distill import provenance
from distill.pipeline import Run
from distill.recipe import Recipe, load_recipe, parse_recipe
from distill.train.loop import cpu_supports_bf16

PRECISIONS = ("fp32", "bf16")


def precision_recipe(base: Recipe, precision: str, out_dir: Path) -> Recipe:
    """The base recipe's prepare and finetune stages only, at `precision`, in its own run directory."""
    data = base.model_dump(mode="json", exclude_none=True)
    data["stages"] = {"finetune": {**data["stages"]["finetune"], "precision": precision}}
    data["run"].update(name=precision, out_dir=str(out_dir))
    data["export"]["enabled"] = False
    data["report"]["enabled"] = False
    recipe = parse_recipe(data)
    recipe.source = base.source
    return recipe


def measure(recipe: Recipe) -> dict[str, Any]:
    """Run the recipe's finetune stage; its time, steps and the teacher's metrics."""
    run = Run(recipe)
    run.execute()
    done = json.loads((run.dir / "done" / "finetune.json").read_text(encoding="utf-8"))
    metrics = json.loads((run.path("teacher") / "metrics.json").read_text(encoding="utf-8"))
    primary = run.data().family.metrics
    return {
        "stage_seconds": done["seconds"],
        "train_seconds": metrics["seconds"],
        "steps": metrics["steps"],
        "seconds_per_step": metrics["seconds"] / metrics["steps"],
        "dev": {name: metrics["dev"][name] for name in primary},
        "test": {name: metrics["test"][name] for name in primary},
    }


@click.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (repeatable).")
@click.option("--runs", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder for the two runs.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="JSON file to write.")
def main(recipe: Path, overrides: tuple[str, ...], runs: Path | None, out: Path | None) -> None:
    base = load_recipe(recipe, list(overrides))
    if base.stages.finetune is None or not base.stages.finetune.enabled or base.stage_enabled("pretrain"):
        raise click.UsageError("the recipe must fine-tune a teacher it does not pretrain")
    runs = runs or Path(base.run.out_dir) / f"{base.run_name()}-precision"
    load_before = os.getloadavg()
    results = {precision: measure(precision_recipe(base, precision, runs)) for precision in PRECISIONS}
    fp32, bf16 = results["fp32"], results["bf16"]
    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": str(recipe),
        "cpu_supports_bf16": cpu_supports_bf16(),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "precisions": results,
        "bf16_over_fp32": {
            "seconds_per_step": bf16["seconds_per_step"] / fp32["seconds_per_step"],
            **{f"test_{name}": bf16["test"][name] - fp32["test"][name] for name in fp32["test"]},
        },
        "provenance": provenance.shareable(provenance.record(base)),
    }
    text = json.dumps(result, indent=2) + "\n"
    if out is not None:
        out.write_text(text, encoding="utf-8")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
