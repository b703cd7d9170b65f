"""The GPU check: run it where a GPU is lent (about 8 minutes on one large GPU, no network).

A randomly initialised Llama of ~1.1B parameters (TinyLlama's shape, built from a config: nothing is
downloaded) trains in bf16-mixed with full SFT, HFT, LoRA and QLoRA through the normal engine; for
each, steps/s, tokens/s and MFU against this device's *measured* bf16 matmul peak, and the peak GPU
memory against `stagewise plan`'s figure for the same recipe. Then the SmolLM2 quickstart runs end
to end (`stagewise run quickstart`). Prints a table and writes the figures as JSON.

    python benchmarks/gpu_check.py --out gpu_check.json
    python benchmarks/gpu_check.py --tiny     # the script's own smoke run on any machine: no figures

Every figure names the device it was measured on; a CPU run (``--tiny``) prints no GPU figure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
GiB = 2**30
SHAPES = {  # TinyLlama-1.1B's shape; --tiny: a few MB, to check the script itself
    "1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}
LORA = {"kind": "lora", "lora_rank": 16, "lora_target": "all"}
CASES = {  # name -> (trainable, model keys)
    "full": ("full", {}),
    "hft": ("hft", {}),
    "lora": (LORA, {}),
    "qlora": (LORA, {"quantization": {"bits": 4, "quant_type": "nf4", "double_quant": True}}),
}


class StepClock(TrainerCallback):
    """Wall time of the optimizer steps after the first ``warmup`` (kernels compiled, caches warm)."""

    def __init__(self, warmup: int = 3) -> None:
        self.warmup, self.started, self.steps = warmup, None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if state.global_step == self.warmup:
            self.started = time.perf_counter()
        elif state.global_step > self.warmup:
            self.steps += 1

    def steps_per_s(self) -> float:
        return self.steps / (time.perf_counter() - self.started) if self.started and self.steps else 0.0


def model_folder(shape: str, root: Path) -> Path:
    """A random Llama of ``shape`` saved in bf16 with the bundled SmolLM2 tokenizer (49152 tokens)."""
    from transformers import AutoTokenizer

    from stagewise.bundled import resolve_bundled

    tokenizer = AutoTokenizer.from_pretrained(resolve_bundled("smollm2-135m"))
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=False,
                         **SHAPES[shape])
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    folder = root / f"llama-{shape}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def recipe_for(case: str, folder: Path, out: Path, steps: int, seq_len: int, batch: int) -> dict:
    trainable, model_keys = CASES[case]
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()
    text = " ".join(words[i % len(words)] for i in range(seq_len))  # ~seq_len tokens per row
    rows = [{"instruction": f"Row {i}: repeat the text.", "output": text} for i in range(batch * steps)]
    return {"model": {"model_name_or_path": str(folder), **model_keys},  # dtype auto: the folder's bf16
            "datasets": {"d": {"format": "instruction", "template": "alpaca", "rows": rows}},
            "stages": [{"name": case, "data": "d", "trainable": trainable, "lr": 1e-4, "max_steps": steps,
                        "batch_size": batch, "max_length": seq_len, "save_steps": 10**6, "logging_steps": 5}],
            "performance": {"precision": "bf16-mixed"},
            "output_dir": str(out)}


def measure(case: str, folder: Path, root: Path, steps: int, seq_len: int, batch: int) -> dict:
    from stagewise.config import recipe_from_dict
    from stagewise.engine import run_recipe
    from stagewise.plan import load_model_config, plan_recipe

    recipe = recipe_from_dict(recipe_for(case, folder, root / f"run-{case}", steps, seq_len, batch))
    device_memory = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
    planned = plan_recipe(recipe, load_model_config(recipe.model), device_memory, seq_len=seq_len)[0].peak
    clock = StepClock()
    stage = run_recipe(recipe, callbacks=[clock], log=lambda message: None).manifest["stages"][0]
    measured = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return {"case": case, "steps_per_s": clock.steps_per_s(), "tokens_per_s": stage["tokens_per_s"],
            "mfu": stage["metrics"].get("mfu"), "peak_flops": stage["metrics"].get("peak_flops"),
            "trainable_params": stage["trainable_params"], "total_params": stage["total_params"],
            "peak_gpu_gib": measured / GiB if measured else None, "planned_gib": planned / GiB}


def quickstart(root: Path) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "stagewise", "run", "quickstart", f"output_dir={root / 'quickstart'}"],
                          capture_output=True, text=True)
    result = {"returncode": done.returncode, "wall_s": time.perf_counter() - started}
    if done.returncode == 0:
        stages = json.loads((root / "quickstart" / "manifest.json").read_text())["stages"]
        result["evaluation"] = stages[-1].get("evaluation")
    else:
        result["error"] = done.stderr[-1500:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--tiny", action="store_true", help="a few-MB model on any device: checks the script only")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--skip-quickstart", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.seq_len, args.batch = 5, 64, 2
    elif not torch.cuda.is_available():
        sys.exit("no GPU here: this check measures a GPU (use --tiny to check the script itself)")
    from stagewise.speed import device_name

    device = device_name()
    report: dict = {"device": device, "shape": "tiny" if args.tiny else "1.1b", "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = model_folder(report["shape"], root)
        for case in args.cases:
            if case == "qlora" and not args.tiny and not torch.cuda.is_available():
                continue
            report["cases"].append(measure(case, folder, root, args.steps, args.seq_len, args.batch))
            print(json.dumps(report["cases"][-1]), flush=True)
        if not args.skip_quickstart:
            report["quickstart"] = quickstart(root)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\n{device} ({'script check, no figures' if args.tiny else report['shape']})")
    print(f"{'case':8} {'steps/s':>8} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9} {'plan GiB':>9}")
    for row in report["cases"]:
        peak = f"{row['peak_gpu_gib']:.2f}" if row["peak_gpu_gib"] else "-"
        mfu = f"{row['mfu']:.1%}" if row["mfu"] else "-"
        print(f"{row['case']:8} {row['steps_per_s']:8.2f} {row['tokens_per_s'] or 0:10.0f} {mfu:>6} {peak:>9} "
              f"{row['planned_gib']:9.2f}")
    if "quickstart" in report:
        print(f"quickstart: exit {report['quickstart']['returncode']}, {report['quickstart']['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
