"""Answer checkers and scores, as plain functions with hand-checkable values, and the call
shape of a registered metric."""

from __future__ import annotations

import re
import string

from ..generation import first_line

ARTICLES = re.compile(r"\b(a|an|the)\b")
NUMBER = re.compile(r"-?\d+(?:[,\s]\d+)*(?:\.\d+)?")  # sail-sg/sdft eval/utils.py find_last_integer


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golds: list[str]) -> bool:
    """Normalized first line of the prediction equals a normalized gold answer or alias."""
    guess = normalize_answer(first_line(prediction))
    return any(guess == normalize_answer(gold) for gold in golds)


def contains_match(prediction: str, golds: list[str]) -> bool:
    """A normalized gold answer (or alias) appears as whole words in the prediction's first line."""
    guess = f" {normalize_answer(first_line(prediction))} "
    return any(normalize_answer(gold) and f" {normalize_answer(gold)} " in guess for gold in golds)


def last_integer(text: str) -> int | None:
    """The last number in ``text`` as an integer, read as SDFT's reference ``find_last_integer``
    does: commas and whitespace between digit groups are thousands separators ("1 234" and
    "1,234" -> 1234), a non-zero decimal part makes it invalid (None: "x=3.5")."""
    matches = NUMBER.findall(text)
    if not matches:
        return None
    number = re.sub(r"[,\s]", "", matches[-1])
    whole, _, fraction = number.partition(".")
    if fraction and int(fraction) != 0:
        return None
    return int(whole)


def regex_match(prediction: str, pattern: str, golds: list[str]) -> bool:
    """The first capture (or whole match) of ``pattern`` equals a normalized gold."""
    found = re.search(pattern, prediction)
    if not found:
        return False
    value = found.group(1) if found.groups() else found.group(0)
    return any(normalize_answer(value) == normalize_answer(gold) for gold in golds)


def classification_scores(predicted: list[int], gold: list[int], labels: list[str]) -> dict[str, float]:
    """Accuracy, micro/macro F1 and per-class F1 (an absent class with no predictions scores 0)."""
    scores: dict[str, float] = {}
    f1s = []
    for index, label in enumerate(labels):
        tp = sum(p == index and g == index for p, g in zip(predicted, gold))
        fp = sum(p == index and g != index for p, g in zip(predicted, gold))
        fn = sum(p != index and g == index for p, g in zip(predicted, gold))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        scores[f"f1_{label}"] = f1
        f1s.append(f1)
    correct = sum(p == g for p, g in zip(predicted, gold))
    scores["accuracy"] = correct / len(gold) if gold else 0.0
    scores["micro_f1"] = scores["accuracy"]  # single-label: micro P = micro R = accuracy
    scores["macro_f1"] = sum(f1s) / len(f1s) if f1s else 0.0
    return scores
