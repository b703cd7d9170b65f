"""``preference``: small prompt/chosen/rejected data for the DPO demo, generated from the
chat corpus (chosen: the corpus answer; rejected: an answer from another conversation) and
the known-facts table (chosen: the right answer in a sentence; rejected: a wrong one)."""

from __future__ import annotations

import random
from typing import Any

from ..registry import BENCHMARKS
from .chat import pairs
from .facts import KNOWN


@BENCHMARKS.register("preference")
def build(seed: int = 0, size: int = 240) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed)
    rows = []
    chat = pairs()
    rng.shuffle(chat)
    for row in chat[: size // 2]:
        other = rng.choice([r for r in chat if r["type"] != row["type"]])
        rows.append(
            {"prompt": row["instruction"], "chosen": row["output"], "rejected": other["output"], "type": "chat"}
        )
    for kind, question, answer, _ in KNOWN:
        wrong = rng.choice([a for k, _, a, _ in KNOWN if k == kind and a != answer])
        rows.append(
            {
                "prompt": question,
                "chosen": f"The answer is {answer}.",
                "rejected": f"The answer is {wrong}.",
                "type": kind,
            }
        )
    rng.shuffle(rows)
    cut = int(len(rows) * 0.85)
    return {"train": rows[:cut], "test": rows[cut:]}
