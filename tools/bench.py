"""Benchmark recipes end to end: wall time per stage, peak memory, and the report's figures.

    python tools/bench.py recipes/tiny.toml [more.toml ...] [--out bench.json] [--readme docs/results.md]
    python tools/bench.py --with results/bench-tiny.json --with results/bench-tweets.json --readme docs/results.md

Each recipe runs as `distill run RECIPE` in its own child process, so the peak resident memory
read from that child's rusage belongs to that run alone. Stage times come from the run's
`done/*.json` markers; a stage that was already done before the benchmark keeps its earlier
time and is listed under `reused_stages` (delete the run directory for a cold benchmark).
`--readme` rewrites the README section between `<!-- results:start -->` and `<!-- results:end -->`
(appended at the end when the markers are missing) with the measured tables; `--with` adds the
runs of earlier bench files to those tables (a recipe measured now replaces its earlier run),
so recipes measured on different days share one README section, each with its own date. Each
run records the machine's load average before and after it: a benchmark that shared the cores
with other work says so.

A row's figures must come from one version of the code: when the run's done markers name more
than one code tree (stages reused from a run made by other code), the bench refuses the row;
`--allow-mixed-code` records it instead, with `mixed_code` (stage -> commit) in the JSON and a
loud mark in the README tables.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from distill import provenance
from distill.errors import UserError
from distill.pipeline import Run
from distill.recipe import load_recipe
from distill.report.schema import CLASSIFICATION_METRICS, METRIC_TITLES, task_metrics
from distill.report.sections import update_section

SECTION = "results"  # the README section this tool regenerates
_MODEL_KEYS = ("size_mb", "latency_ms", "throughput_per_s")  # and the task's metrics (report["task"])
_STUDENT_KEYS = ("name", "kind", *_MODEL_KEYS, "retention", "speedup")
# kept where the report has them (reports of older code lack some): the int8 copy's figures, the
# batch-size-1 latency split, the FLOP-limit speed-up, whether int8 was kept
_COST_KEYS = ("int8", "int8_decision", "latency_split_ms", "flops_per_text", "flop_speedup")


def run_recipe(recipe_path: Path, allow_mixed_code: bool = False) -> dict[str, Any]:
    """Run one recipe in a child process; return its timings, peak memory and report figures."""
    run_dir = Run(load_recipe(recipe_path)).dir
    markers_before = provenance.stage_markers(run_dir)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    command = [sys.executable, "-m", "distill", "run", str(recipe_path)]
    pid = os.posix_spawn(sys.executable, command, os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise UserError(f"`distill run` exited with code {code}", str(recipe_path), f"see {run_dir / 'run.log'}")
    markers = provenance.stage_markers(run_dir)
    mixed = provenance.mixed_code(markers)
    if mixed and not allow_mixed_code:
        raise UserError(
            f"the run's stages come from different code ({provenance.commits_text(mixed)})",
            str(run_dir),
            "remake them with `distill run RECIPE --fresh`, or pass --allow-mixed-code to record the mix",
        )
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise UserError("the run wrote no report.json", str(recipe_path), "enable the [report] stage in the recipe")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    metrics = task_metrics(report)
    row = {
        "recipe": str(recipe_path),
        "run_dir": str(run_dir),
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "wall_s": wall,
        "peak_rss_mb": _max_rss_mb(usage.ru_maxrss),
        "stages": {name: marker["seconds"] for name, marker in markers.items()},
        "reused_stages": [name for name, marker in markers.items() if markers_before.get(name) == marker],
        "dataset": report["dataset"],
        "test_size": report["test_size"],
        "hardware": report["hardware"],
        "metrics": list(metrics),
        "teacher": {key: report["teacher"][key] for key in (*metrics, *_MODEL_KEYS, *_COST_KEYS) if key in report["teacher"]},
        "students": [
            {key: student[key] for key in (*metrics, *_STUDENT_KEYS, *_COST_KEYS) if key in student} for student in report["students"]
        ],
        # the code and recipe that measured the figures, without this machine's folders
        "provenance": provenance.shareable(report["provenance"]) if report.get("provenance") else None,
    }
    if mixed:
        row["mixed_code"] = mixed
    return row


def _max_rss_mb(max_rss: int) -> float:
    """ru_maxrss is in KiB on Linux and in bytes on macOS."""
    return max_rss / (1024 * 1024) if sys.platform == "darwin" else max_rss / 1024


def load_runs(bench_file: Path) -> list[dict[str, Any]]:
    """The runs of an earlier bench JSON, each dated (older files date the whole file only)."""
    try:
        bench = json.loads(bench_file.read_text(encoding="utf-8"))
        return [{"measured": bench["created"], **run} for run in bench["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"not a bench file: {error}", str(bench_file), "pass a JSON written by tools/bench.py --out") from None


def merged_runs(earlier: list[dict[str, Any]], measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier runs in their order, a recipe measured now replacing its earlier run; new recipes last."""
    by_recipe = {Path(run["recipe"]).name: run for run in earlier}
    by_recipe.update({Path(run["recipe"]).name: run for run in measured})
    return list(by_recipe.values())


