"""Atomic file writes: a crash mid-write never leaves a half-written manifest or report.

Caches and finished outputs carry a content hash, checked before they are reused, so an
edited, truncated or bit-flipped file is recomputed instead of trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

UNSET_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})")


def expanded_path(value: str) -> str:
    """An output path as the user meant it: a leading ``~`` is their home folder and ``$VAR`` or
    ``${VAR}`` an environment variable, expanded here, once (transformers' TrainingArguments expands
    ``~`` itself, so a literal ``~`` folder would split one run over two folders). A variable that is
    not set is refused rather than kept as a literal folder name."""
    expanded = os.path.expandvars(os.path.expanduser(value))
    unset = UNSET_VARIABLE.search(expanded)
    if unset is not None:
        raise ValueError(f"environment variable {unset.group()} is not set (set it, or write the folder out)")
    return expanded


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing parent of ``path`` when it is a file (``path`` can then never be made),
    else None."""
    parent = next((p for p in path.parents if p.exists()), None)
    return parent if parent is not None and not parent.is_dir() else None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


MAX_INT_DIGITS = 4300  # Python's own limit for int(str): a longer integer is no data we use


class JSONProblem(ValueError):
    """Why a JSON text was refused, with its line (1 when the whole text is at fault)."""

    def __init__(self, line: int, why: str) -> None:
        super().__init__(why)
        self.line, self.why = line, why


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JSONProblem(1, f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _no_constant(name: str) -> Any:
    raise JSONProblem(1, f"{name} is not a JSON number")


def parse_json(text: str) -> Any:
    """JSON as data from outside (config.json, data files, per-item scores): standard JSON only -
    NaN/Infinity, integers over 4,300 digits and nesting past the interpreter's recursion limit are
    refused as :class:`JSONProblem` (a ValueError with the line), never a traceback or a hang."""
    try:
        return json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise JSONProblem(err.lineno, f"invalid JSON ({err.msg})") from None
    except RecursionError:
        raise JSONProblem(1, "JSON nested too deeply") from None


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def json_digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def write_verified_json(path: str | os.PathLike, payload: Any) -> None:
    """``payload`` with its SHA-256, written atomically (see :func:`read_verified_json`)."""
    atomic_write_json(path, {"sha256": json_digest(payload), "payload": payload})


def read_verified_json(path: str | os.PathLike) -> tuple[Any, str | None]:
    """(payload, None) when the file holds intact verified JSON, else (None, why it was refused)."""
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"unreadable ({type(err).__name__})"
    if not isinstance(data, dict) or "payload" not in data or data.get("sha256") != json_digest(data["payload"]):
        return None, "content does not match its hash (edited or corrupted)"
    return data["payload"], None


def file_sha256(path: str | os.PathLike, chunk: int = 2**22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative POSIX paths), skipping top-level names in ``skip``."""
    return {
        path.relative_to(folder).as_posix(): file_sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).parts[0] not in skip
    }


def save_figure(fig: Any, path: str | os.PathLike, **savefig: Any) -> None:
    """A matplotlib figure written atomically (temp file beside it, then renamed) and closed."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, **savefig)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Fill a staging folder beside ``target``; it replaces ``target`` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
