"""The source passes the linter and the formatter as configured in pyproject.toml (ruff is a test
dependency: the README's install step brings it)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff(*args: str) -> subprocess.CompletedProcess:
    executable = shutil.which("ruff")
    assert executable, "ruff is not installed: pip install -e '.[test]'"
    return subprocess.run([executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_source_has_no_lint_findings():
    done = ruff("check", "src")
    assert done.returncode == 0, done.stdout[-3000:]


def test_the_source_is_formatted():
    done = ruff("format", "--check", "src")
    assert done.returncode == 0, done.stdout[-3000:]
