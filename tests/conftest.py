"""Shared fixtures: tiny random models (built from configs) and recipe helpers."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
if os.environ["HF_HUB_OFFLINE"] == "1":  # a pytest plugin may have imported huggingface_hub before this file ran
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True

from stagewise.config import recipe_from_dict  # noqa: E402
from stagewise.engine import run_recipe  # noqa: E402

INSTRUCTION_ROWS = [
    {"instruction": "say hi", "output": "hi"},
    {"instruction": "say bye", "output": "bye"},
    {"instruction": "count", "input": "to three", "output": "1 2 3"},
    {"instruction": "spell cat", "output": "c a t"},
]
CLASSIFICATION_ROWS = [
    {"text": "good movie", "label": "pos"}, {"text": "bad movie", "label": "neg"},
    {"text": "great fun", "label": "pos"}, {"text": "awful plot", "label": "neg"},
]


def make_recipe(tmp_path: Path, stages: list[dict[str, Any]], model: Any = "tiny-llama",
                datasets: dict[str, Any] | None = None, **top: Any):
    data = {
        "model": model,
        "datasets": datasets or {"sft": {"format": "instruction", "template": "alpaca", "rows": INSTRUCTION_ROWS}},
        "stages": stages,
        "output_dir": str(tmp_path / "run"),
        **top,
    }
    return recipe_from_dict(data)


def run(recipe, callbacks=None):
    return run_recipe(recipe, callbacks=callbacks, log=lambda message: None)


class Snapshot(TrainerCallback):
    """Clones every parameter when training starts (the weights entering the stage)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.states.append({n: p.detach().clone() for n, p in model.named_parameters()})


class CrashAfterSave(TrainerCallback):
    """Simulates a killed run: raises right after the checkpoint at ``step`` is written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated kill")


MEASURED_PEAKS: dict[str, float] = {}  # the machine's matmul peaks, measured once (2 s each) for every test


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own cache for converted models, base-model scores and benchmarks; the
    machine's measured matmul peak (for MFU) is carried from test to test."""
    shared = Path(os.environ.get("STAGEWISE_CACHE", Path.home() / ".cache/stagewise"))
    cache = tmp_path / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (shared / "sources").mkdir(parents=True, exist_ok=True)  # the VADER source archive: fetched once, shared
    (cache / "sources").symlink_to(shared / "sources")
    if MEASURED_PEAKS:
        (cache / "peak.json").write_text(json.dumps(MEASURED_PEAKS))
    monkeypatch.setenv("STAGEWISE_CACHE", str(cache))
    yield
    peaks = cache / "peak.json"
    if peaks.is_file():
        try:
            MEASURED_PEAKS.update(json.loads(peaks.read_text()))
        except ValueError:
            pass  # a test that wrote a damaged table on purpose
