"""What ``stagewise audit`` of a base/tuned pair needs on one device, from the model's config alone.

The audit holds both models at once (the KL from base to tuned compares their next-token
distributions on the same samples), in the storage dtype, without gradients or optimizer state;
its peak adds the largest generation batch's KV cache and last-token logits (as a run's probes).
A tuned PEFT adapter needs only its base: the second copy is then the adapter, a few MB.
"""

from __future__ import annotations

from typing import Any

from ..config import Recipe
from ..precision import COMPUTE_DTYPES
from . import HEADROOM, Settings, meta_model, planned_precision, storage_dtype_for, weight_bytes
from .footprint import Footprint, GiB, ModelShape, dtype_bytes, kv_bytes_per_token


def audit_footprint(suite: Recipe, config: Any, device_memory: float | None, seq_len: int | None) -> Footprint:
    evaluation = suite.evaluation
    assert evaluation is not None  # a suite is an evaluation section
    precision = planned_precision(suite, device_memory)
    storage = storage_dtype_for(suite, config, precision)
    stored, _ = weight_bytes(meta_model(config, "causal_lm", storage), storage, Settings(precision), training=False)
    shape, compute = ModelShape.of(config), dtype_bytes(COMPUTE_DTYPES[precision])
    probes = [*evaluation.target, *evaluation.retention]
    length = min(seq_len or evaluation.max_length, evaluation.max_length) + max(p.max_new_tokens for p in probes)
    return Footprint(
        {
            "base weights": stored,
            "tuned weights": stored,
            "kv cache": evaluation.batch_size * length * kv_bytes_per_token(shape, compute),
            "logits": evaluation.batch_size * shape.vocab * (compute + 4),
        }
    )


def render_audit_plan(footprint: Footprint, device_memory: float | None, model_name: str) -> str:
    parts = ", ".join(f"{name} {value / GiB:.2f}" for name, value in footprint.parts.items())
    line = f"audit of a {model_name} pair on one device: GiB {parts}; peak {footprint.peak / GiB:.2f}"
    if device_memory is None:
        return line
    if footprint.peak <= HEADROOM * device_memory:
        return line + "  fits"
    models = footprint.parts["base weights"] + footprint.parts["tuned weights"]
    if models <= HEADROOM * device_memory:
        return line + "  does NOT fit; cheapest change: a smaller evaluation.batch_size in the suite"
    return line + (
        f"  does NOT fit: the two models alone take {models / GiB:.1f} GiB (a tuned PEFT adapter needs only "
        "its base: half of that)"
    )
