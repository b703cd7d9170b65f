"""``sentiment``: real human-rated sentences (VADER, Hutto & Gilbert ICWSM 2014), mean rating
in [-4, 4] thresholded into classes. Training is imbalanced on purpose (minority = negative,
``imbalance`` majority items per minority item); dev and test are balanced. ``sources`` picks the
corpora (tweets, movie-review or Amazon-review snippets): one of them alone is a separate dataset
of its own domain, for claims that must hold on more than one."""

from __future__ import annotations

import random
from typing import Any

from ..errors import DataError
from ..registry import BENCHMARKS
from .sources import vader_corpus_dir

SOURCES = ("tweets", "movieReviewSnippets", "amazonReviewSnippets")


def rated_sentences(sources: tuple[str, ...] = SOURCES) -> list[tuple[float, str, str]]:
    corpus = vader_corpus_dir()
    rows = []
    for source in sources:
        text = (corpus / f"{source}_GroundTruth.txt").read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            parts = line.rstrip("\r").split("\t")
            if len(parts) == 3 and parts[2].strip():
                rows.append((float(parts[1]), parts[2].strip(), source))
    return rows


@BENCHMARKS.register("sentiment")
def build(
    seed: int = 0,
    imbalance: int = 10,
    minority_train: int = 60,
    threshold: float = 1.0,
    dev_per_class: int = 100,
    test_per_class: int = 200,
    sources: list[str] | tuple[str, ...] = SOURCES,
) -> dict[str, list[dict[str, Any]]]:
    """|score| >= threshold keeps clearly rated sentences: negative (< 0) or positive (> 0)."""
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown or not sources:
        raise DataError(f"builtin 'sentiment': sources {unknown or '[]'} - expected some of {list(SOURCES)}")
    rng = random.Random(seed)
    by_class: dict[str, list[dict[str, Any]]] = {"negative": [], "positive": []}
    seen: set[str] = set()
    for score, sentence, source in rated_sentences(tuple(sources)):
        if abs(score) >= threshold and sentence not in seen:  # the corpus repeats some sentences
            seen.add(sentence)
            label = "positive" if score > 0 else "negative"
            by_class[label].append({"text": sentence, "label": label, "score": score, "source": source})
    for rows in by_class.values():
        rng.shuffle(rows)
    held = dev_per_class + test_per_class
    wanted = {"negative": held + minority_train, "positive": held + minority_train * imbalance}
    short = [f"{label}: {len(by_class[label])} of {n}" for label, n in wanted.items() if len(by_class[label]) < n]
    if short:
        raise DataError(f"builtin 'sentiment': too few rated sentences in {list(sources)} ({', '.join(short)} needed)")
    splits: dict[str, list[dict[str, Any]]] = {
        "dev": by_class["negative"][:dev_per_class] + by_class["positive"][:dev_per_class],
        "test": by_class["negative"][dev_per_class:held] + by_class["positive"][dev_per_class:held],
        "train": by_class["negative"][held : held + minority_train]
        + by_class["positive"][held : held + minority_train * imbalance],
    }
    for rows in splits.values():
        rng.shuffle(rows)
    for split in ("train", "test"):  # the same rows as a generation task (one fixed format, for ProMoT)
        splits[f"{split}_generative"] = [
            {"prompt": f"Review: {row['text']}\nSentiment:", "completion": f" {row['label']}"} for row in splits[split]
        ]
    return splits
