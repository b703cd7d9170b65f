"""``chat``: real question/answer pairs from ``chatterbot-corpus`` (21 English topics), as
general instruction data for replay and retention."""

from __future__ import annotations

import random
from typing import Any

import yaml

from ..registry import BENCHMARKS
from .sources import chatterbot_dir


def pairs() -> list[dict[str, Any]]:
    rows = []
    for path in sorted(chatterbot_dir().glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations", []):
            turns = [str(turn).strip() for turn in conversation if str(turn).strip()]
            for question, answer in zip(turns[::2], turns[1::2]):
                rows.append({"instruction": question, "output": answer, "type": path.stem})
    return rows


@BENCHMARKS.register("chat")
def build(seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    rows = pairs()
    random.Random(seed).shuffle(rows)
    cut1, cut2 = int(len(rows) * 0.7), int(len(rows) * 0.8)
    return {"train": rows[:cut1], "dev": rows[cut1:cut2], "test": rows[cut2:]}
