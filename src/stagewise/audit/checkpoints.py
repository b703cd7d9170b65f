"""The two sides of an audit: any checkpoint, from any tool, loaded the way it was saved.

A checkpoint is a ``save_pretrained`` folder, a stagewise stage folder (weights plus ``adapter/``),
a PEFT adapter folder (its base read from ``adapter_config.json``: LLaMA-Factory, axolotl, TRL and
PEFT all write one), a bundled name or a hub id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import ModelError
from ..models import load_model_and_tokenizer, load_stage_output, looks_local, on_local_device


@dataclass
class Checkpoint:
    spec: str  # as the user named it
    model: Any
    tokenizer: Any
    base_of_adapter: str | None = None  # a PEFT adapter folder's base model


def adapter_base(folder: Path) -> str:
    """The base model a PEFT adapter folder names (``base_model_name_or_path``); one line otherwise."""
    config = folder / "adapter_config.json"
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise ModelError(f"{config}: not a readable adapter config ({type(err).__name__})") from None
    if not isinstance(base, str) or not base:
        raise ModelError(f"{config}: no base_model_name_or_path, so the adapter's base model is unknown")
    return base


def check_checkpoint(spec: str, role: str) -> None:
    """Before any scoring: a folder that is not there, or an adapter whose local base is not there,
    is one line (a hub id or bundled name is resolved when it loads)."""
    folder = Path(spec).expanduser()
    if looks_local(spec) and not folder.is_dir():
        raise ModelError(f"{role}: folder {spec!r} not found")
    if folder.is_dir() and is_adapter_folder(folder):
        base = adapter_base(folder)
        if looks_local(base) and not Path(base).expanduser().is_dir():
            raise ModelError(f"{role}: {folder}: the adapter's base model {base!r} (adapter_config.json) not found")


def is_adapter_folder(folder: Path) -> bool:
    """A PEFT adapter alone (not a merged model folder that kept its adapter config)."""
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def load_adapter_folder(folder: Path, model_cfg: ModelConfig, precision: str) -> Checkpoint:
    from peft import PeftModel

    base = adapter_base(folder)
    try:
        model, tokenizer = load_model_and_tokenizer(
            model_cfg.model_copy(update={"model_name_or_path": base}), precision=precision
        )
    except ModelError as err:
        raise ModelError(
            f"{folder}: the adapter's base model {base!r} (adapter_config.json) cannot be loaded: {err}"
        ) from None
    try:
        adapted = PeftModel.from_pretrained(model, str(folder))
    except Exception as err:  # shapes that do not fit the base, missing adapter weights
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ModelError(f"{folder}: the adapter does not load onto {base!r}: {first}") from None
    return Checkpoint(str(folder), on_local_device(adapted), tokenizer, base_of_adapter=base)


def load_checkpoint(spec: str, model_cfg: ModelConfig, precision: str) -> Checkpoint:
    """``spec`` loaded for evaluation (``model_cfg`` gives the task and loading settings)."""
    folder = Path(spec).expanduser()
    if folder.is_dir() and is_adapter_folder(folder):
        return load_adapter_folder(folder, model_cfg, precision)
    if folder.is_dir() and (folder / "adapter").is_dir():
        model, tokenizer = load_stage_output(
            folder, model_cfg.model_copy(update={"model_name_or_path": spec}), precision
        )
        return Checkpoint(spec, model, tokenizer)
    model, tokenizer = load_model_and_tokenizer(
        model_cfg.model_copy(update={"model_name_or_path": spec}), precision=precision
    )
    return Checkpoint(spec, model, tokenizer)


def same_vocabulary(a: Checkpoint, b: Checkpoint) -> bool:
    """Both tokenizers map the same strings to the same ids (token-level comparisons need it)."""
    return bool(a.tokenizer.get_vocab() == b.tokenizer.get_vocab())


@torch.no_grad()
def same_weights(a: Checkpoint, b: Checkpoint) -> bool:
    """Every tensor equal. Checked for full-weight checkpoints only: an adapter computes something
    else than its base unless its weights cancel, which its scores show."""
    if hasattr(a.model, "peft_config") or hasattr(b.model, "peft_config"):
        return False
    ours, theirs = a.model.state_dict(), b.model.state_dict()
    return ours.keys() == theirs.keys() and all(
        ours[k].shape == theirs[k].shape and torch.equal(ours[k], theirs[k]) for k in ours
    )
