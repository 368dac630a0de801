"""Under CI=true a skipped test fails (the dev extra installs every optional dependency)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize(("ci", "expected"), [("true", "1 failed"), ("", "1 skipped")])
def test_a_skip_fails_only_under_ci(tmp_path, ci, expected):
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_optional.py").write_text(
        "import pytest\n\ndef test_needs_it():\n    pytest.skip('optional package missing')\n", encoding="utf-8"
    )
    env = {**os.environ, "CI": ci}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert expected in done.stdout, done.stdout
