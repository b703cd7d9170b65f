"""`stagewise plan` against measured memory: each bundled strategy, a few training steps on CPU.

Each case runs in a fresh process (with glibc's mmap threshold fixed, ``LIVE_MEMORY``): the recipe (probes dropped, every stage cut to ``--steps``
steps) runs through the normal engine, and the process's peak resident memory (VmHWM) minus its
resident memory just before the run (imports, tokenizer and data loaded) is compared with the
plan's peak for the same recipe, sequence length (the longest encoded training row) and device
count. Weights, gradients, optimizer state and activations are what the plan counts; the
measured figure also holds the allocator's slack and Python objects, so tiny models (a few MB)
are dominated by them and the band is read on SmolLM2.

    python benchmarks/memory.py                          # every case, tiny-llama and SmolLM2
    python benchmarks/memory.py --models smollm2-135m --cases full lora
    python benchmarks/memory.py --models smollm2-135m --before ../old-checkout   # loading and lean copies
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CASES = {  # name -> (bundled recipe, overrides)
    "full": ("quickstart", []),
    "hft": ("hft", []),
    "layer-freeze": ("layer-freeze", []),
    "lora": ("lora", []),
    "qlora": ("qlora", []),
    "l2sp": ("quickstart", ["stages.0.regularizer={kind: l2sp, weight: 1.0}"]),
    "ewc": ("quickstart", ["datasets.general_text.split=test[:8]",
                           "stages.0.regularizer={kind: ewc, weight: 1.0, data: general_text, batches: 4}"]),
    "bf16-mixed": ("quickstart", ["performance.precision=bf16-mixed"]),
    "checkpointing": ("quickstart", ["performance.gradient_checkpointing=true"]),
    "dpo": ("dpo", []),
    "dpo-precompute": ("dpo", ["stages.0.trainer={kind: dpo, precompute_ref_log_probs: true}"]),
    "wise-ft": ("wise-ft", []),
    "hft+tempbalance": ("hft+tempbalance", []),
    "promot": ("promot", []),
    "self-replay": ("self-replay", ["transforms_rows=16"]),
    "sdft": ("sdft", ["transforms_rows=8"]),
    "rlhf": ("rlhf", []),
    "grpo": ("grpo-math", []),
    "continual": ("continual", []),
}
LEAN = ["l2sp", "ewc", "wise-ft", "dpo"]  # the strategy copies made lean: measured before/after with --before
GiB = 2**30
# glibc raises its mmap threshold after large frees, then serves tensors from the heap and keeps freed
# pages: resident memory then grows past what is alive. A fixed threshold returns freed tensors to the
# system, so the measured peak tracks live memory (the figure the plan estimates).
LIVE_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def status(field: str) -> float:
    """A /proc/self/status memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1]) * 1024
    raise KeyError(field)


def longest_row(recipe) -> int:
    """Tokens in the longest encoded training row of any stage (clipped at its max_length)."""
    from stagewise.data import encode_dataset, load_dataset_config
    from stagewise.models import TINY_MODELS, byte_tokenizer

    name = recipe.model.model_name_or_path
    if name in TINY_MODELS:
        tokenizer = byte_tokenizer()
    else:
        from transformers import AutoTokenizer

        from stagewise.bundled import resolve_bundled

        tokenizer = AutoTokenizer.from_pretrained(resolve_bundled(name))
    longest = 0
    for stage in recipe.stages:
        for data in stage.data:
            cfg = recipe.datasets[data]
            if cfg.format in ("preference", "feedback"):  # TRL tokenizes prompt + answer itself
                rows = load_dataset_config(data, cfg).rows
                longest = max(longest, max(len(tokenizer(r["prompt"] + max(r["chosen"], r["rejected"], key=len))
                                               ["input_ids"]) for r in rows))
                continue
            encoded = encode_dataset(load_dataset_config(data, cfg).rows, cfg.format, tokenizer, template=cfg.template,
                                     max_length=stage.max_length)
            longest = max(longest, max(len(e["input_ids"]) for e in encoded))
    return longest


def shrunk_recipe(case: str, model: str, steps: int, out: Path):
    """The case's recipe on ``model``, probes dropped, every stage cut to ``steps`` steps."""
    import yaml

    from stagewise.cli import find_recipe
    from stagewise.config import load_recipe

    recipe_name, overrides = CASES[case]
    path = find_recipe(recipe_name)
    raw = yaml.safe_load(path.read_text())
    model_override = f"model.model_name_or_path={model}" if isinstance(raw["model"], dict) else f"model={model}"
    rows = next((int(o.split("=")[1]) for o in overrides if o.startswith("transforms_rows=")), None)
    overrides = [o for o in overrides if not o.startswith("transforms_rows=")]
    if rows:  # a generating transform reads only this many rows of each dataset (it is slow on a CPU)
        overrides += [f"datasets.{name}.max_samples={rows}" for name in raw["datasets"]]
    overrides = [*overrides, model_override, f"output_dir={out}", "evaluation=null"]
    overrides += [f"stages.{i}.{key}" for i, _ in enumerate(raw["stages"])
                  for key in (f"max_steps={steps}", "save_steps=1000")]
    return load_recipe(path, overrides)


