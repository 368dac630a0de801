"""`prepare`: load, clean and split the task data once, for every later stage and the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.data.datasets import SPLITS, TaskData, load_task, write_split
from distill.pipeline import Run


def summary_table(data: TaskData) -> str:
    """A short per-split, per-label count table for the console and run.log."""
    header = ["split", "rows", *data.labels]
    rows = [header]
    for name in SPLITS:
        examples = data.split(name)
        counts = {label: 0 for label in data.labels}
        for example in examples:
            counts[example.label] += 1
        rows.append([name, str(len(examples)), *(str(counts[label]) for label in data.labels)])
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
