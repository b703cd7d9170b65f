"""The run manifest's schema: what every run folder's ``manifest.json`` holds.

The engine builds these records while it runs and writes them through :class:`RunManifest`; the
run report and the study read attributes, never string keys. ``schema_version`` is 2 since this
schema; manifests written before it (no version) load as version 1, which had the same fields.
Unknown keys are kept (``extra="allow"``), so a manifest from a newer stagewise still loads.
Probe results (``evaluation``) stay plain JSON: their shape is each metric's own.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 2


class Record(BaseModel):
    model_config = ConfigDict(extra="allow")


class DataInput(Record):
    source: str
    rows: int
    fingerprint: str | None = None


class StageInputs(Record):
    model: str  # the entering model: the base model's name, or the folder of the stage handing it on
    data: dict[str, DataInput] = Field(default_factory=dict)


class StageOutputs(Record):
    dir: str
    files: list[str] = Field(default_factory=list)
    sha256: dict[str, str] = Field(default_factory=dict)


class CurvePoint(Record):
    """Probe scores during a stage (``evaluation.every``)."""

    step: int
    epoch: float | None = None
    evaluation: dict[str, Any]
    eval_time_s: float = 0.0
    evaluation_key: str | None = None  # the evaluation settings it was scored under (absent before they were kept)


class StageRecord(Record):
    index: int
    name: str
    config_hash: str
    status: str  # running, trained, completed
    inputs: StageInputs
    outputs: StageOutputs
    trainable_params: int | None = None
    total_params: int | None = None
    trainable_fraction: float | None = None
    train_rows: int | None = None
    train_tokens: int | None = None
    wall_time_s: float = 0.0
    tokens_per_s: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)  # the trainer's own (train_loss, train_runtime, ...)
    resumed_from: str | None = None
    transforms: list[dict[str, Any]] = Field(default_factory=list)
    merge: dict[str, Any] | None = None
    data_mixture: dict[str, Any] | None = None
    curve: list[CurvePoint] = Field(default_factory=list)
    guard: dict[str, Any] | None = None  # evaluation.guard's checks, and why the stage stopped
    kl_to_entering: dict[str, Any] | None = None  # the forgetting predictor (eval.kl)
    evaluation: dict[str, Any] | None = None  # probe results after the stage: {group: {probe: result}}
    eval_time_s: float = 0.0
    evaluation_key: str | None = None


class RunManifest(Record):
    schema_version: int = 1  # absent in manifests written before the typed schema
    stagewise_version: str
    versions: dict[str, str | None] = Field(default_factory=dict)  # torch, transformers, peft, trl, ... (last run)
    recipe_path: str | None = None
    recipe: dict[str, Any] = Field(default_factory=dict)  # the recipe as run (JSON of config.Recipe)
    model: str | None = None
    created: str | None = None
    updated: str | None = None
    stages: list[StageRecord] = Field(default_factory=list)
    owned_dirs: list[str] = Field(default_factory=list)
    base_evaluation: dict[str, Any] | None = None
    base_eval_time_s: float = 0.0


def as_manifest(value: RunManifest | dict[str, Any]) -> RunManifest:
    """A manifest as read from ``manifest.json`` (or held by a run result) in its typed form."""
    return value if isinstance(value, RunManifest) else RunManifest.model_validate(value)
