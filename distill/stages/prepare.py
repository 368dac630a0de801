"""`prepare`: load, clean and split the task data once, for every later stage and the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.data.datasets import SPLITS, TaskData, label_counts, load_task, write_split
from distill.pipeline import Run


def summary_table(data: TaskData) -> str:
    """A short per-split, per-label count table (for scores: mean, min, max) for the console and run.log."""
    counts = {name: label_counts(data.family, [e.label for e in data.split(name)]) for name in SPLITS}
    columns = list(dict.fromkeys(key for name in SPLITS for key in counts[name]))
    header = ["split", "rows", *columns]
    rows = [header]
    for name in SPLITS:
        cells = [counts[name].get(key, 0) for key in columns]
        rows.append([name, str(len(data.split(name))), *(f"{c:.3g}" if isinstance(c, float) else str(c) for c in cells)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows)


def run(run: Run, work: Path) -> dict[str, Any]:
    recipe = run.recipe
    data = load_task(recipe.task, recipe.run.seed)
    for name in SPLITS:
        write_split(data.split(name), work / f"{name}.jsonl")
    (work / "labels.json").write_text(json.dumps(data.labels, ensure_ascii=False) + "\n", encoding="utf-8")
    stats = data.stats()
    (work / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    cleaning = "; ".join(
        f"{part}: read {c.read}, empty {c.empty}, duplicates {c.duplicates}, conflicting {c.conflicting}"
        for part, c in data.counts.items()
    )
    run.logger.info(f"[prepare] {cleaning}; train rows also in dev/test removed: {data.removed_overlap}")
    run.logger.info(summary_table(data))
    return {"train": len(data.train), "dev": len(data.dev), "test": len(data.test), "labels": len(data.labels)}
