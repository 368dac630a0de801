"""Score a TF-IDF + logistic-regression baseline on a run directory's own data splits.

    python tools/baseline.py runs/tiny [--out baseline.json]

Reads RUN_DIR/data/{train,dev,test}.jsonl, RUN_DIR/labels.json and, when present,
RUN_DIR/recipe.toml; writes accuracy, macro-F1, seconds and test predictions as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from distill.errors import UserError
from distill.report.baseline import baseline_for_run


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the JSON result (default: RUN_DIR/baseline.json).")
def main(run_dir: Path, out: Path | None) -> None:
    """Fit the baseline on RUN_DIR's train split and score it on its test split."""
    try:
        result = baseline_for_run(run_dir)
    except UserError as error:
        click.echo(f"error: {error.line()}", err=True)
        sys.exit(2)
    out = out or run_dir / "baseline.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    click.echo(
        f"{result['name']} ({result['language']}, C={result['C']}): accuracy {result['accuracy']:.4f}, "
        f"macro-F1 {result['macro_f1']:.4f} on {result['test_size']} test texts in {result['seconds']:.1f} s -> {out}"
    )


if __name__ == "__main__":
    main()
