"""Precision on the quickstart task: how many stored weights a stage never changes, and the final
loss, under fp32, bf16-mixed (fp32 master weights) and bf16-pure, at a small and a usual LR.

Each run is the quickstart SFT stage for one epoch (probes dropped) in a fresh process; bf16-mixed
and bf16-pure store the weights in bf16 (``model.dtype: bfloat16``), fp32 in fp32. "Unchanged" counts
the stored elements that are bit-identical before and after the stage.

    python benchmarks/precision.py                       # lr 1e-6 and 1e-4, SmolLM2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TQDM_DISABLE", "1")

SETTINGS = {  # name -> overrides
    "fp32": ["performance.precision=fp32"],
    "bf16-mixed": ["performance.precision=bf16-mixed", "model={model_name_or_path: smollm2-135m, dtype: bfloat16}"],
    "bf16-pure": ["performance.precision=bf16-pure"],
}


def worker(setting: str, lr: float) -> dict:
    import torch
    from safetensors.torch import load_file

    from stagewise.cli import find_recipe
    from stagewise.config import load_recipe
    from stagewise.engine import run_recipe

    with tempfile.TemporaryDirectory(prefix="stagewise-precision-") as scratch:
        common = [*SETTINGS[setting], "evaluation=null", "stages.0.epochs=1", "stages.0.save_steps=1000"]
        recipe = load_recipe(find_recipe("quickstart"), [*common, f"output_dir={scratch}/run", f"stages.0.lr={lr}"])
        base = load_recipe(find_recipe("quickstart"), [*common, f"output_dir={scratch}/base", "stages.0.trainable=none"])
        run_recipe(base, log=lambda message: None)
        result = run_recipe(recipe, log=lambda message: None)
        before = load_file(f"{scratch}/base/0-sft/model.safetensors")
        after = load_file(f"{scratch}/run/0-sft/model.safetensors")
    unchanged = sum(int(torch.eq(before[k], after[k]).sum()) for k in before)
    total = sum(t.numel() for t in before.values())
    return {"setting": setting, "lr": lr, "stored": str(next(iter(after.values())).dtype),
            "unchanged": unchanged / total, "train_loss": result.manifest["stages"][0]["metrics"]["train_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-6, 1e-4])
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker[0], float(args.worker[1]))), flush=True)
        return
    print(f"{'lr':>8s} {'precision':11s} {'stored':15s} {'unchanged':>10s} {'train loss':>11s} {'vs fp32':>8s}")
    for lr in args.lrs:
        reference = None
        for setting in SETTINGS:
            done = subprocess.run([sys.executable, __file__, "--worker", setting, str(lr)], capture_output=True, text=True)
            found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if not found:
                print(f"{lr:8.0e} {setting:11s} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(found[0][7:])
            reference = row["train_loss"] if setting == "fp32" else reference
            delta = f"{row['train_loss'] - reference:+8.4f}" if reference is not None else ""
            print(f"{lr:8.0e} {setting:11s} {row['stored']:15s} {row['unchanged']:10.4f} {row['train_loss']:11.4f} "
                  f"{delta}", flush=True)


if __name__ == "__main__":
    main()
