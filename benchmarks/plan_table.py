"""The README's plan table: `stagewise plan` for each strategy on the shipped 8B/70B configs at one
80 GB device (bf16-mixed, the bundled recipes' batch size and max_length).

    python benchmarks/plan_table.py [--device-memory 80GB] [--seq-len 1024]
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from stagewise.cli import find_recipe
from stagewise.config import load_recipe
from stagewise.plan import load_model_config, parse_memory, plan_recipe
from stagewise.plan.footprint import GiB

CONFIGS = Path(__file__).resolve().parents[1] / "src/stagewise/plan/configs"
STRATEGIES = {  # name -> (bundled recipe, overrides)
    "full": ("quickstart", []),
    "HFT": ("hft", []),
    "LoRA r16": ("lora", []),
    "QLoRA r16": ("qlora", []),
    "L2-SP": ("quickstart", ["stages.0.regularizer={kind: l2sp, weight: 1.0}"]),
    "EWC": ("quickstart", ["stages.0.regularizer={kind: ewc, weight: 1.0, data: general_text}"]),
    "DPO": ("dpo", []),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device-memory", default="80GB")
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--models", nargs="+", default=["llama-3-8b", "qwen2.5-7b", "llama-3-70b"])
    args = parser.parse_args()
    memory = parse_memory(args.device_memory)
    print(f"| strategy | {' | '.join(args.models)} |")
    print("|---|" + "---|" * len(args.models))
    for name, (recipe_name, overrides) in STRATEGIES.items():
        recipe = load_recipe(find_recipe(recipe_name), overrides)
        cells = []
        for model in args.models:
            config = load_model_config(recipe.model, str(CONFIGS / f"{model}.json"))
            [plan, *_] = plan_recipe(recipe, config, memory, seq_len=args.seq_len)
            verdict = "fits" if plan.fits else f"no; fits with {re.sub(r' [(][^)]*[)]', '', plan.suggestion)}"
            cells.append(f"{plan.peak / GiB:.1f} GiB, {verdict}")
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
