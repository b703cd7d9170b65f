"""The output folder of a run: checked before any work, locked while a run uses it.

stagewise never deletes or overwrites what it did not write: a folder that holds files
but no stagewise manifest, a stage folder the manifest does not own, or a manifest that
is not stagewise's is refused with one line (``--force`` takes the folder over). One run
at a time per folder: a lock file records the holder's PID, host and process start time;
a lock whose process is gone is taken over with a log line.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..distributed import is_main_process
from ..errors import OutputError
from ..io import atomic_write_json, read_json
from .manifest import MANIFEST, now

LOCK = ".stagewise.lock"


def check_writable_folder(path: Path) -> None:
    """Create ``path`` if needed; one line if it is a file, under a file, or not writable."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"output_dir {path}: is a file, expected a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"output_dir {path}: {parent} is a file, not a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise OutputError(f"output_dir {path}: not writable ({err.strerror or type(err).__name__})") from None


def read_manifest(path: Path) -> dict[str, Any]:
    """The previous run's manifest, or {} when there is none; one line when it is not stagewise's."""
    file = path / MANIFEST
    if not file.exists():
        return {}
    fresh = f"move it away or pass --force to start this folder afresh"
    try:
        data = read_json(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OutputError(f"{file}: not a readable JSON manifest ({type(err).__name__}); {fresh}") from None
    if (not isinstance(data, dict) or "stagewise_version" not in data or not isinstance(data.get("stages"), list)
            or not all(isinstance(stage, dict) for stage in data["stages"])):
        raise OutputError(f"{file}: not a stagewise manifest (expected an object with stagewise_version and stages); {fresh}")
    return data


def check_foreign_content(path: Path, manifest: dict[str, Any]) -> None:
    """A folder with files but no manifest was not written by stagewise: never write into it."""
    if manifest:
        return
    ours = (LOCK, f".{MANIFEST}.")  # the lock, and a manifest temp file left by a run killed mid-write
    foreign = sorted(p.name for p in path.iterdir() if not p.name.startswith(ours))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise OutputError(f"output_dir {path}: holds files stagewise did not write ({shown}); "
                          "choose a new or empty folder, or pass --force")


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (so a reused PID is not mistaken for the holder)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _holder_alive(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: cannot be checked, assume alive
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = holder.get("started_ticks")
    return started is None or _process_start(pid) in (None, started)


@contextmanager
def run_lock(path: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold ``path/.stagewise.lock`` for the block (main process only)."""
    if not is_main_process():
        yield
        return
    lock = path / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": now(),
          "started_ticks": _process_start(os.getpid())}
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = read_json(lock)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                holder = {}
            if isinstance(holder, dict) and holder and _holder_alive(holder):
                raise OutputError(f"output_dir {path}: in use by another stagewise run (pid {holder.get('pid')} on "
                                  f"{holder.get('host')}, since {holder.get('since')}); wait for it to finish") from None
            log(f"[lock] taking over {lock}: its holder (pid {holder.get('pid') if isinstance(holder, dict) else '?'}) is gone")
            atomic_write_json(lock, me)
            break
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        break
    try:
        yield
    finally:
        try:
            if read_json(lock).get("pid") == os.getpid():
                lock.unlink()
        except (OSError, ValueError, AttributeError):
            pass
