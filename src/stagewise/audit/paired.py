"""Base vs tuned on the same items: paired differences with 95% intervals, Holm across suites, the
knowledge-vs-format split, and the items that flipped.

A difference is tuned minus base in the probe's item unit (0/1 for answer checks, mean token
negative log-likelihood for ``perplexity``, where a positive difference is worse). The interval is
a paired percentile bootstrap over items (:func:`~stagewise.stats.paired_difference`); its half
width is the smallest difference this probe could have told from zero (the MDD at 95%).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..report import knowledge_vs_format
from ..stats import holm, paired_difference

Result = dict[str, Any]


def aligned(base: Result, tuned: Result) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, base scores, tuned scores) of the items both scored, in the base's order."""
    theirs = {item["id"]: item["score"] for item in tuned.get("items", [])}
    ids = [item["id"] for item in base.get("items", []) if item["id"] in theirs]
    ours = {item["id"]: item["score"] for item in base.get("items", [])}
    return ids, np.array([ours[i] for i in ids], float), np.array([theirs[i] for i in ids], float)


def paired(base: Result, tuned: Result, n_boot: int) -> dict[str, Any] | None:
    ids, before, after = aligned(base, tuned)
    if not ids:
        return None
    return paired_difference(after[None, :], before[None, :], n_boot=n_boot).to_dict()


def drop_of(row: dict[str, Any]) -> float | None:
    """How much worse the tuned model is, in score units (positive: worse); None for probes whose
    item unit is not the score's (perplexity: its items are token NLLs)."""
    difference = row.get("difference")
    if difference is None or not row["higher_is_better"]:
        return None
    return -difference["estimate"]


def compare_probe(base: Result, tuned: Result, n_boot: int) -> dict[str, Any]:
    return {
        "metric": base["metric"],
        "higher_is_better": base["higher_is_better"],
        "n": base["n"],
        "base": base["score"],
        "tuned": tuned["score"],
        "difference": paired(base, tuned, n_boot),
    }


def compare_results(base: dict[str, Any], tuned: dict[str, Any], n_boot: int) -> dict[str, Any]:
    """Every retention probe compared, Holm-adjusted p across them, and the knowledge-vs-format
    split (with the interval of the knowledge loss) where a probe was scored with examples."""
    probes = {
        name: compare_probe(result, tuned["retention"][name], n_boot)
        for name, result in base.get("retention", {}).items()
        if name in tuned.get("retention", {})
    }
    tested = [name for name, row in probes.items() if row["difference"] is not None]
    for name, adjusted in zip(tested, holm([probes[name]["difference"]["p_value"] for name in tested])):
        probes[name]["difference"]["p_holm"] = adjusted
    split = knowledge_vs_format(base, tuned)
    for row in split.values():
        shown = row["examples"]
        row["knowledge_interval"] = paired(base["recovery"][shown], tuned["recovery"][shown], n_boot)
    return {"probes": probes, "knowledge_vs_format": split}


def regressions(comparison: dict[str, Any], threshold: float) -> list[str]:
    """Probes whose drop exceeds ``threshold`` with its 95% interval excluding no change."""
    found = []
    for name, row in comparison["probes"].items():
        drop = drop_of(row)
        if drop is not None and drop > threshold and row["difference"]["high"] < 0:
            found.append(name)
    return found
