"""Training throughput in one run: plain transformers.Trainer vs stagewise full, HFT, LoRA and
full fine-tuning with padding-free batching ("packed").

Each mode runs in its own process on the same model and data (so peak memory is that mode's
alone) and reports non-padding tokens/s, median step time, optimizer-state and peak memory,
and MFU against the measured matmul peak. Ratios are relative to the plain Trainer.

    python benchmarks/throughput.py --model smollm2-135m --steps 12
    python benchmarks/throughput.py --model smollm2-135m --modes full hft --bf16
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

MODES = ("plain", "full", "hft", "lora", "packed")
TRAINABLE = {"full": "full", "hft": "hft", "lora": {"kind": "lora", "lora_rank": 16, "lora_target": "all"}, "packed": "full"}


def worker(mode: str, model_name: str, steps: int, batch: int, bf16: bool) -> dict:
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from stagewise.bench import builtin_file
    from stagewise.config import DatasetConfig, ModelConfig, recipe_from_dict
    from stagewise.data import ListDataset, encode_dataset, load_dataset_config
    from stagewise.engine import run_recipe
    from stagewise.models import load_model_and_tokenizer
    from stagewise.speed import flops_per_token, peak_flops

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
    max_length = 128
    rows = load_dataset_config("d", DatasetConfig(format="instruction", path=str(builtin_file("facts:train")))).rows
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        if mode == "plain":
            model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path=model_name))
            examples = encode_dataset(rows, "instruction", tokenizer, max_length=max_length)
            args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps, save_strategy="no",
                                     report_to="none", seed=42, data_seed=42, optim="adamw_torch", bf16=bf16,
                                     include_num_input_tokens_seen="non_padding", use_cpu=not torch.cuda.is_available())
            trainer = Trainer(model=model, args=args, train_dataset=ListDataset(examples), callbacks=[timer],
                              data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
            started = time.perf_counter()
            trainer.train()
            wall, tokens = time.perf_counter() - started, trainer.state.num_input_tokens_seen
        else:
            recipe = recipe_from_dict({
                "model": model_name,
                "datasets": {"d": {"format": "instruction", "builtin": "facts:train"}},
                "stages": [{"name": mode, "data": "d", "trainable": TRAINABLE[mode], "max_steps": steps, "batch_size": batch,
                            "max_length": max_length, "save_steps": 10**6, "optim": "adamw_torch"}],
                "performance": {"bf16": bf16, "padding_free": mode == "packed"},
                "output_dir": tmp,
            })
            result = run_recipe(recipe, callbacks=[timer], log=lambda message: None)
            model = result.model
            entry = result.manifest["stages"][0]
            wall, tokens = entry["wall_time_s"], entry["train_tokens"]
            examples = encode_dataset(rows, "instruction", result.tokenizer, max_length=max_length)
    context = sum(len(e["input_ids"]) for e in examples) / len(examples)
    tokens_per_s = tokens / wall
    peak = peak_flops("bfloat16" if bf16 else "float32")
    return {
        "mode": mode,
        "tokens_per_s": tokens_per_s,
        "step_time_s": statistics.median(timer.times[2:]) if len(timer.times) > 3 else statistics.median(timer.times),
        "optimizer_state_mb": timer.optimizer_bytes / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "mfu": tokens_per_s * flops_per_token(model, context) / peak,
    }


def run_modes(modes: list[str], model: str, steps: int, batch: int, bf16: bool) -> dict[str, dict]:
    """Each mode in a fresh process; returns the parsed results, printing one line per mode."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    results = {}
    for mode in modes:
        command = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--model", model,
                   "--steps", str(steps), "--batch", str(batch)] + (["--bf16"] if bf16 else [])
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{mode} run failed:\n{out.stderr[-2000:]}")
        r = results[mode] = json.loads(line[7:])
        print(f"{mode:5s}: {r['tokens_per_s']:8.1f} tok/s, step {r['step_time_s']:.3f} s, MFU {r['mfu']:.1%}, "
              f"optimizer state {r['optimizer_state_mb']:.1f} MB, peak RSS {r['peak_rss_mb']:.0f} MB"
              + (f", peak GPU {r['peak_gpu_mb']:.0f} MB" if r["peak_gpu_mb"] else ""), flush=True)
    return results


def parser_with_common(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (all modes)")
    return parser


def main() -> None:
    parser = parser_with_common(__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--worker", choices=MODES)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.model, args.steps, args.batch, args.bf16)), flush=True)
        return
    results = run_modes(args.modes, args.model, args.steps, args.batch, args.bf16)
    print(f"model={args.model} steps={args.steps} batch={args.batch} bf16={args.bf16}")
    if "plain" in results:
        for mode in results:
            if mode != "plain":
                print(f"{mode}/plain tokens/s: {results[mode]['tokens_per_s'] / results['plain']['tokens_per_s']:.3f}")
    if "full" in results and "hft" in results:
        print(f"hft/full step time: {results['hft']['step_time_s'] / results['full']['step_time_s']:.3f}")


if __name__ == "__main__":
    main()
