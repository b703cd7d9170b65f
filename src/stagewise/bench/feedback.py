"""``feedback``: the ``preference`` pairs unpaired for KTO — each pair gives its chosen answer as a
desirable row (``label: true``) and its rejected answer as an undesirable one (``label: false``),
so KTO and DPO can be compared on the same answers."""

from __future__ import annotations

from typing import Any

from ..registry import BENCHMARKS
from . import preference


@BENCHMARKS.register("feedback")
def build(seed: int = 0, size: int = 240) -> dict[str, list[dict[str, Any]]]:
    return {
        split: [
            {"prompt": row["prompt"], "completion": row[answer], "label": answer == "chosen", "type": row["type"]}
            for row in rows
            for answer in ("chosen", "rejected")
        ]
        for split, rows in preference.build(seed, size).items()
    }
