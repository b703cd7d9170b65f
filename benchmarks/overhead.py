"""Stage-runner overhead: stagewise full fine-tune vs a hand-written plain transformers.Trainer.

Same model, same encoded data, same settings; prints non-padding tokens/s of each and the
ratio (target: stagewise >= 0.95x plain). Runs alternate (plain, stagewise, ...) and the
median of each is reported, so neither side gets the warm caches.

    python benchmarks/overhead.py --model smollm2-135m --steps 20 --repeats 2
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

from stagewise.bench import builtin_file
from stagewise.config import DatasetConfig, ModelConfig, recipe_from_dict
from stagewise.data import ListDataset, encode_dataset, load_dataset_config
from stagewise.engine import run_recipe
from stagewise.models import load_model_and_tokenizer


def plain_trainer(model_name: str, examples, steps: int, batch: int, out: Path) -> float:
    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path=model_name))
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-5,
        save_strategy="no", report_to="none", logging_steps=10, seed=0, use_cpu=not torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding", disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ListDataset(examples),
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    start = time.perf_counter()
    trainer.train()
    return trainer.state.num_input_tokens_seen / (time.perf_counter() - start)


def stagewise_run(model_name: str, steps: int, batch: int, max_length: int, out: Path) -> float:
    recipe = recipe_from_dict({
        "model": model_name,
        "datasets": {"d": {"format": "instruction", "builtin": "facts:train"}},
        "stages": [{"name": "full", "data": "d", "max_steps": steps, "batch_size": batch, "lr": 5e-5,
                    "seed": 0, "max_length": max_length, "save_steps": 10**6}],
        "output_dir": str(out),
    })
    result = run_recipe(recipe, log=lambda message: None)
    return result.manifest["stages"][0]["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    _, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path=args.model))
    rows = load_dataset_config("d", DatasetConfig(format="instruction", path=str(builtin_file("facts:train")))).rows
    examples = encode_dataset(rows, "instruction", tokenizer, max_length=args.max_length)
    plain, staged = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            plain.append(plain_trainer(args.model, examples, args.steps, args.batch, Path(tmp) / f"p{repeat}"))
            staged.append(stagewise_run(args.model, args.steps, args.batch, args.max_length, Path(tmp) / f"s{repeat}"))
            print(f"repeat {repeat}: plain Trainer {plain[-1]:.1f} tok/s, stagewise {staged[-1]:.1f} tok/s", flush=True)
    p, s = statistics.median(plain), statistics.median(staged)
    print(f"model={args.model} steps={args.steps} batch={args.batch} threads={torch.get_num_threads()}")
    print(f"plain transformers.Trainer: {p:.1f} tokens/s (median of {args.repeats})")
    print(f"stagewise stage runner:     {s:.1f} tokens/s (median of {args.repeats})")
    print(f"ratio stagewise/plain:      {s / p:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
