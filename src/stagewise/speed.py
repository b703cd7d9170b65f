"""Throughput against the physical limit: measured matmul peak and model FLOPs utilization.

MFU follows nanoGPT / PaLM: a training token costs 6·N FLOPs (forward 2N, backward 4N) plus
attention 12·L·d·T (L layers, width d, context T); MFU = achieved FLOP/s ÷ the machine's
*measured* peak matmul FLOP/s (``stagewise bench-peak``), not a datasheet number.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch

from .bundled import cache_dir


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu-{os.cpu_count()}cores-{torch.get_num_threads()}threads"


def measure_matmul_peak(dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """Best FLOP/s of repeated square matmuls on the default device."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best


def peak_flops(dtype_name: str, remeasure: bool = False) -> float:
    """Measured peak for this machine and dtype, cached under the user cache."""
    path = cache_dir() / "peak.json"
    table: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    key = f"{device_name()}/{dtype_name}"
    if remeasure or key not in table:
        table[key] = measure_matmul_peak(getattr(torch, dtype_name))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table, indent=2))
        tmp.replace(path)
    return float(table[key])


def flops_per_token(model: torch.nn.Module, context: float) -> float:
    """6·N + 12·L·d·T for a decoder/encoder stack (N counts shared tensors once)."""
    config = getattr(model, "config", None)
    params = sum({id(p): p.numel() for p in model.parameters()}.values())
    layers = getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0)
    width = getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0)
    return 6 * params + 12 * layers * width * context


def mfu(model: torch.nn.Module, tokens_per_s: float, context: float, dtype_name: str) -> tuple[float, float]:
    """(MFU, peak FLOP/s) for a measured training throughput."""
    peak = peak_flops(dtype_name)
    return tokens_per_s * flops_per_token(model, context) / peak, peak
