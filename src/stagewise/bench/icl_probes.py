"""``icl-probes``: small tasks in distinct prompt formats, scored few-shot, to measure loss of
in-context ability and format specialization after fine-tuning."""

from __future__ import annotations

import random
from typing import Any

from ..registry import BENCHMARKS
from .facts import KNOWN

ANTONYMS = [
    ("hot", "cold"),
    ("big", "small"),
    ("up", "down"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("open", "closed"),
    ("early", "late"),
    ("full", "empty"),
    ("hard", "soft"),
    ("old", "new"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("high", "low"),
    ("wet", "dry"),
    ("long", "short"),
    ("loud", "quiet"),
    ("thick", "thin"),
    ("win", "lose"),
    ("push", "pull"),
    ("buy", "sell"),
    ("true", "false"),
    ("left", "right"),
    ("day", "night"),
    ("first", "last"),
]
FRENCH = [
    ("cat", "chat"),
    ("dog", "chien"),
    ("house", "maison"),
    ("water", "eau"),
    ("bread", "pain"),
    ("book", "livre"),
    ("sun", "soleil"),
    ("moon", "lune"),
    ("car", "voiture"),
    ("tree", "arbre"),
    ("apple", "pomme"),
    ("school", "école"),
    ("friend", "ami"),
    ("city", "ville"),
    ("milk", "lait"),
    ("red", "rouge"),
    ("green", "vert"),
    ("black", "noir"),
    ("white", "blanc"),
    ("hello", "bonjour"),
    ("thank you", "merci"),
    ("yes", "oui"),
    ("no", "non"),
    ("man", "homme"),
    ("woman", "femme"),
]
ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

# task -> (prompt format with {input}, answer prefix added after the prompt)
FORMATS = {
    "antonym": "{input} ->",
    "capital": "Country: {input}\nCapital:",
    "number_word": "{input} in words:",
    "translate_fr": "English: {input}\nFrench:",
}


def number_word(n: int) -> str:
    return ONES[n] if n < 20 else TENS[n // 10] + ("" if n % 10 == 0 else f"-{ONES[n % 10]}")


def task_items() -> dict[str, list[tuple[str, str]]]:
    capitals = [
        (q.removeprefix("What is the capital of ").rstrip("?"), a) for kind, q, a, _ in KNOWN if kind == "capital"
    ]
    return {
        "antonym": ANTONYMS,
        "capital": capitals,
        "number_word": [(str(n), number_word(n)) for n in range(21, 100, 3)],
        "translate_fr": FRENCH,
    }


@BENCHMARKS.register("icl-probes")
def build(seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Per task: a few items kept as demonstrations (dev), the rest scored (test)."""
    rng = random.Random(seed)
    splits: dict[str, list[dict[str, Any]]] = {"dev": [], "test": []}
    for task, items in task_items().items():
        items = list(items)
        rng.shuffle(items)
        for index, (source, target) in enumerate(items):
            row = {"task": task, "input": source, "output": target, "prompt_format": FORMATS[task]}
            splits["dev" if index < 8 else "test"].append(row)
    return splits
