"""What stagewise wrote into a folder: the only entries it ever removes or overwrites there.

Each stage folder (and a study's report folder) holds ``.stagewise-written.json``: the top-level
names stagewise wrote, recorded *before* they are written where the name is known in advance (a
checkpoint about to be saved, a transform's rows, a report), and by listing the folder where a
library writes several files (the final ``save_pretrained``: while it runs the journal says so,
and names of the kind it writes count as ours). A temp file ``.NAME.*`` of a recorded NAME is
ours too. Clearing a folder removes recorded entries one by one; anything else stops the run
with one line (``--force`` takes the folder over as before).
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .distributed import is_main_process
from .errors import OutputError
from .io import atomic_write_json, file_sha256

JOURNAL = ".stagewise-written.json"
# what save_pretrained / the Trainer write at a stage's end (trusted only while that save is recorded as running)
SAVED_BY_LIBRARIES = (
    "*.safetensors",
    "*.json",
    "*.jinja",
    "merges.txt",
    "vocab.*",
    "*.model",
    "tokenizer*",
    "adapter",
    "README.md",
    "training_args.bin",
)


class Written:
    """The journal of one folder (every rank reads it, rank 0 writes it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.names: dict[str, str | None] = {}  # name -> sha256 when the content must stay as written
        self.saving = False
        path = folder / JOURNAL
        if path.is_file() and not path.is_symlink():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self.names = {str(k): v for k, v in data.get("names", {}).items()}
                self.saving = bool(data.get("saving", False))
            except (OSError, ValueError, AttributeError):
                pass  # an unreadable journal records nothing: the folder's content is then foreign

    def _begin(self) -> None:
        """Run the folder's pending start (see :func:`before_first_write`) and re-read the journal."""
        start = _PENDING.pop(self.folder.resolve(), None)
        if start is not None:
            start()
            fresh = Written(self.folder)
            self.names, self.saving = fresh.names, fresh.saving

    def _save(self) -> None:
        if is_main_process():
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.folder / JOURNAL, {"names": self.names, "saving": self.saving})

    def record(self, *names: str) -> None:
        """Names about to be written (or just written) by stagewise."""
        self._begin()
        if not names or any(name not in self.names for name in names):
            self.names.update({name: None for name in names if name not in self.names})
            self._save()

    def record_content(self, name: str) -> None:
        """A file just written whose content must stay as written to be overwritten later (a report)."""
        self._begin()
        self.names[name] = file_sha256(self.folder / name)
        self._save()

    def begin_library_save(self) -> None:
        self._begin()
        self.saving = True
        self._save()

    def record_present(self) -> None:
        """Everything now in the folder, written by this stage and the libraries it drives."""
        self._begin()
        self.names.update({p.name: self.names.get(p.name) for p in self.folder.iterdir() if p.name != JOURNAL})
        self._save()

    def end_library_save(self) -> None:
        """After a library's save: everything now in the folder is ours."""
        self.saving = False
        self.record_present()

    def is_ours(self, name: str) -> bool:
        if name == JOURNAL or name in self.names and self._unchanged(name):
            return True
        if any(name.startswith(f".{ours}.") for ours in (JOURNAL, *self.names)):  # a temp file left by a killed write
            return True
        return self.saving and any(fnmatch.fnmatchcase(name, pattern) for pattern in SAVED_BY_LIBRARIES)

    def _unchanged(self, name: str) -> bool:
        digest = self.names[name]
        path = self.folder / name
        return digest is None or not path.is_file() or file_sha256(path) == digest

    def foreign(self) -> list[str]:
        """Entries of the folder stagewise did not write (or a recorded report edited since)."""
        if not self.folder.is_dir() or not is_main_process():
            return []
        return sorted(p.name for p in self.folder.iterdir() if not self.is_ours(p.name))

    def check(self, what: str) -> None:
        """One line when the folder holds anything stagewise did not write."""
        foreign = self.foreign()
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise OutputError(
                f"{self.folder}: holds {shown}, which stagewise did not write, and {what}; move it away or pass --force"
            )

    def clear(self) -> None:
        """Remove what stagewise wrote, entry by entry (call :meth:`check` first)."""
        if not is_main_process() or not self.folder.is_dir():
            return
        for path in sorted(self.folder.iterdir()):
            if path.name != JOURNAL and self.is_ours(path.name):
                remove(path)
        self.names, self.saving = {}, False
        self._save()


_PENDING: dict[Path, Callable[[], None]] = {}


@contextmanager
def before_first_write(folder: Path, start: Callable[[], None]) -> Iterator[Callable[[], bool]]:
    """Run ``start`` (clear a stale stage folder, mark the stage running) right before stagewise
    first writes into ``folder`` inside the block, so a stage that fails before writing anything
    (a bad selector target, say) leaves the earlier run's folder and manifest as they were.
    Yields a function telling whether ``start`` has run."""
    started: list[bool] = []

    def run() -> None:
        started.append(True)
        start()

    _PENDING[folder.resolve()] = run
    try:
        yield lambda: bool(started)
    finally:
        _PENDING.pop(folder.resolve(), None)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def stage_written(folder: Path, entry: dict[str, Any] | None) -> Written:
    """A stage folder's journal; for a folder written before journals existed, what its manifest
    entry recorded (its files and their folders) and the checkpoints carrying stagewise's seal."""
    written = Written(folder)
    if is_main_process() and not (folder / JOURNAL).exists() and folder.is_dir():
        outputs = (entry or {}).get("outputs") or {}
        recorded = list(outputs.get("files", [])) + [name.split("/")[0] for name in outputs.get("sha256", {})]
        sealed = [p.name for p in folder.glob("checkpoint-*") if (p / "stagewise-complete.json").is_file()]
        written.names.update(dict.fromkeys(map(str, recorded + sealed)))
    return written
