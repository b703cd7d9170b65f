"""Numeric precision: which dtype the weights are held in, and which dtype computes.

- ``fp32``: everything float32.
- ``bf16-mixed`` / ``fp16-mixed`` (Micikevicius et al., ICLR 2018, "Mixed Precision Training"):
  the tensors a stage trains are held in float32 while it trains (master weights, so AdamW's
  small updates are not rounded away) and the forward/backward pass is autocast to bf16/fp16
  (fp16 with loss scaling, by the Trainer). Frozen tensors stay in the storage dtype
  (``model.dtype``; ``auto`` = the checkpoint's own). When the stage ends its trained tensors
  return to the storage dtype: that is what is saved and what the next stage starts from, so a
  resumed run equals an uninterrupted one.
- ``bf16-pure``: weights, gradients and optimizer state in bf16 — half of mixed's memory for
  the trained tensors, but an update smaller than half of bf16's spacing at a weight (2⁻⁸ of
  its magnitude) leaves it unchanged. Only when asked, with a warning.
- ``auto``: bf16-mixed on a GPU with bf16, fp16-mixed on an older GPU, fp32 on a CPU; TF32
  matmuls on Ampere and later.

Evaluation, generation and Fisher estimation run under the same autocast (:func:`autocast`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

COMPUTE_DTYPES = {
    "fp32": torch.float32,
    "bf16-mixed": torch.bfloat16,
    "fp16-mixed": torch.float16,
    "bf16-pure": torch.bfloat16,
}
MIXED = ("bf16-mixed", "fp16-mixed")


def resolve_precision(precision: str) -> str:
    """``auto`` made concrete for this machine."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp16-mixed"
    return "fp32"


def precision_problem(precision: str, model_dtype: str) -> str | None:
    """Why a precision cannot run here (or contradicts ``model.dtype``), or None."""
    resolved = resolve_precision(precision)
    if resolved == "fp16-mixed" and not torch.cuda.is_available():
        return "fp16-mixed needs a GPU (CPU autocast has no fp16 loss scaling); use bf16-mixed or fp32"
    if resolved == "fp32" and model_dtype not in ("auto", "float32"):
        machine = " (auto on a machine without a GPU)" if precision == "auto" else ""
        return (
            f"precision resolves to fp32{machine} but model.dtype is {model_dtype}: use precision bf16-mixed "
            "(fp32 master weights, bf16 compute) or bf16-pure, or drop model.dtype"
        )
    return None


def load_dtype(precision: str, model_dtype: str) -> torch.dtype | str:
    """The dtype weights are loaded in: float32 for fp32, bfloat16 for bf16-pure, else the storage
    dtype (``auto``: the checkpoint's)."""
    resolved = resolve_precision(precision)
    if resolved == "fp32":
        return torch.float32
    if resolved == "bf16-pure":
        return torch.bfloat16
    return model_dtype if model_dtype == "auto" else getattr(torch, model_dtype)


def autocast(precision: str, device: torch.device | str | None = None) -> contextlib.AbstractContextManager[Any]:
    """The compute dtype's autocast for code outside the Trainer (evaluation, generation, Fisher)."""
    resolved = resolve_precision(precision)
    if resolved not in MIXED:
        return contextlib.nullcontext()
    device_type = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.autocast(device_type=device_type, dtype=COMPUTE_DTYPES[resolved])


def trainer_flags(precision: str) -> dict[str, bool]:
    """TrainingArguments for the precision: the Trainer's own autocast (and fp16 loss scaling)."""
    resolved = resolve_precision(precision)
    flags = {"bf16": resolved == "bf16-mixed", "fp16": resolved == "fp16-mixed"}
    if resolved in MIXED and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        flags["tf32"] = True
    return flags


STORAGE_ATTRIBUTE = "stagewise_storage_dtype"  # set on the model when it is loaded


def record_storage_dtype(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Remember the dtype the weights are stored in (the config's ``dtype`` follows whatever
    transformers last saved, which is fp32 while mixed precision trains)."""
    setattr(model, STORAGE_ATTRIBUTE, dtype)


def storage_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype a model's weights are stored in (recorded when it was loaded; else its config's)."""
    dtype = getattr(model, STORAGE_ATTRIBUTE, None) or getattr(getattr(model, "config", None), "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def _floating_base_parameters(model: torch.nn.Module, trainable_only: bool) -> Iterator[torch.nn.Parameter]:
    from .addons import is_addon_parameter

    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen or not param.is_floating_point() or is_addon_parameter(name):
            continue
        seen.add(id(param))
        if param.requires_grad or not trainable_only:
            yield param


def hold_trainable_in_fp32(model: torch.nn.Module, precision: str) -> int:
    """Mixed precision: the stage's trainable base tensors become float32 master weights (add-ons
    are float32 already). Returns how many tensors were upcast."""
    if resolve_precision(precision) not in MIXED:
        return 0
    count = 0
    for param in _floating_base_parameters(model, trainable_only=True):
        if param.dtype != torch.float32:
            param.data = param.data.float()
            count += 1
    return count


def return_to_storage_dtype(model: torch.nn.Module) -> None:
    """After a stage: every base tensor back in the storage dtype (what is saved and handed on)."""
    from .addons import base_model_of

    dtype = storage_dtype(base_model_of(model))
    for param in _floating_base_parameters(model, trainable_only=False):
        if param.dtype != dtype:
            param.data = param.data.to(dtype)
