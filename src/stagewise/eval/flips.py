"""The items that flipped: right before and wrong after (forgotten), or the other way (learned).

Each carries the question, the gold answer and both models' answers, ordered by how much the
gold answer's log-probability moved (mean per token, teacher-forced as training renders it), so
the first forgotten item is the one the tuned model has moved furthest away from.
"""

from __future__ import annotations

from typing import Any

from ..config import DatasetConfig
from ..data.formats import gold_answer
from ..registry import format_has
from .likelihood import answer_example, answer_log_likelihoods
from .suite import item_ids

QUESTION_FIELDS = ("instruction", "prompt", "input", "text")


def question_of(row: dict[str, Any]) -> str:
    """What the item asks, as a person reads it (not the rendered chat template)."""
    if isinstance(row.get("messages"), list):
        users = [m.get("content", "") for m in row["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1] if users else "")
    return str(next((row[field] for field in QUESTION_FIELDS if field in row), ""))


def is_binary(result: dict[str, Any]) -> bool:
    return bool(result.get("items")) and all(item["score"] in (0.0, 1.0) for item in result["items"])


def flipped(base: dict[str, Any], tuned: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every item whose 0/1 score changed, with what both models answered."""
    by_id = dict(zip(item_ids(rows), rows))
    theirs = {item["id"]: item for item in tuned["items"]}
    changed = []
    for item in base["items"]:
        after = theirs.get(item["id"])
        if after is None or after["score"] == item["score"] or item["id"] not in by_id:
            continue
        row = by_id[item["id"]]
        changed.append(
            {
                "id": item["id"],
                "flip": "forgotten" if item["score"] > after["score"] else "learned",
                "question": question_of(row)[:300],
                "gold": (gold_answer(row) or str(row.get("label", "")))[:200],
                "base_answer": item.get("prediction", ""),
                "tuned_answer": after.get("prediction", ""),
            }
        )
    return changed


def gold_logprobs(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], cfg: DatasetConfig, batch_size: int, max_length: int
) -> list[float]:
    examples = [answer_example(row, cfg, tokenizer, max_length) for row in rows]
    scored = answer_log_likelihoods(model, tokenizer, examples, batch_size, "audit gold log-prob")
    return [total / max(count, 1) for total, count in scored]


def order_by_gold_logprob(
    changed: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    cfg: DatasetConfig,
    models: tuple[Any, Any],
    tokenizer: Any,
    batch_size: int,
    max_length: int,
) -> None:
    """Add each flipped item's gold log-probability change (formats with an answer field) and sort:
    forgotten items first, the largest fall (or smallest rise) first; then learned items, the largest
    rise first."""
    if changed and format_has(cfg.format, "answer_field"):
        by_id = dict(zip(item_ids(rows), rows))
        chosen = [by_id[item["id"]] for item in changed]
        before, after = (gold_logprobs(model, tokenizer, chosen, cfg, batch_size, max_length) for model in models)
        for item, old, new in zip(changed, before, after):
            item["gold_logprob_change"] = new - old
    sign = {"forgotten": 1.0, "learned": -1.0}
    changed.sort(
        key=lambda item: (item["flip"] != "forgotten", sign[item["flip"]] * item.get("gold_logprob_change", 0.0))
    )
