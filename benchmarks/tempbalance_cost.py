"""What one TempBalance recomputation costs: every eligible matrix's spectrum (``svdvals``) and
Hill alpha, on the device the weights live on.

Times one recomputation on SmolLM2-135M, then one ``svdvals`` of each matrix shape of a 7B Llama
(4096x4096 attention, 4096x11008 MLP) and extrapolates a recomputation of its 224 matrices
(32 blocks x 4 attention + 3 MLP). Run it alone: another torch process on the same cores skews it.

    python benchmarks/tempbalance_cost.py [--repeats 2] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LLAMA_7B = {(4096, 4096): 32 * 4, (4096, 11008): 32 * 3}  # shape -> matrices per recomputation


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    from stagewise.config import ModelConfig
    from stagewise.models import load_model_and_tokenizer
    from stagewise.speed import device_name
    from stagewise.strategies.tempbalance import TempBalanceConfig, layer_alphas, matrix_modules

    print(f"device: {device_name()} ({args.device}), torch threads: {torch.get_num_threads()}")
    model = load_model_and_tokenizer(ModelConfig(model_name_or_path="smollm2-135m", dtype="float32"))[0].to(args.device)
    config = TempBalanceConfig(kind="tempbalance")
    count = len(matrix_modules(model, config))
    seconds = timed(lambda: layer_alphas(model, config), args.repeats)
    print(f"SmolLM2-135M: {count} matrices, one recomputation {seconds:.2f} s")
    total = 0.0
    for (rows, cols), matrices in LLAMA_7B.items():
        weight = torch.randn(rows, cols, device=args.device)
        one = timed(lambda: torch.linalg.svdvals(weight), args.repeats)
        total += one * matrices
        print(f"svdvals {rows}x{cols} fp32: {one:.2f} s (x{matrices} per recomputation)")
    print(f"7B Llama, one recomputation (extrapolated from the two shapes): {total:.0f} s = {total / 60:.1f} min")


if __name__ == "__main__":
    main()
