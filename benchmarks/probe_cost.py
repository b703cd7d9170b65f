"""Evaluation seconds per item of each retention metric, on the suites of the probes study.

Scores the base model on the 300-item ``geo-knowledge`` suites with ``contains`` (greedy, 24 new
tokens), ``answer_logprob`` (one teacher-forced forward per item) and ``choice`` (4 options, one
forward per option), each also with 3 solved examples in the prompt (``@3shot``, as
``recovery_shots: 3`` scores them), each ``--repeats`` times, and prints the median seconds per
item and each metric's cost relative to ``contains``. Run it alone: another torch process on the
same cores slows both several-fold.

    python benchmarks/probe_cost.py --items 300 --repeats 2
    python benchmarks/probe_cost.py --metrics contains,answer_logprob,answer_logprob@3shot
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TQDM_DISABLE", "1")

from stagewise.bench import builtin_file  # noqa: E402
from stagewise.config import DatasetConfig, EvalTaskConfig, EvaluationConfig, ModelConfig  # noqa: E402
from stagewise.data import load_dataset_config  # noqa: E402
from stagewise.eval import evaluate_task  # noqa: E402
from stagewise.eval.recovery import with_examples  # noqa: E402
from stagewise.eval.suite import item_ids  # noqa: E402
from stagewise.models import load_model_and_tokenizer  # noqa: E402

PLAIN = {
    "contains": {"metric": "contains", "max_new_tokens": 24},
    "answer_logprob": {"metric": "answer_logprob"},
    "choice": {"metric": "choice", "choices": 4},
}
METRICS = {**PLAIN, **{f"{name}@3shot": {**settings, "recovery_shots": 3} for name, settings in PLAIN.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--metrics", default=",".join(METRICS), help="comma-separated; contains is always timed")
    args = parser.parse_args()
    chosen = {name: METRICS[name] for name in METRICS if name == "contains" or name in args.metrics.split(",")}
    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path=args.model))
    evaluation = EvaluationConfig(batch_size=args.batch_size)
    per_item: dict[str, list[float]] = {name: [] for name in chosen}
    for suite in ("world_cities", "us_cities"):
        cfg = DatasetConfig(format="instruction", path=str(builtin_file(f"geo-knowledge:{suite}")))
        rows = load_dataset_config(suite, cfg).rows[: args.items]
        for name, settings in chosen.items():
            task = EvalTaskConfig(name=suite, data=suite, **settings)
            for _ in range(args.repeats):
                started = time.perf_counter()
                scored_cfg, scored = (cfg, rows)
                if task.recovery_shots:  # rendered with examples inside the timing, as an evaluation does
                    scored_cfg, scored = with_examples(task, cfg, rows, item_ids(rows), tokenizer)
                evaluate_task(model, tokenizer, task, scored_cfg, scored, evaluation)
                per_item[name].append((time.perf_counter() - started) / len(rows))
    base = statistics.median(per_item["contains"])
    print(
        f"model={args.model}, {args.items} items x 2 suites, batch {args.batch_size}, {args.repeats} repeats, "
        f"torch threads {os.cpu_count()}"
    )
    print("| metric | seconds per item (median) | cost vs contains |")
    print("|---|---|---|")
    for name, times in per_item.items():
        seconds = statistics.median(times)
        print(f"| {name} | {seconds:.4f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
