"""HFT vs full fine-tuning: step time, optimizer-state memory and peak memory, from one run.

Each mode runs in its own process (so peak RSS is that mode's alone) on the same model and
data; the parent prints the figures and the HFT/full ratios (paper: ~30% less training time;
target here: HFT <= 0.8x full's step time, clearly less optimizer memory).

    python benchmarks/hft_speed.py --model smollm2-135m --steps 12
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

MODES = {"full": "full", "hft": "hft"}


def worker(mode: str, model: str, steps: int, batch: int) -> dict:
    import torch
    from transformers import TrainerCallback

    from stagewise.config import recipe_from_dict
    from stagewise.engine import run_recipe

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.optimizer_bytes = 0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            self.times.append(time.perf_counter() - self.start)
            self.optimizer_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                                       for t in s.values() if torch.is_tensor(t))

    timer = Timer()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = recipe_from_dict({
            "model": model,
            "datasets": {"d": {"format": "instruction", "builtin": "facts:train"}},
            "stages": [{"name": mode, "data": "d", "trainable": MODES[mode], "max_steps": steps, "batch_size": batch,
                        "max_length": 128, "save_steps": 10**6, "optim": "adamw_torch"}],
            "output_dir": tmp,
        })
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        result = run_recipe(recipe, callbacks=[timer], log=lambda message: None)
    entry = result.manifest["stages"][0]
    return {
        "mode": mode,
        "step_time_s": statistics.median(timer.times[2:]),  # first steps warm caches
        "optimizer_state_mb": timer.optimizer_bytes / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "trainable_fraction": entry["trainable_fraction"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--worker", choices=list(MODES))
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.model, args.steps, args.batch)), flush=True)
        return
    env = {**os.environ, "TQDM_DISABLE": "1"}
    results = {}
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, "--worker", mode, "--model", args.model, "--steps",
                              str(args.steps), "--batch", str(args.batch)], capture_output=True, text=True, env=env)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{mode} run failed:\n{out.stderr[-2000:]}")
        results[mode] = json.loads(line[7:])
        r = results[mode]
        print(f"{mode:4s}: trainable {r['trainable_fraction']:.1%}, step {r['step_time_s']:.3f} s, "
              f"optimizer state {r['optimizer_state_mb']:.1f} MB, peak RSS {r['peak_rss_mb']:.0f} MB"
              + (f", peak GPU {r['peak_gpu_mb']:.0f} MB" if r["peak_gpu_mb"] else ""), flush=True)
    full, hft = results["full"], results["hft"]
    print(f"model={args.model} steps={args.steps} batch={args.batch}")
    print(f"HFT/full step time:        {hft['step_time_s'] / full['step_time_s']:.3f}  (target <= 0.8)")
    print(f"HFT/full optimizer memory: {hft['optimizer_state_mb'] / full['optimizer_state_mb']:.3f}")
    print(f"HFT/full peak RSS:         {hft['peak_rss_mb'] / full['peak_rss_mb']:.3f}")


if __name__ == "__main__":
    main()
