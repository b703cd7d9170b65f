"""From a study's finished runs to its numbers: per-item scores aligned by item id, change from
the base model with hierarchical intervals, paired differences vs the baseline arm (Holm-adjusted),
retention at matched target gain, and each probe's minimal detectable difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from ..errors import DataError
from ..eval.evaluator import read_items
from ..manifest import RunManifest, as_manifest
from ..report import continual_metrics
from ..stats import (
    f1_per_class,
    holm,
    matched_retention,
    mean_delta_interval,
    paired_difference,
    paired_from_draws,
    paired_statistic_difference,
    spearman_interval,
    statistic_delta_interval,
)
from .config import Study, StudyConfig, StudyRun
from .frontier import frontier_analysis

GROUPS = ("target", "retention", "recovery")  # recovery: retention probes scored with examples
CLASSIFICATION = ("macro_f1", "micro_f1", "accuracy")  # probes whose items carry prediction and gold labels


@dataclass
class Probe:
    """A probe's items (aligned by id) and the base model's values on them: per-item scores, or
    for a classification probe the predicted label indices (its statistics are F1s, not means)."""

    name: str
    group: str
    metric: str
    higher_is_better: bool
    ids: list[str]
    base: np.ndarray
    labels: list[str] = field(default_factory=list)
    gold: np.ndarray | None = None

    @property
    def classification(self) -> bool:
        return self.metric in CLASSIFICATION

    def statistics(self) -> list[tuple[str, Any]]:
        """(name, statistic) pairs reported for this probe; None = the mean of per-item scores."""
        if not self.classification:
            return [(self.name, None)]
        gold, n = np.asarray(self.gold), len(self.labels)

        def overall(values: np.ndarray, idx: np.ndarray) -> float:
            if self.metric == "macro_f1":
                return float(f1_per_class(values[idx], gold[idx], n).mean())
            return float(np.mean(values[idx] == gold[idx]))  # accuracy = micro-F1 for single-label data

        def class_f1(label: int) -> Any:
            return lambda values, idx: float(f1_per_class(values[idx], gold[idx], n)[label])

        return [(self.name, overall)] + [(f"{self.name}:f1_{name}", class_f1(i)) for i, name in enumerate(self.labels)]


@dataclass
class Row:
    """One arm (or one sweep value of an arm): its runs' per-item scores at every point, per seed."""

    name: str
    arm: str
    points: list[dict[str, np.ndarray]] = field(default_factory=list)  # training order; arrays (seeds, items)

    @property
    def final(self) -> dict[str, np.ndarray]:
        return self.points[-1]


