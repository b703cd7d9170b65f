"""Every bundled recipe, shrunk to a few steps and a few probe items, and the scores it reports.

A refactor of the engine must not change what a recipe computes. This runs each bundled recipe
with every dataset cut to ``--rows`` rows and every stage to ``--steps`` optimizer steps (same
code paths: transforms, selectors, losses, LR rules, trainers, evaluation), and writes the
report's numbers (base and after-stage scores, trainable counts, training rows, DPO/train
metrics) to one JSON file. Run it on two commits and compare the files with ``--compare``:

    python benchmarks/recipe_reports.py --out before.json            # on the old commit
    python benchmarks/recipe_reports.py --out after.json             # on the new one
    python benchmarks/recipe_reports.py --compare before.json after.json

A separate cache folder per pass (``STAGEWISE_CACHE``) keeps the two passes independent.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

from stagewise.cli import bundled_recipes  # noqa: E402
from stagewise.config import load_recipe  # noqa: E402
from stagewise.engine import run_recipe  # noqa: E402
from stagewise.errors import StagewiseError  # noqa: E402
from stagewise.report import build_report  # noqa: E402

TRAIN_METRICS = ("train_loss", "last_rewards/margins", "last_rewards/accuracies")


def shrink_overrides(path: Path, rows: int, steps: int, output_dir: Path) -> list[str]:
    import yaml

    raw = yaml.safe_load(path.read_text())
    overrides = [f"output_dir={output_dir}"]
    for name, dataset in raw["datasets"].items():
        if dataset.get("format") != "classification":  # keep both classes of an imbalanced set
            overrides.append(f"datasets.{name}.max_samples={rows}")
    for index, _ in enumerate(raw["stages"]):
        overrides += [f"stages.{index}.max_steps={steps}", f"stages.{index}.save_steps=1000"]
    return overrides


def summarize(manifest) -> dict:
    """The numbers a report shows. ``manifest`` is the run's manifest: a dict on commits before the
    typed ``RunManifest``, the typed record after it (so one script compares the two)."""
    report = build_report(manifest)
    if not isinstance(manifest, dict):
        manifest = manifest.model_dump(mode="json")
    stages = []
    for entry in manifest["stages"]:
        metrics, evaluation = entry.get("metrics") or {}, entry.get("evaluation") or {}
        stages.append({
            "name": entry["name"], "trainable_params": entry.get("trainable_params"),
            "train_rows": entry.get("train_rows"),
            "metrics": {k: metrics[k] for k in TRAIN_METRICS if k in metrics},
            "scores": {group: {name: result["score"] for name, result in evaluation.get(group, {}).items()}
                       for group in ("target", "retention")},
        })
    return {"base": report["base"], "stages": stages}


def run_all(args: argparse.Namespace) -> None:
    """Every recipe, shrunk, in throwaway folders (removed afterwards: a full pass writes ~9 GB of
    model folders and ~0.5 GB of benchmark cache)."""
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}  # a pass resumes where it stopped
    names = [name for name in args.recipes or sorted(bundled_recipes()) if name not in results]
    with tempfile.TemporaryDirectory(prefix="stagewise-cache-") as cache, \
            tempfile.TemporaryDirectory(prefix="recipe-reports-") as scratch:
        os.environ["STAGEWISE_CACHE"] = cache
        work = Path(scratch)
        for name in names:
            path = bundled_recipes()[name][0]
            started = time.perf_counter()
            try:
                recipe = load_recipe(path, shrink_overrides(path, args.rows, args.steps, work / name))
                results[name] = summarize(run_recipe(recipe, log=lambda message: None).manifest)
            except StagewiseError as err:
                results[name] = {"error": str(err)}
            except Exception as err:  # a crash is a result too: the other recipes still run
                results[name] = {"error": f"{type(err).__name__}: {err}"}
            print(f"{name}: {time.perf_counter() - started:.0f} s {results[name].get('error', '')}", flush=True)
            out.write_text(json.dumps(results, indent=1, sort_keys=True))


def flatten(value, prefix=""):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from flatten(inner, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from flatten(inner, f"{prefix}[{index}]")
    else:
        yield prefix, value


def compare(before_path: str, after_path: str, tolerance: float) -> int:
    before, after = (dict(flatten(json.loads(Path(p).read_text()))) for p in (before_path, after_path))
    changed = 0
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        same = old == new or (isinstance(old, float) and isinstance(new, float)
                              and math.isclose(old, new, rel_tol=tolerance, abs_tol=tolerance))
        if not same:
            changed += 1
            print(f"{key}: {old} -> {new}")
    print(f"{len(set(before) | set(after))} values compared, {changed} differ (tolerance {tolerance})")
    return 1 if changed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", help="bundled recipe names (default: all)")
    parser.add_argument("--out", default="recipe-reports.json",
                        help="results file; recipes already in it are kept, not rerun")
    parser.add_argument("--rows", type=int, default=16,
                        help="rows kept per dataset (classification sets are kept whole)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per stage")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare, args.tolerance))
    run_all(args)


if __name__ == "__main__":
    main()
