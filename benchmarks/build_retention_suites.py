"""Which retention-suite items does a model already answer? Writes the list that the built-in
``geo-knowledge`` and ``element-knowledge`` benchmarks keep with ``known_by: NAME``.

Every candidate (``known_by: null``) is asked once with the model's chat template and scored
greedily with ``contains`` (the metric the retention probes use); the ids answered correctly
go to ``src/stagewise/bench/data/<suite>_known_NAME.json`` with per-split (and per-type) counts.

    python benchmarks/build_retention_suites.py --suite element --model smollm2-135m
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from collections import Counter

os.environ.setdefault("TQDM_DISABLE", "1")

from stagewise.bench import element_knowledge, geo_knowledge  # noqa: E402
from stagewise.bench.known_items import known_list_path  # noqa: E402
from stagewise.config import DatasetConfig, EvalTaskConfig, EvaluationConfig, ModelConfig  # noqa: E402
from stagewise.eval import evaluate_task  # noqa: E402
from stagewise.io import atomic_write_json  # noqa: E402
from stagewise.models import load_model_and_tokenizer  # noqa: E402

SUITES = {"geo": geo_knowledge.candidates, "element": element_knowledge.candidates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="geo")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path=args.model))
    evaluation = EvaluationConfig(batch_size=args.batch_size)
    cfg = DatasetConfig(format="instruction", rows=[{"instruction": "x", "output": "y"}])
    kept, counts = [], {}
    for split, rows in SUITES[args.suite]().items():
        started = time.perf_counter()
        task = EvalTaskConfig(name=split, data=split, metric="contains", max_new_tokens=24)
        result = evaluate_task(model, tokenizer, task, cfg, rows, evaluation)
        known = [row for row, item in zip(rows, result["items"]) if item["score"] == 1.0]
        kept += [row["id"] for row in known]
        by_type = {
            kind: f"{n} of {m}"
            for kind, m in Counter(r["type"] for r in rows).items()
            for n in [sum(r["type"] == kind for r in known)]
        }
        counts[split] = {"candidates": len(rows), "known": len(known), "by_type": by_type}
        elapsed = time.perf_counter() - started
        print(f"{split}: {len(known)} of {len(rows)} answered correctly ({elapsed:.0f} s) {by_type}", flush=True)
    path = known_list_path(args.suite, args.model)
    atomic_write_json(
        path,
        {
            "model": args.model,
            "metric": "contains (greedy, chat template)",
            "made": datetime.date.today().isoformat(),
            "counts": counts,
            "ids": sorted(kept),
        },
    )
    print(f"wrote {path} ({len(kept)} ids)")


if __name__ == "__main__":
    main()
