"""Which geo-knowledge items does a model already answer? Writes the list that the built-in
``geo-knowledge`` benchmark keeps with ``known_by: NAME``.

Every candidate (``known_by: null``) is asked once with the model's chat template and scored
greedily with ``contains`` (the metric the retention probes use); the ids answered correctly
go to ``src/stagewise/bench/data/geo_known_NAME.json`` with per-split counts.

    python benchmarks/build_retention_suites.py --model smollm2-135m
"""
from __future__ import annotations

import argparse
import datetime
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")

from stagewise.bench.geo_knowledge import KNOWN_LISTS, candidates  # noqa: E402
from stagewise.config import DatasetConfig, EvalTaskConfig, EvaluationConfig, ModelConfig  # noqa: E402
from stagewise.eval import evaluate_task  # noqa: E402
from stagewise.io import atomic_write_json  # noqa: E402
from stagewise.models import load_model_and_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path=args.model))
    evaluation = EvaluationConfig(batch_size=args.batch_size)
    cfg = DatasetConfig(format="instruction", rows=[{"instruction": "x", "output": "y"}])
    kept, counts = [], {}
    for split, rows in candidates().items():
        started = time.perf_counter()
        task = EvalTaskConfig(name=split, data=split, metric="contains", max_new_tokens=24)
        result = evaluate_task(model, tokenizer, task, cfg, rows, evaluation)
        known = [row["id"] for row, item in zip(rows, result["items"]) if item["score"] == 1.0]
        kept += known
        counts[split] = {"candidates": len(rows), "known": len(known)}
        print(f"{split}: {len(known)} of {len(rows)} answered correctly ({time.perf_counter() - started:.0f} s)", flush=True)
    path = KNOWN_LISTS / f"geo_known_{args.model}.json"
    atomic_write_json(path, {"model": args.model, "metric": "contains (greedy, chat template)",
                             "made": datetime.date.today().isoformat(), "counts": counts, "ids": sorted(kept)})
    print(f"wrote {path} ({len(kept)} ids)")


if __name__ == "__main__":
    main()
