"""The run manifest: every stage's inputs, outputs, config hash and metrics.

Written atomically after every change of a stage's status, so an interrupted run
leaves a manifest that says exactly which stages finished.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from ..distributed import is_main_process
from ..io import atomic_write_json, read_json

MANIFEST = "manifest.json"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Manifest:
    def __init__(self, output_dir: Path, header: dict[str, Any]) -> None:
        self.path = output_dir / MANIFEST
        previous = read_json(self.path) if self.path.is_file() else {}
        self.previous_stages: list[dict[str, Any]] = previous.get("stages", [])
        self.data: dict[str, Any] = {**header, "created": previous.get("created", now()), "stages": []}

    def previous(self, index: int) -> dict[str, Any] | None:
        return self.previous_stages[index] if index < len(self.previous_stages) else None

    def set_stage(self, index: int, entry: dict[str, Any]) -> None:
        stages = self.data["stages"]
        while len(stages) <= index:
            stages.append({})
        stages[index] = entry
        self.save()

    def save(self) -> None:
        """Only the main process writes (every rank keeps the same in-memory manifest)."""
        self.data["updated"] = now()
        if is_main_process():
            atomic_write_json(self.path, self.data)

