"""``general-text``: held-out plain English prose (NYT editorial snippets from the VADER
corpus) for perplexity, a proxy for general language ability."""

from __future__ import annotations

import random
from typing import Any

from ..registry import BENCHMARKS
from .sentiment import rated_sentences


@BENCHMARKS.register("general-text")
def build(seed: int = 0, size: int = 300) -> dict[str, list[dict[str, Any]]]:
    sentences = [text for _, text, _ in rated_sentences(("nytEditorialSnippets",)) if len(text.split()) >= 8]
    random.Random(seed).shuffle(sentences)
    rows = [{"text": text} for text in sentences]
    return {"dev": rows[:size], "test": rows[size : 2 * size]}
