"""``element-knowledge``: a retention probe of science knowledge, unlike the geography suites.

Built from the element table of the PyPI package ``periodictable`` (public domain, NIST data):
for each of the 118 elements, four questions,
- ``symbol_name``: "Which chemical element has the symbol Fe?" → Iron,
- ``number_name``: "Which chemical element has atomic number 26?" → Iron,
- ``name_symbol``: "What is the chemical symbol of iron?" → Fe,
- ``name_number``: "What is the atomic number of iron?" → 26,
all in one split ``elements`` (no symbol question where the symbol is an English word: He, In, I).
With ``known_by: smollm2-135m`` (the default) only the items the bundled SmolLM2-135M-Instruct
answers correctly (greedy, ``contains``) are kept, as for ``geo-knowledge``: 90 of 464 (18 symbol ->
name, 3 number -> name, 52 name -> symbol, 17 name -> number). ``known_by: null`` gives all.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from ..registry import BENCHMARKS
from .known_items import keep_known

# symbols that are also common English words: `contains` would find them in almost any answer
SYMBOL_WORDS = {"I", "As", "He", "In", "At", "No", "Be", "Am"}
SPELLINGS = {"Aluminum": ["Aluminium"], "Cesium": ["Caesium"], "Sulfur": ["Sulphur"]}


def _elements() -> list[Any]:
    try:
        import periodictable
    except ImportError:
        raise DataError(
            "builtin 'element-knowledge' needs the periodictable package (pip install periodictable==2.1.0)"
        ) from None
    return [element for element in periodictable.elements if element.number > 0]


def candidates() -> dict[str, list[dict[str, Any]]]:
    rows = []
    for element in _elements():
        name, symbol, number = element.name.capitalize(), element.symbol, str(element.number)
        questions = {
            "symbol_name": (f"Which chemical element has the symbol {symbol}?", name),
            "number_name": (f"Which chemical element has atomic number {number}?", name),
            "name_symbol": (f"What is the chemical symbol of {element.name}?", symbol),
            "name_number": (f"What is the atomic number of {element.name}?", number),
        }
        if symbol in SYMBOL_WORDS:
            del questions["name_symbol"]
        for kind, (question, answer) in questions.items():
            aliases = SPELLINGS.get(name, []) if answer == name else []
            rows.append(
                {"id": f"{kind}-{number}", "type": kind, "instruction": question, "output": answer, "aliases": aliases}
            )
    return {"elements": rows}


@BENCHMARKS.register("element-knowledge")
def build(known_by: str | None = "smollm2-135m") -> dict[str, list[dict[str, Any]]]:
    return keep_known("element-knowledge", "element", candidates(), known_by)