def _items(run_dir: Path, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    try:
        return {item["id"]: item for item in read_items(run_dir, summary)}
    except DataError as err:
        raise DataError(f"{err} (rerun the study to recompute them)") from None


def _values(probe: Probe, items: dict[str, dict[str, Any]]) -> list[float]:
    if probe.classification:
        return [float(probe.labels.index(item["prediction"])) for item in items.values()]
    return [float(item["score"]) for item in items.values()]


def _points(manifest: RunManifest) -> list[dict[str, Any]]:
    """Evaluation summaries in training order: each stage's curve points, then its final scores."""
    points = []
    for stage in manifest.stages:
        points += [point.evaluation for point in stage.curve]
        if stage.evaluation:
            points.append(stage.evaluation)
    return points


def load_scores(study: Study, manifests: dict[StudyRun, RunManifest]) -> tuple[list[Probe], list[Row]]:
    first_run = study.runs[0]
    base = manifests[first_run].base_evaluation or {}
    run_dir = Path(first_run.recipe.output_dir)
    probes = []
    for group in GROUPS:
        for name, summary in base.get(group, {}).items():
            items = _items(run_dir, summary)
            probe = Probe(name, group, summary["metric"], summary["higher_is_better"], list(items), np.array([]))
            if probe.classification:
                probe.labels = sorted(
                    {item["gold"] for item in items.values()} | {i["prediction"] for i in items.values()}
                )
                probe.gold = np.array([probe.labels.index(item["gold"]) for item in items.values()], dtype=float)
            probe.base = np.array(_values(probe, items))
            probes.append(probe)
    rows: dict[str, Row] = {}
    collected: dict[str, list[dict[str, list[list[float]]]]] = {}  # per row: per point, per probe, seeds
    for run in study.runs:
        rows.setdefault(run.point, Row(run.point, run.arm))
        points = collected.setdefault(run.point, [])
        run_dir = Path(run.recipe.output_dir)
        for index, evaluation in enumerate(_points(manifests[run])):
            if index == len(points):
                points.append({probe.name: [] for probe in probes})
            for probe in probes:
                items = _items(run_dir, evaluation[probe.group][probe.name])
                if list(items) != probe.ids:
                    raise DataError(f"{run_dir}: probe {probe.name!r} holds other items than the base model's")
                points[index][probe.name].append(_values(probe, items))
    for name, row in rows.items():
        row.points = [{probe: np.array(seeds) for probe, seeds in point.items()} for point in collected[name]]
    return probes, list(rows.values())


def continual_summary(
    study: Study, probes: list[Probe], rows: list[Row], baseline: Row, n_boot: int
) -> dict[str, Any] | None:
    """For a task sequence (probes with ``stage:``, scored once after every stage): each arm's
    average accuracy, BWT and FWT (``report.continual_metrics``) with a bootstrap interval over
    seeds then items, and its paired difference from the baseline (seeds averaged, items
    resampled alike for both arms, as :func:`stats.paired_difference` does)."""
    recipe = study.runs[0].recipe
    stages = [stage.name for stage in recipe.stages]
    tasks = sorted(
        (stages.index(t.stage), t.name)
        for group in ("target", "retention")
        for t in getattr(recipe.evaluation, group)
        if t.stage
    )
    by_name = {probe.name: probe for probe in probes}
    if (
        len(tasks) < 2  # one task: nothing earlier to forget (BWT) or to transfer to (FWT)
        or recipe.evaluation is None
        or recipe.evaluation.every != "stage"
        or any(by_name[name].classification for _, name in tasks)
        or any(len(row.points) != len(stages) for row in rows)
    ):
        return None

    def summary(row: Row, seeds: np.ndarray, items: list[np.ndarray]) -> dict[str, float]:
        matrix = [
            [float(row.points[stage][name][seeds][:, items[j]].mean()) for j, (_, name) in enumerate(tasks)]
            for stage, _ in tasks
        ]
        metrics = continual_metrics(
            matrix, [float(by_name[name].base[items[j]].mean()) for j, (_, name) in enumerate(tasks)]
        )
        return {key: value for key, value in metrics.items() if value is not None}  # all set: 2+ tasks

    rng = np.random.default_rng(0)
    n_seeds = len(study.config.seeds)
    every_item = [np.arange(len(by_name[name].ids)) for _, name in tasks]
    draws = [
        (rng.integers(0, n_seeds, size=n_seeds), [rng.integers(0, len(i), size=len(i)) for i in every_item])
        for _ in range(n_boot)
    ]
    all_seeds = np.arange(n_seeds)
    baseline_paired = [summary(baseline, all_seeds, items) for _, items in draws]
    table: dict[str, Any] = {}
    for row in rows:
        estimate = summary(row, all_seeds, every_item)
        resampled = [summary(row, seeds, items) for seeds, items in draws]
        paired = [summary(row, all_seeds, items) for _, items in draws]
        table[row.name] = {}
        for key, value in estimate.items():
            entry = {
                "estimate": value,
                **{k: v for k, v in zip(("low", "high"), np.quantile([r[key] for r in resampled], [0.025, 0.975]))},
            }
            if row is not baseline:
                difference = np.array([a[key] - b[key] for a, b in zip(paired, baseline_paired)])
                entry["vs_baseline"] = paired_from_draws(
                    difference, value - summary(baseline, all_seeds, every_item)[key], 0.95, sum(map(len, every_item))
                ).to_dict()
            table[row.name][key] = entry
    return {"tasks": [name for _, name in tasks], "arms": table}


def kl_predicts_forgetting(
    manifests: dict[StudyRun, RunManifest], retention: list[Probe], n_boot: int
) -> dict[str, Any]:
    """Per retention probe: Spearman's correlation, over every run's scored stages, between the stage's
    KL to its entering model and the probe's change over that stage (RL's Razor's forgetting predictor)."""
    points: dict[str, list[tuple[float, float]]] = {probe.name: [] for probe in retention}
    for manifest in manifests.values():
        before = manifest.base_evaluation or {}
        for stage in manifest.stages:
            after = stage.evaluation
            if not after:
                continue
            kl = stage.kl_to_entering
            for probe in retention:
                old, new = (scores.get("retention", {}).get(probe.name, {}).get("score") for scores in (before, after))
                if kl and kl["per_sequence"] is not None and old is not None and new is not None:
                    points[probe.name].append((kl["per_sequence"], new - old))
            before = after
    return {
        name: spearman_interval([x for x, _ in pairs], [y for _, y in pairs], n_boot)
        for name, pairs in points.items()
        if len(pairs) >= 3
    }


def knowledge_vs_format(probes: list[Probe], rows: list[Row], baseline: Row, n_boot: int) -> dict[str, Any]:
    """Per retention probe scored with examples too (``<name>@<k>shot``) and arm: the format loss,
    the part of the drop the examples recover (drop without them minus drop with them), with its
    interval and its paired difference from the baseline's (the knowledge loss is the ``@kshot``
    probe's own change, in the probe tables)."""
    by_name = {probe.name: probe for probe in probes}
    split: dict[str, Any] = {}
    for shown in (probe for probe in probes if probe.group == "recovery"):
        plain = by_name.get(shown.name.rsplit("@", 1)[0])
        if plain is None or plain.classification:
            continue
        base = plain.base - shown.base

        def format_part(row: Row) -> np.ndarray:
            return row.final[plain.name] - row.final[shown.name]  # (seeds, items): plain minus with examples

        split[plain.name] = {
            "examples": shown.name,
            "arms": {
                row.name: {
                    "format_loss": mean_delta_interval(format_part(row), base, n_boot).to_dict(),
                    **(
                        {}
                        if row is baseline
                        else {
                            "vs_baseline": paired_difference(format_part(row), format_part(baseline), n_boot).to_dict()
                        }
                    ),
                }
                for row in rows
            },
        }
    return split


def claim_comparisons(
    config: StudyConfig, rows: list[Row], statistics: list[tuple[Probe, str, Any]], n_boot: int
) -> list[dict[str, Any]]:
    """The claim's comparisons that pair two arms other than the baseline (``versus``): the same
    paired difference as ``vs_baseline``, so a claim over several settings compares within each."""
    by_name = {row.name: row for row in rows}
    found = []
    for test in config.claim.tests if config.claim else []:
        if test.versus is None:
            continue
        probe, statistic = next((probe, stat) for probe, name, stat in statistics if name == test.probe)
        arm, versus = by_name[test.arm].final[probe.name], by_name[test.versus].final[probe.name]
        difference = (
            paired_difference(arm, versus, n_boot)
            if statistic is None
            else paired_statistic_difference(arm, versus, statistic, n_boot)
        )
        found.append({"arm": test.arm, "versus": test.versus, "probe": test.probe, **difference.to_dict()})
    return found


def analyse(study: Study, read: Mapping[StudyRun, RunManifest | dict[str, Any]]) -> dict[str, Any]:
    config = study.config
    manifests = {run: as_manifest(manifest) for run, manifest in read.items()}
    probes, rows = load_scores(study, manifests)
    baseline = next(row for row in rows if row.name == config.baseline)
    n_boot = config.bootstrap
    statistics = [(probe, name, statistic) for probe in probes for name, statistic in probe.statistics()]
    table: dict[str, dict[str, Any]] = {}
    for row in rows:
        table[row.name] = {"arm": row.arm, "seeds": len(config.seeds), "probes": {}}
        for probe, name, statistic in statistics:
            final = row.final[probe.name]
            if statistic is None:
                entry: dict[str, Any] = {
                    "score": float(final.mean()),
                    "delta": mean_delta_interval(final, probe.base, n_boot).to_dict(),
                }
                if row is not baseline:
                    entry["vs_baseline"] = paired_difference(final, baseline.final[probe.name], n_boot).to_dict()
            else:
                entry = {
                    "score": float(np.mean([statistic(seed, np.arange(final.shape[1])) for seed in final])),
                    "delta": statistic_delta_interval(final, probe.base, statistic, n_boot).to_dict(),
                }
                if row is not baseline:
                    entry["vs_baseline"] = paired_statistic_difference(
                        final, baseline.final[probe.name], statistic, n_boot
                    ).to_dict()
            table[row.name]["probes"][name] = entry
    mdd: dict[str, float | None] = {}
    for _, name, _ in statistics:
        compared = [point for point, values in table.items() if "vs_baseline" in values["probes"][name]]
        adjusted = holm([table[point]["probes"][name]["vs_baseline"]["p_value"] for point in compared])
        for point, p in zip(compared, adjusted):
            table[point]["probes"][name]["vs_baseline"]["p_holm"] = p
        widths = [table[point]["probes"][name]["vs_baseline"]["half_width"] for point in compared]
        mdd[name] = median(widths) if widths else None

    match = next(probe for probe in probes if probe.name == study.match_on)
    # retention measures: the plain probes and their scores with examples (``<name>@<k>shot``)
    retention = [probe for probe in probes if probe.group in ("retention", "recovery") and not probe.classification]
    matched: dict[str, Any] = {}
    levels: list[float] = []
    if not match.classification and retention:  # gain/retention curves need per-item score probes
        levels = [float((baseline.final[match.name] - match.base[None, :]).mean()), *config.gain_levels]
    for arm, arm_config in config.arms.items() if levels else ():
        arm_rows = [row for row in rows if row.arm == arm]
        curve = [row.final for row in arm_rows] if arm_config.sweep else arm_rows[0].points
        matched[arm] = {
            probe.name: [
                {
                    "gain": level,
                    **matched_retention(
                        [point[match.name] for point in curve],
                        [point[probe.name] for point in curve],
                        match.base,
                        probe.base,
                        level,
                        n_boot,
                    ),
                }
                for level in levels
            ]
            for probe in retention
        }
        matched[arm]["curve"] = [
            {
                "gain": float((point[match.name] - match.base[None, :]).mean()),
                **{probe.name: float((point[probe.name] - probe.base[None, :]).mean()) for probe in retention},
            }
            for point in curve
        ]
    frontier = None
    if not match.classification and retention:
        compared = [arm for arm in config.arms if config.frontier_arms is None or arm in config.frontier_arms]
        paths = {arm: [row.points for row in rows if row.arm == arm] for arm in compared}
        frontier = frontier_analysis(
            paths,
            config.frontier_baseline or baseline.name,
            match.name,
            {probe.name: probe.higher_is_better for probe in retention},
            {probe.name: probe.base for probe in probes},
            n_boot,
            config.frontier_levels,
            gains=tuple(config.frontier_gains),
        )
    split = knowledge_vs_format(probes, rows, baseline, n_boot)
    kl_correlation = kl_predicts_forgetting(manifests, retention, n_boot)
    summary = {
        name: {
            "group": probe.group,
            "metric": probe.metric if name == probe.name else "f1",
            "higher_is_better": probe.higher_is_better,
            "items": len(probe.ids),
            "base": float(probe.base.mean()) if statistic is None else statistic(probe.base, np.arange(len(probe.ids))),
            "minimal_detectable_difference": mdd[name],
        }
        for probe, name, statistic in statistics
    }
    return {
        "study": str(study.source),
        "claim": config.claim.model_dump() if config.claim else None,
        "claim_comparisons": claim_comparisons(config, rows, statistics, n_boot),
        "baseline": config.baseline,
        "seeds": config.seeds,
        "bootstrap": n_boot,
        "match_on": match.name,
        "gain_levels": levels,
        "probes": summary,
        "rows": table,
        "matched": matched,
        "frontier": frontier,
        "knowledge_vs_format": split,
        "kl_vs_retention": kl_correlation,
        "continual": continual_summary(study, probes, rows, baseline, n_boot),
        "loco": [
            {
                "cluster": cluster,
                "probe": name,
                "base": summary[name]["base"],
                "held_out": table[f"without-{cluster}"]["probes"][name]["score"],
                "held_out_vs_included": table[f"without-{cluster}"]["probes"][name].get("vs_baseline"),
                "included": table["all"]["probes"][name]["score"],
            }
            for cluster, names in (study.clusters or {}).items()
            if f"without-{cluster}" in table
            for name in names
        ],
    }
