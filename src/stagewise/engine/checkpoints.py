"""Crash-safe resume: a checkpoint counts only once it is complete.

The HF Trainer writes a checkpoint file by file (weights, optimizer, scheduler, RNG,
trainer_state.json last) and deletes the older checkpoint right after, so a kill at the
wrong instant leaves a half-written newest checkpoint that ``get_last_checkpoint`` would
pick. :class:`CheckpointSeal` writes ``stagewise-complete.json`` (every file and its size)
once the Trainer has finished a checkpoint; :func:`last_complete_checkpoint` resumes from
the newest sealed checkpoint whose files are all there at their recorded sizes, and removes
the incomplete ones (stagewise wrote them), saying so in one log line each.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from ..distributed import is_main_process
from ..io import atomic_write_json, file_sha256, read_json
from ..written import Written

SEAL = "stagewise-complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _files(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != SEAL
    }


def _digests(folder: Path) -> dict[str, list[Any]]:
    """Each file's size and SHA-256, read right after the Trainer wrote it (from the page cache)."""
    return {name: [size, file_sha256(folder / name)] for name, size in _files(folder).items()}


class CheckpointSeal(TrainerCallback):
    """Records each checkpoint in the stage folder's journal before the Trainer writes it, and
    marks it complete after the Trainer has written all of it."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if control.should_save:  # set by the Trainer's flow callback, which runs first
            # the checkpoint, and the model card TRL's trainers write beside it
            Written(Path(args.output_dir)).record(f"checkpoint-{state.global_step}", "README.md")

    on_epoch_end = on_step_end  # save_strategy "epoch" decides to save here, not at a step's end

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if is_main_process() and folder.is_dir():
            atomic_write_json(folder / SEAL, {"step": state.global_step, "files": _digests(folder)})
            Written(Path(args.output_dir)).record_present()  # whatever the Trainer wrote beside it


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (unsealed, a file missing, resized or changed since
    it was sealed), or None. Only a checkpoint that passes is unpickled (optimizer, scheduler, RNG)."""
    try:
        sealed = read_json(folder / SEAL)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "incomplete (the run was stopped while writing it)"
    if not isinstance(sealed, dict):
        return "its seal is damaged"
    present = _files(folder)
    for name, record in sealed.items():
        size, digest = (record, None) if isinstance(record, int) else (record[0], record[1])  # older seals: sizes
        if present.get(name) != size:
            return f"incomplete ({name} is missing or cut short)"
        if digest is not None and file_sha256(folder / name) != digest:
            return f"corrupted ({name} differs from what was written)"
    return None


def is_complete(folder: Path) -> bool:
    return checkpoint_problem(folder) is None


def last_complete_checkpoint(stage_dir: Path, log: Callable[[str], None]) -> str | None:
    """The newest complete ``checkpoint-N`` in ``stage_dir``; incomplete newer ones are removed."""
    written = Written(stage_dir)  # every rank reads the same journal and seals, so all resume alike
    found = sorted(
        (
            (int(m.group(1)), p)
            for p in stage_dir.glob("checkpoint-*")
            if p.is_dir() and (m := _CHECKPOINT.match(p.name)) and written.is_ours(p.name)
        ),
        reverse=True,
    )
    for _, folder in found:
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        log(f"[resume] {folder.name} is {problem}: removed, resuming from an earlier checkpoint or the stage start")
        if is_main_process():
            shutil.rmtree(folder, ignore_errors=True)
    return None


def remove_checkpoints(stage_dir: Path) -> None:
    """The stage's own checkpoints, once its final weights are written."""
    written = Written(stage_dir)
    for folder in stage_dir.glob("checkpoint-*"):
        if written.is_ours(folder.name) and is_main_process():
            shutil.rmtree(folder, ignore_errors=True)
