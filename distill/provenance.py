"""Which code and which recipe made a result, so every recorded figure names its commit.

Done markers, report.json and the bench and ablation files carry `record(recipe)`. Git is
asked once per process, with a short timeout; outside a git checkout (an installed wheel)
the git fields are None and nothing fails.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import distill
from distill.recipe import Recipe

GIT_TIMEOUT_S = 5.0
PACKAGE_DIR = Path(distill.__file__).resolve().parent


def _git(*args: str) -> str | None:
    """A git command's stripped output in the package's checkout, or None when git cannot answer."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


@cache
def _code() -> tuple[tuple[str, Any], ...]:
    """Package version and git state; frozen so the cached value cannot be changed by a caller."""
    top = _git("rev-parse", "--show-toplevel")
    # Only the checkout the package lives in at its top level counts: an installed copy under a
    # virtualenv inside some other repository must not report that repository's commit.
    in_checkout = top is not None and Path(top).resolve() == PACKAGE_DIR.parent
    # dirty means the package itself differs from its commit (uncommitted docs or tests do not count)
    status = _git("status", "--porcelain", "--", PACKAGE_DIR.name) if in_checkout else None
    return (
        ("package_version", distill.__version__),
        ("git_commit", _git("rev-parse", "HEAD") if in_checkout else None),
        ("git_dirty", None if status is None else status != ""),
        ("code_tree", _git("rev-parse", f"HEAD:{PACKAGE_DIR.name}") if in_checkout else None),
    )


def code() -> dict[str, Any]:
    """{package_version, git_commit, git_dirty, code_tree}: code_tree is git's tree id of the
    committed `distill` package, equal across commits that change only docs, tests or tools."""
    return dict(_code())


def record(recipe: Recipe) -> dict[str, Any]:
    """The code and the fully resolved recipe (overrides applied), as the run's recipe.toml holds it."""
    return {**code(), "recipe": tomllib.loads(recipe.to_toml())}


def shareable(made: dict[str, Any], root: Path | None = None) -> dict[str, Any]:
    """`made` with every absolute path inside `root` (default: the current directory) written
    relative to it, so a published figure names `runs/tweets/teacher`, not one machine's folders.

    Resolved recipes hold absolute paths (they must work from any directory); a benchmark or
    ablation file committed beside the code must not carry them.
    """
    root = (root or Path.cwd()).resolve()

    def portable(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: portable(item) for key, item in value.items()}
        if isinstance(value, list):
            return [portable(item) for item in value]
        if isinstance(value, str) and value.startswith("/"):
            path = Path(value)
            if path.is_relative_to(root):
                return path.relative_to(root).as_posix() or "."
        return value

    return portable(made)


def mixed_code(markers: dict[str, dict[str, Any]], strict: bool = True) -> dict[str, str | None] | None:
    """Stage -> the commit that made it, when the stages come from more than one code tree; else None.

    A marker without provenance (written before distill recorded it) counts as code of its own.
    With `strict` (figures to publish), so does a stage made by uncommitted package code: no commit
    names what ran. Without it (a run's own report) only committed trees are compared, so a run
    made in a checkout being edited is not flagged at every stage.
    """
    made_by = {name: marker.get("provenance") or {} for name, marker in markers.items()}
    trees = {(made.get("code_tree"), name if strict and made.get("git_dirty") else None) for name, made in made_by.items()}
    if len(trees) <= 1:
        return None
    return {
        name: f"{made['git_commit']}{'+uncommitted' if made.get('git_dirty') else ''}" if made.get("git_commit") else None
        for name, made in made_by.items()
    }


def commits_text(mixed: dict[str, str | None]) -> str:
    """`prepare 1a2b3c4d5e6f, report unknown`: each stage with its short commit."""
    # commit[40:] keeps a "+uncommitted" mark after the 40-digit id
    return ", ".join(f"{stage} {commit[:12] + commit[40:] if commit else 'unknown'}" for stage, commit in mixed.items())


def stage_markers(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Stage name -> its done/NAME.json marker (config hash, metrics, seconds, finish time)."""
    paths = sorted((run_dir / "done").glob("*.json"))
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in paths}
