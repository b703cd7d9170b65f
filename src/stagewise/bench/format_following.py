"""``format-following``: does the model still do exactly what an instruction asks, and nothing more?

Four instruction types whose answers are checked by ``exact_match`` on the first line (so a
correct answer wrapped in a sentence fails, as a format instruction intends): repeat a word (or a
one-word country name) and nothing else, give a sum as a bare number, answer a geography question
with only yes or no, and write a number given in words as digits. Words come from the project's own word lists; the
yes/no questions from the GeoNames cities of ``geo-knowledge`` (half true, half with another
country). Seeded; 75 items per type in ``test``, 10 per type in ``dev``.
"""

from __future__ import annotations

import random
from typing import Any

from ..registry import BENCHMARKS
from .icl_probes import ANTONYMS, FRENCH, number_word

PER_TYPE = 85  # 10 dev + 75 test


def _words() -> list[str]:
    return sorted({w for pair in ANTONYMS for w in pair} | {english for english, _ in FRENCH if " " not in english})


@BENCHMARKS.register("format-following")
def build(seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    from .geo_knowledge import candidates

    rng = random.Random(seed)
    cities = candidates()["world_cities"][:400]
    countries = sorted({row["output"] for row in cities})
    words = sorted(set(_words()) | {country for country in countries if " " not in country})
    items: dict[str, list[tuple[str, str]]] = {
        "only_word": [(f'Reply with only the word "{w}" and nothing else.', w) for w in rng.sample(words, PER_TYPE)],
        "only_number": [],
        "yes_no": [],
        "digits": [],
    }
    for _ in range(PER_TYPE):
        a, b = rng.randint(2, 49), rng.randint(2, 49)
        items["only_number"].append((f"What is {a} plus {b}? Reply with only the number.", str(a + b)))
        n = rng.randint(21, 99)
        items["digits"].append((f"Write the number {number_word(n)} using digits only.", str(n)))
    for index, row in enumerate(rng.sample(cities, PER_TYPE)):
        city = row["instruction"].removeprefix("In which country is the city of ").rstrip("?")
        truth = index % 2 == 0
        country = row["output"] if truth else rng.choice([c for c in countries if c != row["output"]])
        items["yes_no"].append(
            (f"Answer with only yes or no: is {city} a city in {country}?", "yes" if truth else "no")
        )
    splits: dict[str, list[dict[str, Any]]] = {"dev": [], "test": []}
    for kind, pairs in items.items():
        for index, (instruction, answer) in enumerate(pairs):
            splits["dev" if index < 10 else "test"].append(
                {"id": f"{kind}-{index}", "type": kind, "instruction": instruction, "output": answer}
            )
    return splits
