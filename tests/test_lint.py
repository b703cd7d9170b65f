"""The source passes the linter, the formatter and the type checker as configured in pyproject.toml
(ruff and mypy are test dependencies: the README's install step brings them)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tool(name: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    executable = shutil.which(name)
    assert executable, f"{name} is not installed: pip install -e '.[test]'"
    return subprocess.run([executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_the_source_has_no_lint_findings():
    done = tool("ruff", "check", "src")
    assert done.returncode == 0, done.stdout[-3000:]


def test_the_source_is_formatted():
    done = tool("ruff", "format", "--check", "src")
    assert done.returncode == 0, done.stdout[-3000:]


def test_the_source_type_checks():
    done = tool("mypy", timeout=600)  # files and settings: [tool.mypy] in pyproject.toml
    assert done.returncode == 0, done.stdout[-3000:]
