"""Ablate the transformer student's path: which distillation stages and relations pay off.

    distill run recipes/tweets.toml --stages prepare,finetune     # once: the split and the teacher
    python tools/ablate.py recipes/tweets.toml --seeds 1,2,3

Every variant runs on the base run's split and teacher: its own run directory
(RUNS/NAME-ablation/VARIANT-seedN/) links the base run's `data/`, `teacher/` (and `mlm/`,
`cache/`) and copies their `done/` markers, so the pipeline skips those stages; their config
hashes are checked first, so a base recipe edited since its run fails instead of retraining a
teacher. A seed is `[student] seed`: it changes the student's init and training order only.
Export, report and data distillation are off in the variants. Writes ablation.json and
ablation.md (test accuracy, macro-F1 and minutes of the student stages, mean ± std over seeds).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from distill.errors import UserError
from distill.pipeline import STAGES, Run, config_hash
from distill.recipe import Recipe, load_recipe, parse_recipe
from distill.report.stats import mean_std
from distill.stages.distillation import student_seed

SHARED_STAGES = ("prepare", "pretrain", "finetune")  # done once in the base run
SHARED_ARTIFACTS = ("data", "mlm", "teacher", "cache")
STUDENT_STAGES = ("general", "general_enhanced", "task_adaptive", "task_specific")
MINILM_V2 = ["qq", "kk", "vv"]
MINILM = ["qk", "vv"]


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    stages: dict[str, dict[str, Any]]  # student stage -> settings laid over the base recipe's table


def _relations(stages: tuple[str, ...], relations: list[str]) -> dict[str, dict[str, Any]]:
    return {stage: {"relations": relations} for stage in stages}


VARIANTS = (
    Variant(
        "gold_only",
        "TSD on gold labels only",
        {"task_specific": {"soft_weight": 0.0, "hard_weight": 1.0, "relation_weight": 0.0}},
    ),
    Variant("tsd", "TSD (the recipe's soft/hard weights)", {"task_specific": {}}),
    Variant("tad_tsd", "TAD (qq,kk,vv) + TSD", _relations(("task_adaptive", "task_specific"), MINILM_V2)),
    Variant(
        "ged_tad_tsd",
        "GED + TAD (qq,kk,vv) + TSD",
        _relations(("general_enhanced", "task_adaptive", "task_specific"), MINILM_V2),
    ),
    Variant("tad_tsd_qk_vv", "TAD (qk,vv) + TSD", _relations(("task_adaptive", "task_specific"), MINILM)),
)


def variant_recipe(base: Recipe, variant: Variant, seed: int, out_dir: Path) -> Recipe:
    """The base recipe with only the variant's student stages, the student seed and its own run name."""
    data = base.model_dump(mode="json", exclude_none=True)
    for stage in STUDENT_STAGES:
        data["stages"].pop(stage, None)
    if "data_distill" in data["stages"]:
        data["stages"]["data_distill"]["enabled"] = False  # its augment settings still shape TAD's augmented texts
    for stage, settings in variant.stages.items():
        table = getattr(base.stages, stage)
        own = table.model_dump(mode="json", exclude_none=True) if table is not None else {}
        data["stages"][stage] = {**own, **settings, "enabled": True}
    data["stages"]["task_specific"]["baseline_twin"] = False  # every variant ends in TSD; gold_only is the twin
    data["student"]["seed"] = seed
    data["run"].update(name=f"{variant.name}-seed{seed}", out_dir=str(out_dir))
    data["export"]["enabled"] = False
    data["report"]["enabled"] = False
    return parse_recipe(data, f"ablation variant {variant.name}")


def _shared_hashes(recipe: Recipe) -> dict[str, str]:
    """The config hashes the pipeline expects for the shared stages, chained as `Run.execute` chains them."""
    hashes, upstream = {}, ""
    for name in recipe.enabled_stages():
        upstream = config_hash(recipe, STAGES[name], upstream)
        if name in SHARED_STAGES:
            hashes[name] = upstream
    return hashes