def measure(case: str, model: str, steps: int, out: Path, planned: bool) -> dict:
    """Peak resident memory of the run over the memory before it (and the plan's peak)."""
    from stagewise.engine import run_recipe

    recipe = shrunk_recipe(case, model, steps, out)
    row: dict = {"case": case, "model": model}
    if planned:
        from stagewise.plan import load_model_config, plan_recipe

        row["seq_len"] = longest_row(recipe)
        plans = plan_recipe(recipe, load_model_config(recipe.model), seq_len=row["seq_len"])
        row["planned"] = max(plan.peak for plan in plans)  # training, or generating (transforms) if larger
        row["parts"] = max(plans, key=lambda plan: plan.peak).train.parts
    before = status("VmRSS")
    run_recipe(recipe, log=lambda message: None)
    row["measured"] = status("VmHWM") - before
    return row


def measure_loading(dtype: str, model: str) -> dict:
    """Peak resident memory of loading ``model`` with weights in ``dtype`` (this tree's loader)."""
    import inspect

    from stagewise.config import ModelConfig
    from stagewise.models import load_model_and_tokenizer

    before = status("VmRSS")
    lean = "precision" in inspect.signature(load_model_and_tokenizer).parameters
    extra = {"precision": "fp32" if dtype == "float32" else "bf16-mixed"} if lean else {}
    load_model_and_tokenizer(ModelConfig(model_name_or_path=model, dtype=dtype), **extra)
    return {"case": f"load {dtype}", "model": model, "measured": status("VmHWM") - before}


def run_worker(arguments: list[str], env: dict[str, str]) -> dict | str:
    done = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True,
                          env={**os.environ, **LIVE_MEMORY, **env})
    found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not found:
        return (done.stderr.strip().splitlines() or ["no output"])[-1]
    return json.loads(found[0][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny-llama", "smollm2-135m"])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--before", metavar="TREE", help="a checkout of an earlier commit: measure loading and the "
                                                       "lean-copy cases there and here (no plan)")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "CASE", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if args.worker:
        mode, case, model = args.worker
        with tempfile.TemporaryDirectory(prefix="stagewise-memory-") as scratch:
            row = measure_loading(case, model) if mode == "load" else \
                measure(case, model, args.steps, Path(scratch) / "run", planned=mode == "plan")
        print("RESULT " + json.dumps(row), flush=True)
        return
    rows = before_and_after(args) if args.before else plan_against_measured(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def plan_against_measured(args: argparse.Namespace) -> list[dict]:
    rows = []
    print(f"{'case':14s} {'model':14s} {'seq':>4s} {'planned MiB':>12s} {'measured MiB':>13s} {'measured/plan':>14s}")
    for model in args.models:
        for case in args.cases:
            row = run_worker(["--worker", "plan", case, model, "--steps", str(args.steps)], {})
            if isinstance(row, str):
                print(f"{case:14s} {model:14s} failed: {row}")
                continue
            rows.append(row)
            print(f"{case:14s} {model:14s} {row['seq_len']:4d} {row['planned'] / 2**20:12.1f} "
                  f"{row['measured'] / 2**20:13.1f} {row['measured'] / row['planned']:14.2f}", flush=True)
    return rows


def before_and_after(args: argparse.Namespace) -> list[dict]:
    """Loading (fp32, bf16) and the lean-copy cases, measured with the earlier tree's code and this one's."""
    here = str(Path(__file__).resolve().parents[1] / "src")
    jobs = [("load", dtype) for dtype in ("float32", "bfloat16")] + [("measure", case) for case in LEAN]
    rows = []
    print(f"{'case':14s} {'model':14s} {'before MiB':>11s} {'after MiB':>10s}")
    for model in args.models:
        for mode, case in jobs:
            found = {}
            for label, tree in (("before", str(Path(args.before) / "src")), ("after", here)):
                row = run_worker(["--worker", mode, case, model, "--steps", str(args.steps)], {"PYTHONPATH": tree})
                found[label] = row["measured"] / 2**20 if isinstance(row, dict) else float("nan")
            rows.append({"case": case if mode == "measure" else f"load {case}", "model": model, **found})
            print(f"{rows[-1]['case']:14s} {model:14s} {found['before']:11.1f} {found['after']:10.1f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