def _load_cell(run: dict[str, Any]) -> str:
    load = run.get("load_average_1min")
    return f"{load['before']:.1f} → {load['after']:.1f}" if load else "—"


def results_section(runs: list[dict[str, Any]]) -> str:
    """The marked README section: run cost per recipe, then one row per model."""
    cpus = sorted({run["hardware"]["cpu"] for run in runs})

    def recipe_cell(run: dict[str, Any]) -> str:
        return f"{Path(run['recipe']).name}{f' **{provenance.MIXED_MARK}**' if run.get('mixed_code') else ''}"

    lines = [
        f"Measured by `tools/bench.py`, CPU: {', '.join(cpus)}.",
        "",
        "| recipe | measured | threads | load avg before → after | wall s | peak RSS MB | stage seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        reused = set(run.get("reused_stages", []))
        stages = ", ".join(
            f"{name} {seconds:.1f}{'*' if name in reused else ''}" for name, seconds in run["stages"].items()
        )
        lines.append(
            f"| {recipe_cell(run)} | {run['measured'][:10]} | {run['hardware']['threads']} | {_load_cell(run)} "
            f"| {run['wall_s']:.1f} | {run['peak_rss_mb']:.0f} | {stages} |"
        )
    tables: dict[tuple[str, ...], list[dict[str, Any]]] = {}  # one model table per set of task metrics
    for run in runs:
        tables.setdefault(tuple(run.get("metrics", CLASSIFICATION_METRICS)), []).append(run)
    for metrics, table_runs in tables.items():
        titles = " | ".join(METRIC_TITLES[name] for name in metrics)
        lines += [
            "",
            f"| recipe | dataset | model | {titles} | retention | bs1 p50 ms | speed-up | int8 bs1 p50 ms "
            "| int8 speed-up | vs int8 teacher | bs1 tokenise / run / post ms | FLOP-limit speed-up | size MB |",
            "|---|---|---|" + "---|" * len(metrics) + "---|" * 9,
        ]
        for run in table_runs:
            name = recipe_cell(run)
            teacher = {"name": "teacher", **run["teacher"], "retention": 1.0, "speedup": 1.0, "flop_speedup": 1.0}
            for model in (teacher, *run["students"]):
                figures = " | ".join(f"{model[metric]:.4f}" for metric in metrics)
                lines.append(
                    f"| {name} | {run['dataset']} | {model['name']} | {figures} | {100 * model['retention']:.1f}% "
                    f"| {model['latency_ms']['bs1_p50']:.2f} | {model['speedup']:.1f}× | {' | '.join(_cost_cells(model, run['teacher']))} "
                    f"| {model['size_mb']:.1f} |"
                )
    lines += [
        "",
        "Stage seconds marked * come from an earlier invocation (the stage was done already) and are not "
        "in that row's wall time or peak RSS. "
        "Retention = model / teacher in the first metric column; speed-up = teacher bs1 p50 / model bs1 p50 (ONNX fp32). "
        "int8: the model's dynamic int8 copy (marked † where the export measured it slower or less accurate and "
        "kept fp32); int8 speed-up = fp32 teacher bs1 p50 / int8 bs1 p50, vs int8 teacher = int8 teacher bs1 p50 / "
        "int8 bs1 p50. The split is the fp32 model's bs1 call by phase (medians). FLOP-limit speed-up = teacher "
        "FLOPs / model FLOPs per text, the speed-up if latency followed FLOPs; — where the run's code did not measure it. "
        "A load average above the thread count means other work shared the cores: stage times and "
        "latencies are then slower than on an idle machine (ratios are measured in one process).",
    ]
    mixed = "; ".join(f"{Path(run['recipe']).name}: {provenance.commits_text(run['mixed_code'])}" for run in runs if run.get("mixed_code"))
    if mixed:
        lines += [
            "",
            f"**{provenance.MIXED_MARK}**: the row's stages were made by different commits, so its figures do not come from "
            f"one version of the code ({mixed}).",
        ]
    return "\n".join(lines)


def _cost_cells(model: dict[str, Any], teacher: dict[str, Any]) -> list[str]:
    """A model's int8 latency, its speed-ups over the fp32 and the int8 teacher, its bs1 latency
    split and its FLOP-limit speed-up, each — where the bench row lacks it."""
    int8 = model.get("int8", {}).get("latency_ms", {}).get("bs1_p50")
    teacher_int8 = teacher.get("int8", {}).get("latency_ms", {}).get("bs1_p50")
    dropped = "†" if model.get("int8_decision", {}).get("kept") is False else ""
    split = model.get("latency_split_ms")
    return [
        "—" if int8 is None else f"{int8:.2f}{dropped}",
        "—" if int8 is None else f"{teacher['latency_ms']['bs1_p50'] / int8:.1f}×",
        "—" if int8 is None or teacher_int8 is None else f"{teacher_int8 / int8:.1f}×",
        "—" if split is None else f"{split['tokenise']:.2f} / {split['run']:.2f} / {split['post']:.2f}",
        "—" if model.get("flop_speedup") is None else f"{model['flop_speedup']:.1f}×",
    ]


@click.command()
@click.argument("recipes", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench.json"), show_default=True,
    help="Where to write the JSON results.",
)
@click.option("--readme", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A README whose marked results section is regenerated.")
@click.option("--with", "earlier", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="An earlier bench JSON whose runs join the README tables (repeatable).")
@click.option("--allow-mixed-code", is_flag=True,
              help="Record a run whose stages were made by different code (marked) instead of refusing it.")
def main(recipes: tuple[Path, ...], out: Path, readme: Path | None, earlier: tuple[Path, ...], allow_mixed_code: bool) -> None:
    """Run each RECIPE end to end and record stage times, peak memory and report figures."""
    if not recipes and not (earlier and readme):
        click.echo("error: nothing to do; give recipes to run, or --with bench files and --readme", err=True)
        sys.exit(2)
    try:
        earlier_runs = [run for path in earlier for run in load_runs(path)]
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        bench = {"created": created, "runs": [run_recipe(path, allow_mixed_code) for path in recipes]}
    except UserError as error:
        click.echo(f"error: {error.line()}", err=True)
        sys.exit(2)
    if recipes:
        out.write_text(json.dumps(bench, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if readme is not None:
        update_section(readme, SECTION, results_section(merged_runs(earlier_runs, bench["runs"])), "Benchmark results")
    for run in bench["runs"]:
        click.echo(f"{run['recipe']}: {run['wall_s']:.1f} s, peak RSS {run['peak_rss_mb']:.0f} MB -> {out}")


if __name__ == "__main__":
    main()
