"""distill.provenance: git state once per process, and never a failed run when git cannot answer."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import distill
from distill import provenance

NO_GIT = {"package_version": distill.__version__, "git_commit": None, "git_dirty": None, "code_tree": None, "uncommitted_digest": None}


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Each test asks git anew; later tests get the real checkout's answer again."""
    provenance._code.cache_clear()
    yield
    provenance._code.cache_clear()


@pytest.mark.parametrize(
    "error",
    [FileNotFoundError("git"), subprocess.TimeoutExpired("git", 5.0), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")],
)
def test_git_missing_or_hanging_gives_none_not_an_error(monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(subprocess, "run", fail)
    assert provenance.code() == NO_GIT


def test_outside_a_checkout_the_git_fields_are_none(monkeypatch, tmp_path):
    (tmp_path / "distill").mkdir()
    monkeypatch.setattr(provenance, "PACKAGE_DIR", tmp_path / "distill")
    assert provenance.code() == NO_GIT


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_an_installed_copy_inside_another_repository_does_not_report_that_repository(monkeypatch, tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    package = tmp_path / ".venv" / "site-packages" / "distill"
    package.mkdir(parents=True)
    monkeypatch.setattr(provenance, "PACKAGE_DIR", package)
    assert provenance.code() == NO_GIT


def test_git_is_asked_once_per_process_and_callers_get_their_own_copy(monkeypatch):
    calls = []
    real_run = subprocess.run

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real_run(*args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counted)
    first = provenance.code()
    first["git_commit"] = "changed by a caller"
    asked = len(calls)
    assert provenance.code()["git_commit"] != "changed by a caller" and len(calls) == asked


def test_shareable_writes_paths_inside_the_root_relative_and_leaves_the_rest(tmp_path):
    made = {
        "git_commit": "abc",
        "recipe": {
            "teacher": {"model": str(tmp_path / "runs" / "tweets" / "teacher"), "pooling": "cls"},
            "task": {"dataset": "/elsewhere/data.csv", "split": [0.8, 0.1, 0.1]},
            "run": {"out_dir": str(tmp_path)},
            "notes": ["/elsewhere", str(tmp_path / "a.txt")],
        },
    }
    assert provenance.shareable(made, tmp_path) == {
        "git_commit": "abc",
        "recipe": {
            "teacher": {"model": "runs/tweets/teacher", "pooling": "cls"},
            "task": {"dataset": "/elsewhere/data.csv", "split": [0.8, 0.1, 0.1]},
            "run": {"out_dir": "."},
            "notes": ["/elsewhere", "a.txt"],
        },
    }
    assert made["recipe"]["teacher"]["model"].startswith(str(tmp_path))  # the input is not changed


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_edits_to_the_package_are_dirty_with_a_digest_that_tells_them_apart(monkeypatch, tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True)

    package = tmp_path / "distill"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("docs\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    monkeypatch.setattr(provenance, "PACKAGE_DIR", package)

    def code() -> dict:
        provenance._code.cache_clear()
        return provenance.code()

    clean = code()
    assert clean["git_dirty"] is False and clean["uncommitted_digest"] is None and clean["code_tree"]
    (tmp_path / "README.md").write_text("other docs\n")
    assert code() == clean  # edits outside the package do not count
    (package / "a.py").write_text("x = 2\n")
    edited = code()
    assert edited["git_dirty"] is True and edited["code_tree"] == clean["code_tree"]
    assert code()["uncommitted_digest"] == edited["uncommitted_digest"]  # the same edits, the same digest
    assert provenance.same_code(edited, code()) and not provenance.same_code(edited, clean)
    (package / "b.py").write_text("y = 1\n")  # an untracked module is code too
    with_new_file = code()
    assert with_new_file["uncommitted_digest"] != edited["uncommitted_digest"]
    (package / "a.py").write_text("x = 3\n")
    assert code()["uncommitted_digest"] not in (edited["uncommitted_digest"], with_new_file["uncommitted_digest"])
