"""The study's page (``report.html`` beside study.md): gain vs retention per retention probe (a line
per arm along its curve, the base model at the origin), the forest of paired differences vs the
baseline, and the items each arm's final model flipped, counted over its seeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..report import fmt, fmt_interval
from .config import StudyRun


def gain_panels(results: dict[str, Any]) -> list[dict[str, Any]]:
    if not results["gain_levels"]:
        return []
    match = results["match_on"]
    retention = [name for name in next(iter(results["matched"].values())) if name != "curve"]
    return [
        {
            "title": probe,
            "x_label": f"target gain ({match})",
            "y_label": f"change on {probe}",
            "series": [
                {
                    "name": arm,
                    "points": [{"x": 0.0, "y": 0.0, "info": {"point": "base model"}}]
                    + [
                        {
                            "x": p["gain"],
                            "y": p[probe],
                            "info": {"gain": fmt(p["gain"], signed=True), probe: fmt(p[probe], signed=True)},
                        }
                        for p in matched["curve"]
                        if p.get(probe) is not None
                    ],
                }
                for arm, matched in results["matched"].items()
            ],
        }
        for probe in retention
    ]


def forest_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for probe in results["probes"]:
        for name, row in results["rows"].items():
            versus = row["probes"][probe].get("vs_baseline")
            if versus:
                rows.append(
                    {
                        "label": f"{probe}: {name}",
                        "estimate": versus["estimate"],
                        "low": versus["low"],
                        "high": versus["high"],
                        "significant": (versus.get("p_holm") or 1.0) < 0.05,
                        "info": {
                            "arm": name,
                            "probe": probe,
                            "seeds": row["seeds"],
                            "score": fmt(row["probes"][probe]["score"]),
                            "vs baseline": fmt_interval(versus),
                            "p (Holm)": f"{fmt(versus.get('p_value'))} ({fmt(versus.get('p_holm'))})",
                        },
                    }
                )
    return rows


def final_flips(run: StudyRun) -> dict[str, list[dict[str, Any]]]:
    """The run's last scored stage's flipped items (its report.json; none for runs reported before
    reports kept them)."""
    try:
        report = json.loads((Path(run.recipe.output_dir) / "report.json").read_text(encoding="utf-8"))
        flipped = report.get("flipped") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return flipped[list(flipped)[-1]] if isinstance(flipped, dict) and flipped else {}


def study_flips(runs: list[StudyRun]) -> list[dict[str, Any]]:
    """Per curve point, probe and item: in how many of its seeds the final model forgot it (right ->
    wrong vs the base model) or learned it."""
    counted: dict[tuple[str, str, str], dict[str, Any]] = {}
    seeds: dict[str, int] = {}
    for run in runs:
        seeds[run.point] = seeds.get(run.point, 0) + 1
        for probe, items in final_flips(run).items():
            for item in items:
                row = counted.setdefault(
                    (run.point, probe, item["id"]),
                    {
                        "arm": run.point,
                        "probe": probe,
                        "question": item["question"],
                        "gold": item["gold"],
                        "base answered": item["base_answer"],
                        "forgotten": 0,
                        "learned": 0,
                    },
                )
                row[item["flip"]] += 1
    for row in counted.values():
        row["flip"] = "forgotten" if row["forgotten"] >= row["learned"] else "learned"
        row["seeds"] = f"forgotten in {row['forgotten']}, learned in {row['learned']} of {seeds[row['arm']]}"
    return sorted(counted.values(), key=lambda r: (r["arm"], r["probe"], -max(r["forgotten"], r["learned"])))


def study_sections(results: dict[str, Any], runs: list[StudyRun]) -> list[dict[str, Any]]:
    panels = gain_panels(results)
    sections = [{"kind": "scatter", "title": "Gain vs retention (mean over seeds)", "panels": panels}] if panels else []
    sections.append(
        {
            "kind": "forest",
            "title": f"Paired difference vs the baseline '{results['baseline']}' (95% CI; red: Holm p < 0.05)",
            "x_label": "arm - baseline",
            "rows": forest_rows(results),
        }
    )
    sections.append(
        {
            "kind": "items",
            "title": "Items each arm's final model flipped since the base model",
            "rows": study_flips(runs),
            "filters": ["arm", "probe", "flip"],
            "columns": ["arm", "probe", "flip", "seeds", "question", "gold", "base answered"],
        }
    )
    return sections
