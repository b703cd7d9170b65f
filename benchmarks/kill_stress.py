"""Kill a 3-stage run at random instants with SIGKILL and rerun it: does every rerun end with
the weights of the uninterrupted run?

Each trial starts `stagewise run` on a tiny 3-stage recipe (HFT, then top layer, then full; an
evaluation probe after each stage), kills the process with SIGKILL after a random delay drawn
uniformly over the length of an uninterrupted run, reruns the same command to completion and
compares all three stages' weights with the reference run, tensor by tensor (bit-identical: CPU
training of the tiny model is deterministic).

    python benchmarks/kill_stress.py --trials 50
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROWS = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(16)]
STAGES = ("0-hft", "1-top", "2-full")


def recipe(out: Path) -> dict:
    common = {"data": "sft", "lr": 1e-2, "batch_size": 2, "save_steps": 3}
    return {
        "model": "tiny-llama",
        "datasets": {"sft": {"format": "instruction", "template": "alpaca", "rows": ROWS}},
        "stages": [
            {"name": "hft", "trainable": {"kind": "hft"}, "max_steps": 8, **common},
            {"name": "top", "trainable": {"kind": "layers", "indices": [-1]}, "max_steps": 6, **common},
            {"name": "full", "max_steps": 6, **common},
        ],
        "evaluation": {"retention": [{"name": "ppl", "data": "sft", "metric": "perplexity"}]},
        "output_dir": str(out),
    }


def start(recipe_file: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stagewise", "run", str(recipe_file)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {stage: load_file(str(out / stage / "model.safetensors")) for stage in STAGES}


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[s][n], b[s][n]) for s in a for n in a[s])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="kill-stress-"))
    env = {**os.environ, "TQDM_DISABLE": "1", "STAGEWISE_CACHE": str(work / "cache")}

    for name in ("warm-up", "reference"):  # the warm-up fills the base-score cache the trials share
        reference_file = work / f"{name}.yaml"
        reference_file.write_text(json.dumps(recipe(work / name)))
        began = time.perf_counter()
        done = start(reference_file, env)
        assert done.wait() == 0, done.stderr.read()
        duration = time.perf_counter() - began
    reference = weights(work / "reference")
    print(f"uninterrupted run: {duration:.1f} s (kill instants drawn from [0, {duration:.1f}] s)")

    outcomes = {"same weights": 0, "different weights": 0, "rerun failed": 0, "finished before the kill": 0}
    for trial in range(args.trials):
        out = work / f"trial-{trial}"
        recipe_file = work / f"trial-{trial}.yaml"
        recipe_file.write_text(json.dumps(recipe(out)))
        delay = rng.uniform(0, duration)
        process = start(recipe_file, env)
        try:
            process.wait(timeout=delay)
            outcome = "finished before the kill"
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            rerun = start(recipe_file, env)
            if rerun.wait() != 0:
                outcome = "rerun failed"
                print(f"trial {trial}: rerun failed: {rerun.stderr.read().strip().splitlines()[-1:]}")
            else:
                outcome = "same weights" if same(reference, weights(out)) else "different weights"
        outcomes[outcome] += 1
        print(f"trial {trial:2d}: killed at {delay:5.1f} s -> {outcome}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    killed = args.trials - outcomes["finished before the kill"]
    print(f"\n{killed} runs killed; resumed to the reference weights: {outcomes['same weights']} / {killed}; "
          + ", ".join(f"{k}: {v}" for k, v in outcomes.items()))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
