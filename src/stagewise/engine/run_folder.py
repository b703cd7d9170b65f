"""The output folder of a run: checked before any work, locked while a run uses it.

stagewise never deletes or overwrites what it did not write: a folder that holds files
but no stagewise manifest, a stage folder the manifest does not own, or a manifest that
is not stagewise's is refused with one line (``--force`` takes the folder over). One run
at a time per folder: the kernel's exclusive lock on ``.stagewise.lock`` (which also records
the holder's PID and host for the message a second run prints).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..distributed import main_decides
from ..errors import OutputError
from ..io import file_in_the_way, read_json
from .manifest import MANIFEST, now

LOCK = ".stagewise.lock"


def check_writable_folder(path: Path) -> None:
    """Create ``path`` if needed; one line if it is a file, under a file, or not writable."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"output_dir {path}: is a file, expected a folder")
    blocked = file_in_the_way(path)
    if blocked is not None:
        raise OutputError(f"output_dir {path}: {blocked} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise OutputError(f"output_dir {path}: not writable ({err.strerror or type(err).__name__})") from None


def check_no_links(path: Path, names: list[str]) -> None:
    """Nothing stagewise writes under ``path`` may go through a link: a linked stage or eval
    folder (anywhere under ``eval/``) would carry the writes outside the output folder."""
    candidates = [path / name for name in names] + [path / "eval"]
    if (path / "eval").is_dir() and not (path / "eval").is_symlink():
        candidates += list((path / "eval").rglob("*"))
    for candidate in candidates:
        if candidate.is_symlink():
            raise OutputError(
                f"{candidate}: is a link; stagewise writes only inside the output folder "
                "(replace the link with a folder, or choose another output_dir)"
            )


def read_manifest(path: Path) -> dict[str, Any]:
    """The previous run's manifest, or {} when there is none; one line when it is not stagewise's."""
    file = path / MANIFEST
    if not file.exists():
        return {}
    fresh = "move it away or pass --force to start this folder afresh"
    try:
        data = read_json(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise OutputError(f"{file}: not a readable JSON manifest ({type(err).__name__}); {fresh}") from None
    if (
        not isinstance(data, dict)
        or "stagewise_version" not in data
        or not isinstance(data.get("stages"), list)
        or not all(isinstance(stage, dict) for stage in data["stages"])
    ):
        raise OutputError(
            f"{file}: not a stagewise manifest (expected an object with stagewise_version and stages); {fresh}"
        )
    return data


def check_foreign_content(path: Path, manifest: dict[str, Any]) -> None:
    """A folder with files but no manifest was not written by stagewise: never write into it."""
    if manifest:
        return
    ours = (LOCK, f".{MANIFEST}.")  # the lock, and a manifest temp file left by a run killed mid-write
    foreign = sorted(p.name for p in path.iterdir() if not p.name.startswith(ours))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise OutputError(
            f"output_dir {path}: holds files stagewise did not write ({shown}); "
            "choose a new or empty folder, or pass --force"
        )


@contextmanager
def run_lock(path: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold ``path/.stagewise.lock`` for the block. The kernel's exclusive ``flock`` on the file is
    the lock: two processes can never both hold it, and it is released when its holder dies, so
    a lock left by a killed run is simply taken (the file's recorded holder is logged). Rank 0
    takes it for a multi-process run and tells the other ranks whether it did."""
    handle = main_decides(lambda: acquire_lock(path / LOCK, log))
    try:
        yield
    finally:
        if handle is not None:
            release_lock(path / LOCK, handle)


def acquire_lock(lock: Path, log: Callable[[str], None]) -> int:
    """An open descriptor of ``lock`` holding its exclusive flock, with this process recorded in it."""
    import fcntl

    if lock.is_symlink() or (lock.exists() and not lock.is_file()):
        raise OutputError(f"{lock}: expected stagewise's lock file, found a folder or link; move it away")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _recorded_holder(fd)
            os.close(fd)
            raise OutputError(
                f"output_dir {lock.parent}: in use by another stagewise run (pid {holder.get('pid', '?')} "
                f"on {holder.get('host', '?')}, since {holder.get('since', '?')}); wait for it to finish"
            ) from None
        try:  # the holder before us may have removed the file between our open and our flock: retry on the new one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _recorded_holder(fd)
    if _alive_here(previous):
        # the flock is free, yet its recorded holder runs on this host (a file system whose flock
        # is not shared, or a holder that lost its descriptor): held all the same
        os.close(fd)
        raise OutputError(
            f"output_dir {lock.parent}: {LOCK} names a live process on this host (pid {previous['pid']}, since "
            f"{previous.get('since', '?')}); wait for it, or delete the file if that process is not a stagewise run"
        )
    if previous:
        log(f"[lock] taking over {lock}: its holder (pid {previous.get('pid', '?')}) is gone")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": now()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    return fd


def _alive_here(holder: dict[str, Any]) -> bool:
    """Whether the recorded holder is another process alive on this host."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _recorded_holder(fd: int) -> dict[str, Any]:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def release_lock(lock: Path, fd: int) -> None:
    """Remove the lock file while still holding it (a waiter that opened it retries on a new file)."""
    try:
        lock.unlink()
    except OSError:
        pass
    os.close(fd)
