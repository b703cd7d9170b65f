"""Run many recipes in one ``torchrun`` launch (imports cost seconds per launch); used by
test_sharded.py: ``torchrun --nproc_per_node=2 sharded_cases.py CASES.json RESULTS.json``.

Each case is ``{"name", "recipe", "crash_step"}``; with a crash step the run is stopped right after
that checkpoint is written (both ranks, as a kill would) and run again, resuming. Rank 0 writes
``{name: error or null}``.
"""
from __future__ import annotations

import json
import sys

from conftest import CrashAfterSave  # (this script's folder is on its path)

from stagewise.config import recipe_from_dict
from stagewise.distributed import init_from_launcher, is_main_process
from stagewise.engine import run_recipe


def run_case(case: dict) -> None:
    if case.get("crash_step"):
        try:
            run_recipe(recipe_from_dict(case["recipe"]), callbacks=[CrashAfterSave(case["crash_step"])],
                       log=lambda message: None)
        except KeyboardInterrupt:
            pass
    run_recipe(recipe_from_dict(case["recipe"]), log=lambda message: None)


def main(cases_path: str, results_path: str) -> None:
    init_from_launcher()
    results = {}
    for case in json.loads(open(cases_path).read()):
        print(f"[case] {case['name']}", file=sys.stderr, flush=True)
        try:
            run_case(case)
            results[case["name"]] = None
        except Exception as err:  # recorded; the test names the failing case
            results[case["name"]] = f"{type(err).__name__}: {err}"[:2000]
    if is_main_process():
        with open(results_path, "w") as handle:
            json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
