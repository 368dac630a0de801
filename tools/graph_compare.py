"""The same trained models exported as two graphs (plain and fused), timed against each other.

    distill run recipes/tweets.toml --set run.name=plain --set export.graph=plain --stages export,report
    distill run recipes/tweets.toml --set run.name=fused --stages export,report
    python tools/graph_compare.py runs/plain runs/fused --out results/graph-tweets.json

Two runs that share their trained models (copies of one run's model folders and done markers)
and differ in `[export] graph` give two exports of each model. Their reports time each run's models
against each other, but not one run's graph against the other's. This scores every exported model
of both (fp32, the int8 copy the export kept and the teacher's int8 reference) on the shared test
split and times them all in one process, interleaved as the report times models (every model takes
its turn in every round, tokenisation included, distill.stages.report.measure) at batch size 1,
`--repeats` one-text calls per model in `--rounds` rounds (A's `[report]` settings by default). Per model and graph: the primary metric, the batch-size-1 p50 with the spread of
the round medians, the tokenise / run / post-process split, the node count and fused operators from
the manifest; and B's p50 over A's. Writes JSON (both runs' export commits and resolved recipes)
and a Markdown table beside it. Refuses runs whose test splits differ.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from distill import provenance
from distill.errors import UserError
from distill.export.runtime import read_manifest
from distill.pipeline import Run
from distill.report.schema import METRIC_TITLES
from distill.stages.export import MANIFEST_KEYS, SUMMARY_FILE
from distill.stages.report import measure, read_summary, timing_settings


def exported_models(run: Run) -> dict[tuple[str, str], Path]:
    """(model name, variant) -> manifest path of every model the run's export wrote."""
    summary = read_summary(run.dir / "onnx" / SUMMARY_FILE)
    return {
        (entry["name"], variant): run.dir / "onnx" / entry[key]
        for entry in summary["models"]
        for key, variant in MANIFEST_KEYS.items()
        if entry.get(key)
    }


def graph_of(manifest: Path) -> dict[str, Any]:
    """What made the graph: exporter, node count, fused operators (an int8 copy keeps its fp32's)."""
    graph = read_manifest(manifest).get("graph", {})
    return {"exporter": graph.get("exporter"), "nodes": graph.get("nodes"), "fused_ops": graph.get("fused_ops", {})}


def compare_graphs(run_a: Run, run_b: Run, repeats: int | None = None, rounds: int | None = None) -> dict[str, Any]:
    """Every model of both exports scored and timed at batch size 1 in one interleaved harness."""
    test_a, test_b = run_a.data().test, run_b.data().test
    if [(e.text, e.label) for e in test_a] != [(e.text, e.label) for e in test_b]:
        raise UserError("the two runs' test splits differ", f"{run_a.dir} / {run_b.dir}", "compare exports of the same trained models")
    family = run_a.data().family
    models = {"A": exported_models(run_a), "B": exported_models(run_b)}
    paths = [path for exported in models.values() for path in exported.values()]
    timing = timing_settings(run_a)
    repeats = repeats or timing.repeats
    timing = replace(timing, batch_sizes=[1], repeats=repeats, rounds=min(rounds or timing.rounds, repeats))
    measured = measure(paths, test_a, family, timing, served=False)  # both graphs at one thread count
    rows = []
    for key in [key for key in models["A"] if key in models["B"]]:  # in A's export order
        row: dict[str, Any] = {"model": key[0], "variant": key[1]}
        for side in ("A", "B"):
            path = models[side][key]
            figures = measured[path].figures
            row[side] = {
                family.primary: figures[family.primary],
                "bs1_p50_ms": figures["latency_ms"]["bs1_p50"],
                "bs1_p50_rounds_ms": [figures["latency_ms"]["bs1_p50_low"], figures["latency_ms"]["bs1_p50_high"]],
                "latency_split_ms": figures["latency_split_ms"],
                "size_mb": figures["size_mb"],
                **graph_of(path if key[1] == "fp32" else models[side][(key[0], "fp32")]),
            }
        row["latency_b_over_a"] = row["B"]["bs1_p50_ms"] / row["A"]["bs1_p50_ms"]
        row[f"{family.primary}_b_minus_a"] = row["B"][family.primary] - row["A"][family.primary]
        rows.append(row)
    return {
        "metric": family.primary, "test_size": len(test_a), "threads": timing.threads, "repeats": timing.repeats,
        "rounds": timing.rounds, "rows": rows,
    }


def markdown(result: dict[str, Any], names: tuple[str, str]) -> str:
    """The comparison as one Markdown table."""
    metric = result["metric"]
    title = METRIC_TITLES.get(metric, metric)
    lines = [
        f"A = `{names[0]}`, B = `{names[1]}`; test split, {result['test_size']} rows, {result['threads']} threads, "
        f"{result['repeats']} one-text calls per model in {result['rounds']} interleaved rounds (measured {result['created'][:10]} by `tools/graph_compare.py`).",
        "",
        f"| model | graph nodes A / B | {title} A / B | bs1 p50 ms A / B (round medians) | B / A | run phase ms A / B |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        a, b = row["A"], row["B"]
        fused = ", ".join(f"{count} {op}" for op, count in b["fused_ops"].items())
        lines.append(
            f"| {row['model']} {row['variant']} | {a['nodes']} / {b['nodes']}{f' ({fused})' if fused else ''} "
            f"| {a[metric]:.4f} / {b[metric]:.4f} "
            f"| {a['bs1_p50_ms']:.2f} ({a['bs1_p50_rounds_ms'][0]:.2f}–{a['bs1_p50_rounds_ms'][1]:.2f}) / "
            f"{b['bs1_p50_ms']:.2f} ({b['bs1_p50_rounds_ms'][0]:.2f}–{b['bs1_p50_rounds_ms'][1]:.2f}) "
            f"| {row['latency_b_over_a']:.2f} | {a['latency_split_ms']['run']:.2f} / {b['latency_split_ms']['run']:.2f} |"
        )
    return "\n".join(lines) + "\n"


@click.command()
@click.argument("run_a", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repeats", type=click.IntRange(min=1), default=None, help="Timed one-text calls per model (default: A's [report] repeats).")
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="Interleaved rounds they split into (default: A's [report] rounds).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The JSON file to write.")
def main(run_a: Path, run_b: Path, repeats: int | None, rounds: int | None, out: Path) -> None:
    """Time the exports of RUN_A and RUN_B against each other, interleaved, on the shared test split."""
    runs = (Run.from_dir(run_a), Run.from_dir(run_b))
    result = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **compare_graphs(*runs, repeats, rounds)}
    result["provenance"] = {  # each export's code and recipe, and the code that timed them
        **{
            side: provenance.shareable(json.loads((run.dir / "done" / "export.json").read_text(encoding="utf-8"))["provenance"])
            for side, run in zip("AB", runs)
        },
        "timed_by": provenance.code(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result, (run_a.name, run_b.name)), encoding="utf-8")
    click.echo(out.with_suffix(".md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