def link_base_run(base_dir: Path, run_dir: Path, recipe: Recipe) -> None:
    """Give `run_dir` the base run's split and teacher, marked done with hashes the variant matches."""
    (run_dir / "done").mkdir(parents=True, exist_ok=True)
    for name, expected in _shared_hashes(recipe).items():
        marker = base_dir / "done" / f"{name}.json"
        if not marker.is_file():
            raise UserError(
                f"the base run has not finished the '{name}' stage",
                str(base_dir),
                f"run `distill run RECIPE --stages {','.join(_shared_hashes(recipe))}` first",
            )
        if json.loads(marker.read_text(encoding="utf-8"))["config_hash"] != expected:
            raise UserError(
                f"the base run's '{name}' stage was made with other settings than the recipe has now",
                str(base_dir),
                "rerun the base recipe's shared stages, or restore the recipe they were made with",
            )
        shutil.copy2(marker, run_dir / "done" / marker.name)
    for artifact in SHARED_ARTIFACTS:
        if (base_dir / artifact).exists() and not (run_dir / artifact).exists():
            os.symlink((base_dir / artifact).resolve(), run_dir / artifact, target_is_directory=True)


def run_variant(base: Run, variant: Variant, seed: int, out_dir: Path) -> dict[str, Any]:
    """Run one variant at one seed (done stages are skipped on a rerun); its test metrics and minutes."""
    recipe = variant_recipe(base.recipe, variant, seed, out_dir)
    run = Run(recipe)
    link_base_run(base.dir, run.dir, recipe)
    done = run.execute()
    test = json.loads((run.dir / "student" / "metrics.json").read_text(encoding="utf-8"))["test"]
    seconds = sum(done[name]["seconds"] for name in variant.stages)
    return {
        "seed": seed,
        "accuracy": test["accuracy"],
        "macro_f1": test["macro_f1"],
        "minutes": seconds / 60,
        "run_dir": str(run.dir),
    }


def summarise(variant: Variant, runs: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"name": variant.name, "description": variant.description, "runs": runs}
    for key in ("accuracy", "macro_f1", "minutes"):
        row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r[key] for r in runs])
    return row


def markdown_table(rows: list[dict[str, Any]], seeds: list[int]) -> str:
    spread = len(seeds) > 1

    def cell(row: dict[str, Any], key: str) -> str:
        mean = f"{row[key + '_mean']:.4f}"
        return f"{mean} ± {row[key + '_std']:.4f}" if spread else mean

    lines = [
        f"Student-path ablation, test split, seeds {', '.join(map(str, seeds))}" + (" (mean ± std)" if spread else ""),
        "",
        "| variant | stages | accuracy | macro-F1 | minutes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        minutes = f"{row['minutes_mean']:.1f}"
        cells = [row["name"], row["description"], cell(row, "accuracy"), cell(row, "macro_f1"), minutes]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def ablate(recipe_path: Path, seeds: list[int] | None, names: list[str], out_dir: Path | None = None) -> Path:
    """Run the chosen variants at every seed (default: the recipe's student seed); write ablation.json and .md."""
    unknown = sorted(set(names) - {v.name for v in VARIANTS})
    if unknown:
        known = ", ".join(v.name for v in VARIANTS)
        raise UserError(f"unknown variants {', '.join(unknown)}", "--variants", f"choose from {known}")
    base = Run(load_recipe(recipe_path))
    seeds = seeds or [student_seed(base.recipe)]
    out_dir = out_dir or base.dir.parent / f"{base.dir.name}-ablation"
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = [v for v in VARIANTS if v.name in names]
    rows = [summarise(v, [run_variant(base, v, seed, out_dir) for seed in seeds]) for v in chosen]
    result = {"base_run": str(base.dir), "seeds": seeds, "variants": rows}
    (out_dir / "ablation.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out_dir / "ablation.md").write_text(markdown_table(rows, seeds), encoding="utf-8")
    return out_dir


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 1,2,3") from None


@click.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--seeds", default=None, callback=_int_list, help="Student seeds, e.g. 1,2,3 (default: the recipe's).")
@click.option("--variants", default=",".join(v.name for v in VARIANTS), help="Variants, e.g. tsd,tad_tsd (default: all).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder for the variant runs.")
def main(recipe: Path, seeds: list[int] | None, variants: str, out: Path | None) -> None:
    """Run student-path variants of RECIPE on its run's split and teacher."""
    try:
        folder = ablate(recipe, seeds, variants.split(","), out)
    except UserError as error:
        click.echo(f"error: {error.line()}", err=True)
        sys.exit(2)
    click.echo((folder / "ablation.md").read_text(encoding="utf-8"))
    click.echo(f"-> {folder / 'ablation.json'}")


if __name__ == "__main__":
    main()
