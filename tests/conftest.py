"""Shared fixtures: a tiny labelled data set, prepare-only recipes, and the real command line."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skipped test fails: CI installs every optional dependency (the dev extra),
    so a skip there means a missing install step, not an optional feature."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where nothing may be missing: {report.longrepr}"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny test models run fastest on one thread, and parallel test runs do not oversubscribe."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

def load_tool(name: str) -> Any:
    """A script of tools/ as a module (registered in sys.modules, where dataclasses resolve annotations)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# Three labels with unequal shares (50/30/20 %), so stratification is visible.
LABEL_SIZES = {"negative": 25, "neutral": 15, "positive": 10}


def tiny_rows() -> list[dict[str, str]]:
    """50 distinct labelled rows with a text pair column."""
    return [
        {"text": f"{label} sentence number {index}", "pair": f"context {index}", "label": label}
        for label, size in LABEL_SIZES.items()
        for index in range(size)
    ]


def write_rows(path: Path, rows: list[dict[str, str]], columns: dict[str, str] | None = None) -> Path:
    """Write rows as CSV, TSV or JSON lines (by the suffix), renaming keys with `columns`."""
    columns = columns or {}
    renamed = [{columns.get(key, key): value for key, value in row.items()} for row in rows]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in renamed), encoding="utf-8")
        return path
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(renamed[0]), delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(renamed)
    return path


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    return write_rows(tmp_path / "tiny.csv", tiny_rows())


PREPARE_ONLY = """
[export]
enabled = false

[report]
enabled = false
"""


@pytest.fixture
def make_recipe(tmp_path: Path):
    """Write a recipe that runs only `prepare`: `make_recipe(body, name="r")` -> path."""

    def make(body: str, name: str = "tiny") -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(body.strip() + "\n" + PREPARE_ONLY, encoding="utf-8")
        return path

    return make


@pytest.fixture
def run_cli(tmp_path: Path):
    """Run `python -m distill ARGS` in tmp_path, as a user would; returns the CompletedProcess."""

    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        return subprocess.run(
            [sys.executable, "-m", "distill", *map(str, args)],
            cwd=cwd or tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


@pytest.fixture
def distill_main(monkeypatch, capsys):
    """Call the console entry `distill.cli.main` in this process: `(exit code, stdout, stderr)`.

    Cheaper than a subprocess once torch is imported; the run's log handlers are detached after.
    """
    from distill.cli import main

    def call(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["distill", *map(str, args)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main()
        out, err = capsys.readouterr()
        return info.value.code, out, err

    logger = logging.getLogger("distill")
    propagate = logger.propagate
    yield call
    for handler in [h for h in logger.handlers if getattr(h, "_distill_run", False)]:
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = propagate
