"""The default pipeline end to end on the real embedded teacher and data, at a reduced size.

`recipes/tiny.toml` with fewer rows and steps: every stage runs, every model is exported and
reported. Slow (a few minutes on 2 cores), but it is the one test of the whole product.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import tomli_w

from distill.report.schema import validate_report

REPO = Path(__file__).resolve().parent.parent


def reduced_tiny_recipe(tmp_path: Path) -> Path:
    recipe = tomllib.loads((REPO / "recipes" / "tiny.toml").read_text(encoding="utf-8"))
    recipe["run"]["out_dir"] = str(tmp_path / "runs")
    recipe["task"].update(limit_train=120, limit_eval=60, max_length=32)
    for stage in ("finetune", "task_adaptive", "task_specific", "data_distill"):
        recipe["stages"][stage]["max_steps"] = 4
    recipe["stages"]["data_distill"]["augment"]["multiplier"] = 1
    recipe["report"].update(repeats=2, warmup=1)
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(recipe), encoding="utf-8")
    return path


@pytest.mark.slow
def test_tiny_recipe_runs_end_to_end(tmp_path: Path, distill_main) -> None:
    recipe = reduced_tiny_recipe(tmp_path)
    code, _, err = distill_main("run", str(recipe))
    assert code == 0, err
    run_dir = tmp_path / "runs" / "tiny"
    for stage in ("prepare", "finetune", "task_adaptive", "task_specific", "data_distill", "export", "report"):
        assert (run_dir / "done" / f"{stage}.json").is_file(), stage
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    validate_report(report)
    kinds = sorted(student["kind"] for student in report["students"])
    assert kinds == ["bow", "cnn", "transformer"]
    for name in ("report.md", "report.html", "report.png"):
        assert (run_dir / name).stat().st_size > 0
    assert not list(run_dir.glob(".*.partial"))

    # A second run finds every stage done and changes nothing.
    before = (run_dir / "done" / "report.json").read_text(encoding="utf-8")
    code, _, err = distill_main("run", str(recipe))
    assert code == 0, err
    assert (run_dir / "done" / "report.json").read_text(encoding="utf-8") == before
