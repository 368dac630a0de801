"""Which code and which recipe made a result, so every recorded figure names its commit.

Done markers, report.json and the bench and ablation files carry `record(recipe)`. Git is
asked once per process, with a short timeout; outside a git checkout (an installed wheel)
the git fields are None and nothing fails.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import distill
from distill.recipe import Recipe

GIT_TIMEOUT_S = 5.0
MIXED_MARK = "⚠ MIXED CODE"  # how tables mark figures whose stages were made by different code
PACKAGE_DIR = Path(distill.__file__).resolve().parent


def _git(*args: str, strip: bool = True) -> str | None:
    """A git command's output in the package's directory (stripped unless asked not to), or None
    when git cannot answer."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True
        )
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):  # the last: a diff of non-UTF-8 text
        return None
    return done.stdout.strip() if strip else done.stdout


def _uncommitted_digest() -> str | None:
    """A digest of the package's uncommitted changes (the diff against HEAD and the untracked
    files), so two stages made by the same edited code are known to be one code."""
    diff = _git("diff", "HEAD", "--binary", "--", ".", strip=False)
    untracked = _git("ls-files", "--others", "--exclude-standard", "-z", "--", ".", strip=False)
    if diff is None or untracked is None:
        return None
    digest = hashlib.sha256(diff.encode("utf-8"))
    try:
        for name in sorted(filter(None, untracked.split("\0"))):
            digest.update(name.encode("utf-8") + b"\0" + (PACKAGE_DIR / name).read_bytes())
    except OSError:  # a file gone or unreadable since git listed it: the edits cannot be named
        return None
    return digest.hexdigest()


@cache
def _code() -> tuple[tuple[str, Any], ...]:
    """Package version and git state; frozen so the cached value cannot be changed by a caller."""
    top = _git("rev-parse", "--show-toplevel")
    # Only the checkout the package lives in at its top level counts: an installed copy under a
    # virtualenv inside some other repository must not report that repository's commit.
    in_checkout = top is not None and Path(top).resolve() == PACKAGE_DIR.parent
    # dirty means the package itself differs from its commit (uncommitted docs or tests do not
    # count); git runs inside the package, so "." is the package
    status = _git("status", "--porcelain", "--", ".") if in_checkout else None
    dirty = None if status is None else status != ""
    return (
        ("package_version", distill.__version__),
        ("git_commit", _git("rev-parse", "HEAD") if in_checkout else None),
        ("git_dirty", dirty),
        ("code_tree", _git("rev-parse", f"HEAD:{PACKAGE_DIR.name}") if in_checkout else None),
        ("uncommitted_digest", _uncommitted_digest() if dirty else None),
    )


def code() -> dict[str, Any]:
    """{package_version, git_commit, git_dirty, code_tree, uncommitted_digest}: code_tree is git's
    tree id of the committed `distill` package, equal across commits that change only docs, tests
    or tools; uncommitted_digest tells apart edits made on top of it (None when there are none)."""
    return dict(_code())


def code_identity(made: dict[str, Any], name: str) -> tuple[Any, ...]:
    """What makes two records' code the same: the committed tree and the digest of uncommitted
    changes. A record of edited code without a digest (older markers) is code of its own (`name`)."""
    dirty = bool(made.get("git_dirty"))
    digest = made.get("uncommitted_digest") if dirty else None
    return made.get("code_tree"), digest, name if dirty and digest is None else None


def same_code(then: dict[str, Any], now: dict[str, Any]) -> bool:
    return code_identity(then, "then") == code_identity(now, "now")


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


def mixed_code(markers: dict[str, dict[str, Any]]) -> dict[str, str | None] | None:
    """Stage -> the commit that made it, when the stages come from more than one code; else None.

    A marker without provenance (written before distill recorded it) counts as code of its own, and
    so does one made by edited package code without a digest of the edits (`code_identity`).
    """
    made_by = {name: marker.get("provenance") or {} for name, marker in markers.items()}
    if len({code_identity(made, name) for name, made in made_by.items()}) <= 1:
        return None
    return {
        name: f"{made['git_commit']}{'+uncommitted' if made.get('git_dirty') else ''}" if made.get("git_commit") else None
        for name, made in made_by.items()
    }


def commits_text(mixed: dict[str, str | None]) -> str:
    """`prepare 1a2b3c4d5e6f, report unknown`: each stage with its short commit."""
    # commit[40:] keeps a "+uncommitted" mark after the 40-digit id
    return ", ".join(f"{stage} {commit[:12] + commit[40:] if commit else 'unknown'}" for stage, commit in mixed.items())


def mixed_code_text(mixed: dict[str, str | None]) -> str:
    """`stages made by different code (prepare 1a2b3c4d5e6f, report ...)`, for notes and tables."""
    return f"stages made by different code ({commits_text(mixed)})"


def mixed_code_warning(run_dir: str, mixed: dict[str, str | None]) -> str:
    """A table's warning line for one run whose stages came from different code."""
    return f"**{MIXED_MARK}**: {run_dir} has {mixed_code_text(mixed)}."


def stage_markers(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Stage name -> its done/NAME.json marker (config hash, metrics, seconds, finish time)."""
    paths = sorted((run_dir / "done").glob("*.json"))
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in paths}
