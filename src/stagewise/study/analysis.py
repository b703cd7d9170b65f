"""From a study's finished runs to its numbers: per-item scores aligned by item id, change from
the base model with hierarchical intervals, paired differences vs the baseline arm (Holm-adjusted),
retention at matched target gain, and each probe's minimal detectable difference.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from ..errors import DataError
from ..stats import holm, matched_retention, mean_delta_interval, paired_difference
from .config import Study, StudyRun

GROUPS = ("target", "retention")


@dataclass
class Probe:
    name: str
    group: str
    metric: str
    higher_is_better: bool
    ids: list[str]
    base: np.ndarray


@dataclass
class Row:
    """One arm (or one sweep value of an arm): its runs' per-item scores at every point, per seed."""

    name: str
    arm: str
    points: list[dict[str, np.ndarray]] = field(default_factory=list)  # training order; arrays (seeds, items)

    @property
    def final(self) -> dict[str, np.ndarray]:
        return self.points[-1]


def _items(run_dir: Path, summary: dict[str, Any], probe: str) -> dict[str, float]:
    path = run_dir / summary["items_file"]
    if not path.is_file():
        raise DataError(f"{path}: per-item scores missing (rerun the study to recompute them)")
    return {item["id"]: float(item["score"]) for item in map(json.loads, path.read_text().splitlines())}


def _points(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Evaluation summaries in training order: each stage's curve points, then its final scores."""
    points = []
    for stage in manifest["stages"]:
        points += [point["evaluation"] for point in stage.get("curve", [])]
        if stage.get("evaluation"):
            points.append(stage["evaluation"])
    return points


def load_scores(study: Study, manifests: dict[StudyRun, dict[str, Any]]) -> tuple[list[Probe], list[Row]]:
    first_run = study.runs[0]
    base = manifests[first_run]["base_evaluation"]
    run_dir = Path(first_run.recipe.output_dir)
    probes = []
    for group in GROUPS:
        for name, summary in base[group].items():
            scores = _items(run_dir, summary, name)
            probes.append(Probe(name, group, summary["metric"], summary["higher_is_better"], list(scores),
                                np.array(list(scores.values()))))
    rows: dict[str, Row] = {}
    for run in study.runs:
        row = rows.setdefault(run.point, Row(run.point, run.arm))
        run_dir = Path(run.recipe.output_dir)
        for index, evaluation in enumerate(_points(manifests[run])):
            if index == len(row.points):
                row.points.append({probe.name: [] for probe in probes})
            for probe in probes:
                scores = _items(run_dir, evaluation[probe.group][probe.name], probe.name)
                if list(scores) != probe.ids:
                    raise DataError(f"{run_dir}: probe {probe.name!r} holds other items than the base model's")
                row.points[index][probe.name].append(list(scores.values()))
    for row in rows.values():
        row.points = [{name: np.array(seeds) for name, seeds in point.items()} for point in row.points]
    return probes, list(rows.values())


def analyse(study: Study, manifests: dict[StudyRun, dict[str, Any]]) -> dict[str, Any]:
    config = study.config
    probes, rows = load_scores(study, manifests)
    baseline = next(row for row in rows if row.name == config.baseline)
    n_boot = config.bootstrap
    table: dict[str, dict[str, Any]] = {}
    for row in rows:
        table[row.name] = {"arm": row.arm, "seeds": len(config.seeds), "probes": {}}
        for probe in probes:
            final = row.final[probe.name]
            entry: dict[str, Any] = {
                "score": float(final.mean()),
                "delta": mean_delta_interval(final, probe.base, n_boot).to_dict(),
            }
            if row is not baseline:
                entry["vs_baseline"] = paired_difference(final, baseline.final[probe.name], n_boot).to_dict()
            table[row.name]["probes"][probe.name] = entry
    mdd: dict[str, float | None] = {}
    for probe in probes:
        compared = [name for name, row in table.items() if "vs_baseline" in row["probes"][probe.name]]
        adjusted = holm([table[name]["probes"][probe.name]["vs_baseline"]["p_value"] for name in compared])
        for name, p in zip(compared, adjusted):
            table[name]["probes"][probe.name]["vs_baseline"]["p_holm"] = p
        widths = [table[name]["probes"][probe.name]["vs_baseline"]["half_width"] for name in compared]
        mdd[probe.name] = median(widths) if widths else None

    match = next(probe for probe in probes if probe.name == study.match_on)
    baseline_gain = float((baseline.final[match.name] - match.base[None, :]).mean())
    levels = [baseline_gain, *config.gain_levels]
    matched: dict[str, Any] = {}
    for arm, arm_config in config.arms.items():
        arm_rows = [row for row in rows if row.arm == arm]
        curve = [row.final for row in arm_rows] if arm_config.sweep else arm_rows[0].points
        matched[arm] = {
            probe.name: [{"gain": level, **matched_retention(
                [point[match.name] for point in curve], [point[probe.name] for point in curve],
                match.base, probe.base, level, n_boot)} for level in levels]
            for probe in probes if probe.group == "retention"}
        matched[arm]["curve"] = [
            {"gain": float((point[match.name] - match.base[None, :]).mean()),
             **{probe.name: float((point[probe.name] - probe.base[None, :]).mean())
                for probe in probes if probe.group == "retention"}} for point in curve]
    return {
        "study": str(study.source),
        "baseline": config.baseline,
        "seeds": config.seeds,
        "bootstrap": n_boot,
        "match_on": match.name,
        "gain_levels": levels,
        "probes": {probe.name: {"group": probe.group, "metric": probe.metric, "higher_is_better": probe.higher_is_better,
                                "items": len(probe.ids), "base": float(probe.base.mean()),
                                "minimal_detectable_difference": mdd[probe.name]} for probe in probes},
        "rows": table,
        "matched": matched,
    }
