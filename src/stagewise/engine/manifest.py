"""The run manifest: every stage's inputs, outputs (with content hashes), config hash and metrics.

Written atomically after every change of a stage's status, so an interrupted run
leaves a manifest that says exactly which stages finished. It also lists the stage
folders stagewise created in the output folder (``owned_dirs``): only those are ever removed.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from ..distributed import is_main_process
from ..io import atomic_write_json
from ..manifest import SCHEMA_VERSION, RunManifest

MANIFEST = "manifest.json"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Manifest:
    def __init__(self, output_dir: Path, header: dict[str, Any], previous: dict[str, Any], n_stages: int) -> None:
        """``previous``: the folder's earlier manifest, already checked (``run_folder.read_manifest``).

        In a new folder it is saved at once: the manifest is the first thing a run writes there, so
        a folder holding a run's other files always has one (an existing manifest is left as it is
        until a stage or the base scores change). It keeps the earlier run's stage records and base
        scores, each replaced as its stage is reused or retrained, so a run stopped early forgets nothing.
        """
        self.path = output_dir / MANIFEST
        self.previous_stages: list[dict[str, Any]] = previous.get("stages", [])
        self.owned: set[str] = set(previous.get("owned_dirs", [])) | {
            Path(stage["outputs"]["dir"]).name
            for stage in self.previous_stages
            if isinstance(stage.get("outputs"), dict) and "dir" in stage["outputs"]
        }
        self.data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            **header,
            "created": previous.get("created", now()),
            "stages": [dict(stage) for stage in self.previous_stages[:n_stages]],
            "owned_dirs": sorted(self.owned),
            **{key: previous[key] for key in ("base_evaluation", "base_eval_time_s") if key in previous},
        }
        if not previous:
            self.save()

    def previous(self, index: int) -> dict[str, Any] | None:
        return self.previous_stages[index] if index < len(self.previous_stages) else None

    def set_stage(self, index: int, entry: dict[str, Any]) -> None:
        stages = self.data["stages"]
        while len(stages) <= index:
            stages.append({})
        stages[index] = entry
        self.save()

    def set_base(self, scores: dict[str, Any] | None) -> None:
        """The base model's scores, saved when they change (a run whose stages are all reused and
        rescored under new probes writes no stage after this, so they would be lost otherwise)."""
        if self.data.get("base_evaluation") != scores:
            self.data["base_evaluation"] = scores
            self.save()

    def own(self, folder_name: str) -> None:
        """Record a stage folder stagewise is about to create (saved with the next ``set_stage``)."""
        self.owned.add(folder_name)
        self.data["owned_dirs"] = sorted(self.owned)

    def record(self) -> RunManifest:
        """The manifest as written: checked against the schema (a record the engine got wrong fails
        here, not in a later report)."""
        return RunManifest.model_validate(self.data)

    def save(self) -> None:
        """Only the main process writes (every rank keeps the same in-memory manifest)."""
        self.data["updated"] = now()
        if is_main_process():
            atomic_write_json(self.path, self.record().model_dump(mode="json", exclude_unset=True))
