"""Batched generation vs a one-sequence-at-a-time loop, on SliCK categorization.

Categorizes QA items (n_prompts few-shot prompts, 1 greedy + `samples` sampled answers each)
with stagewise's batched generator, and a subset of the same items with a plain loop that
generates one sequence per `model.generate` call; prints items/s of each and the ratio
(target >= 5x). The loop runs on a subset because it is slow; throughput is per item.

    python benchmarks/generation.py --model smollm2-135m --items 200 --loop-items 10
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

os.environ.setdefault("TQDM_DISABLE", "1")

from stagewise.bench import builtin_file  # noqa: E402
from stagewise.config import DatasetConfig, ModelConfig  # noqa: E402
from stagewise.data import load_dataset_config  # noqa: E402
from stagewise.generation import SamplingConfig, generate  # noqa: E402
from stagewise.models import load_model_and_tokenizer  # noqa: E402
from stagewise.strategies.gradual.slick import ProbeSettings, categorize, model_answerer  # noqa: E402


def loop_answerer(model, tokenizer):
    """The naive baseline: one prompt, one sequence per generate call (same KV cache and
    first-line stop as the batched path, so the ratio measures batching and prefill sharing)."""

    def answer(prompts, sampling: SamplingConfig):
        single = replace(sampling, num_return_sequences=1)
        outputs = []
        for prompt in prompts:
            ids = tokenizer(prompt)["input_ids"]
            outputs.append([generate(model, tokenizer, [ids], replace(single, seed=sampling.seed + k), batch_size=1)[0][0]
                            for k in range(sampling.num_return_sequences)])
        return outputs

    return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--loop-items", type=int, default=10)
    parser.add_argument("--n-prompts", type=int, default=10)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64, help="sequences decoded per batch")
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path=args.model))
    model.eval()
    known = load_dataset_config("k", DatasetConfig(format="instruction", path=str(builtin_file("facts:known_dev")))).rows
    new = load_dataset_config("n", DatasetConfig(format="instruction", path=str(builtin_file("facts:train")))).rows
    items = (known + new)[: args.items]
    settings = ProbeSettings(n_prompts=args.n_prompts, samples=args.samples, max_new_tokens=8)
    generations = args.n_prompts * (1 + args.samples)

    start = time.perf_counter()
    categorize(items, settings, model_answerer(model, tokenizer, args.batch_size))
    batched = len(items) / (time.perf_counter() - start)
    subset = items[: args.loop_items]
    start = time.perf_counter()
    categorize(subset, settings, loop_answerer(model, tokenizer))
    looped = len(subset) / (time.perf_counter() - start)
    print(f"model={args.model}: {generations} generations per item ({args.n_prompts} prompts x (1 greedy + {args.samples} samples))")
    print(f"batched (batch {args.batch_size}): {len(items)} items, {batched:.3f} items/s")
    print(f"one-at-a-time loop:  {len(subset)} items, {looped:.3f} items/s")
    print(f"throughput ratio batched/loop: {batched / looped:.1f}x  (target >= 5x)")


if __name__ == "__main__":
    main()
