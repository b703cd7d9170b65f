"""What a person reads from a study: study.md (tables), study.png (gain vs retention, one line
per arm along its curve, the base model at the origin), frontier.png (each arm's best retention
at each gain, with its band) and forest.png (paired differences vs the baseline with their 95%
intervals)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..io import save_figure
from ..report import fmt
from ..report import fmt_interval as _ci  # (short: the tables hold many)
from .page import forest_rows


def _p(value: float | None) -> str:
    return "-" if value is None else ("<0.001" if value < 0.001 else f"{value:.3f}")


def _loco(results: dict[str, Any]) -> list[str]:
    """Leave-one-cluster-out: each cluster's probes at the base model, after tuning on the other
    clusters (held out; paired vs included), and after tuning on every cluster (included)."""
    if not results.get("loco"):
        return []
    lines = [
        "",
        "## Leave one cluster out",
        "",
        "| held-out cluster | probe | base (zero-shot) | tuned on the other clusters | tuned on all (included) | "
        "held out - included [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["loco"]:
        lines.append(
            f"| {row['cluster']} | {row['probe']} | {fmt(row['base'])} | {fmt(row['held_out'])} | "
            f"{fmt(row['included'])} | {_ci(row['held_out_vs_included'])} |"
        )
    return lines


def _continual(results: dict[str, Any]) -> list[str]:
    """A task sequence's average accuracy, BWT and FWT per arm, with the paired difference of BWT."""
    continual = results.get("continual")
    if not continual:
        return []
    lines = [
        "",
        f"## Task sequence: {' -> '.join(continual['tasks'])}",
        "",
        "Average accuracy after the last stage, backward transfer (BWT, negative = forgetting) and forward "
        "transfer (FWT), GEM's definitions; intervals resample seeds then items.",
        "",
        "| arm | average accuracy | BWT | FWT | BWT vs baseline [95% CI] | p |",
        "|---|---|---|---|---|---|",
    ]
    for arm, entry in continual["arms"].items():
        versus = entry["bwt"].get("vs_baseline")
        lines.append(
            f"| {arm} | {_ci(entry['average_accuracy'], '.3f')} | {_ci(entry['bwt'])} | {_ci(entry['fwt'])} | "
            f"{_ci(versus) if versus else '(baseline)'} | {_p(versus and versus['p_value'])} |"
        )
    return lines


def study_markdown(results: dict[str, Any]) -> str:
    probes = results["probes"]
    lines = [
        f"# stagewise study: {results['study']}",
        "",
        f"Baseline arm: **{results['baseline']}**; seeds {results['seeds']}; {results['bootstrap']} bootstrap "
        "resamples. Intervals are 95% percentile bootstrap intervals: changes from the base model resample seeds, "
        "then items within each seed; differences vs the baseline are paired on the same items (each arm "
        "averaged over its seeds), with two-sided bootstrap p-values, Holm-adjusted across arms per probe.",
        "",
        "## Probes",
        "",
        "| probe | group | metric | items | base | minimal detectable difference |",
        "|---|---|---|---|---|---|",
    ]
    for name, probe in probes.items():
        direction = "" if probe["higher_is_better"] else " (mean NLL per item, lower is better)"
        lines.append(
            f"| {name} | {probe['group']} | {probe['metric']}{direction} | {probe['items']} | "
            f"{fmt(probe['base'])} | {fmt(probe['minimal_detectable_difference'], '.3f')} |"
        )
    lines += _loco(results) + _continual(results)
    for name, probe in probes.items():
        lines += [
            "",
            f"## {probe['group']}: {name}",
            "",
            "| arm | score | change from base [95% CI] | vs baseline [95% CI] | p | p (Holm) |",
            "|---|---|---|---|---|---|",
        ]
        for row_name, row in results["rows"].items():
            entry = row["probes"][name]
            versus = entry.get("vs_baseline")
            lines.append(
                f"| {row_name} | {fmt(entry['score'])} | {_ci(entry['delta'])} | "
                f"{_ci(versus) if versus else '(baseline)'} | {_p(versus and versus['p_value'])} | "
                f"{_p(versus and versus.get('p_holm'))} |"
            )
    levels = results["gain_levels"]
    if not levels:
        lines += [
            "",
            "Retention at matched target gain: not computed (it needs a per-item score target probe and "
            "at least one such retention probe).",
        ]
        return "\n".join(lines + _knowledge_vs_format(results) + _kl_correlation(results) + _cost(results)) + "\n"
    lines += [
        "",
        f"## Retention at matched target gain ({results['match_on']})",
        "",
        f"Read along each arm's curve (training order from the base model) at the baseline's final gain "
        f"{levels[0]:+.3f}"
        + (f" and at {', '.join(f'{g:+.3f}' for g in levels[1:])}" if levels[1:] else "")
        + "; '-' means the arm never reached that gain.",
        "",
        "| arm | retention probe | " + " | ".join(f"at gain {g:+.3f}" for g in levels) + " |",
        "|---|---|" + "---|" * len(levels),
    ]
    for arm, per_probe in results["matched"].items():
        for probe, values in per_probe.items():
            if probe == "curve":
                continue
            lines.append(f"| {arm} | {probe} | " + " | ".join(_ci(v) + _gap_mark(v) for v in values) + " |")
    lines += [
        "",
        f"† read across an unmeasured stretch wider than {WIDE_GAP:.0%} of the curve's gain range (the "
        "curve was interpolated there: add curve points, e.g. `evaluation.every: log`).",
    ]
    return (
        "\n".join(
            lines + _knowledge_vs_format(results) + _frontier(results) + _kl_correlation(results) + _cost(results)
        )
        + "\n"
    )


WIDE_GAP = 0.25  # a matched-gain value read across a wider share of the gain range is flagged


def _gap_mark(value: dict[str, Any]) -> str:
    return " †" if (value.get("gap") or 0.0) > WIDE_GAP else ""


def _kl_correlation(results: dict[str, Any]) -> list[str]:
    """Spearman's correlation between each stage's KL to its entering model and a probe's change."""
    correlation = results.get("kl_vs_retention")
    if not correlation:
        return []
    lines = [
        "",
        "## Does KL to the entering model predict forgetting?",
        "",
        "Spearman's correlation, over every run's scored stages, between the stage's KL(tuned || entering) on "
        "its own prompts and each retention probe's change over that stage (negative: more KL, more "
        "forgetting); the interval resamples the points.",
        "",
        "| retention probe | Spearman [95% CI] | points |",
        "|---|---|---|",
    ]
    lines += [f"| {probe} | {_ci(value, '+.2f')} | {value['points']} |" for probe, value in correlation.items()]
    return lines


def _knowledge_vs_format(results: dict[str, Any]) -> list[str]:
    """Per probe scored with examples: each arm's format loss (recovered by the examples) with its
    interval and paired difference from the baseline's."""
    split = results.get("knowledge_vs_format")
    if not split:
        return []
    lines = [
        "",
        "## Knowledge vs format",
        "",
        "Format loss: the part of a retention drop that examples in the prompt recover (the drop without them "
        "minus the drop with them); the knowledge loss is the `@kshot` probe's own change above.",
    ]
    for probe, entry in split.items():
        lines += [
            "",
            f"| {probe} ({entry['examples']}) | format loss [95% CI] | vs baseline [95% CI] | p |",
            "|---|---|---|---|",
        ]
        for arm, values in entry["arms"].items():
            versus = values.get("vs_baseline")
            lines.append(
                f"| {arm} | {_ci(values['format_loss'])} | {_ci(versus) if versus else '(baseline)'} | "
                f"{_p(versus and versus['p_value'])} |"
            )
    return lines


def _frontier(results: dict[str, Any]) -> list[str]:
    """Each arm's frontier (best retention reached at each gain, cross-fitted) and the mean paired
    difference from the baseline's frontier over the common gain range."""
    frontier = results.get("frontier")
    if not frontier:
        return []
    if not frontier["levels"]:
        return ["", f"Frontiers: not compared ({frontier['note']})."]
    levels = frontier["levels"]
    lines = [
        "",
        f"## Frontiers ({frontier['match_on']} gain vs retention)",
        "",
        "Each arm's best retention change reached at each target gain over all its points (every sweep value "
        "and curve point; paths chosen on one half of the items, read on the other). 'area' is the mean "
        f"paired difference from the baseline's frontier over gains {levels[0]:+.3f} to {levels[-1]:+.3f}.",
    ]
    for probe, entry in frontier["probes"].items():
        lines += [
            "",
            f"### {probe}",
            "",
            "| arm | area vs baseline [95% CI] | p | p (Holm) | " + " | ".join(f"at {g:+.3f}" for g in levels) + " |",
            "|---|---|---|---|" + "---|" * len(levels),
        ]
        for arm, values in entry["arms"].items():
            area = values.get("area")
            lines.append(
                f"| {arm} | {_ci(area) if area else '(baseline)'} | {_p(area and area.get('p_value'))} | "
                f"{_p(area and area.get('p_holm'))} | "
                + " | ".join(_ci(point, "+.3f") for point in values["frontier"])
                + " |"
            )
        lines += _verdict(frontier, entry)
    return lines


def _verdict(frontier: dict[str, Any], entry: dict[str, Any]) -> list[str]:
    """Each arm's frontier difference from the baseline's at the study's ``frontier_gains``, and
    which one dominates there (the interval excludes 0) — '-' where a frontier does not reach."""
    gains = frontier.get("gains") or []
    if not gains:
        return []
    lines = [
        "",
        "| arm | " + " | ".join(f"vs baseline at {g:+.2f}" for g in gains) + " |",
        "|---|" + "---|" * len(gains),
    ]
    for arm, values in entry["arms"].items():
        if "vs_baseline_at_gains" in values:
            cells = [_ci(point, "+.3f") + _dominance(point) for point in values["vs_baseline_at_gains"]]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _dominance(point: dict[str, Any]) -> str:
    if point.get("low") is None:
        return ""
    return " (higher)" if point["low"] > 0 else " (lower)" if point["high"] < 0 else ""


def plot_frontier(results: dict[str, Any], path: Path) -> None:
    """One panel per retention probe: each arm's points (light), its frontier and 95% band, the base
    model at the origin (nothing to draw without a common gain range)."""
    frontier = results.get("frontier")
    if not frontier or not frontier["levels"]:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = list(frontier["probes"])
    columns = min(len(probes), 3)
    rows = math.ceil(len(probes) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4 * rows), squeeze=False)
    for ax, probe in zip(axes.flat, probes):
        entry = frontier["probes"][probe]
        for arm, values in entry["arms"].items():
            cloud = entry["cloud"][arm]
            dots = ax.scatter([x for x, _ in cloud], [y for _, y in cloud], s=8, alpha=0.35)
            shown = [p for p in values["frontier"] if p["estimate"] is not None]
            ax.plot(
                [p["gain"] for p in shown],
                [p["estimate"] for p in shown],
                color=dots.get_facecolor()[0],
                alpha=1.0,
                label=arm,
            )
            banded = [p for p in shown if p["low"] is not None]
            ax.fill_between(
                [p["gain"] for p in banded],
                [p["low"] for p in banded],
                [p["high"] for p in banded],
                color=dots.get_facecolor()[0],
                alpha=0.15,
            )
        ax.scatter([0], [0], marker="*", s=120, color="black", zorder=5, label="base model")
        ax.set_xlabel(f"target gain ({frontier['match_on']})")
        ax.set_ylabel(f"change on {probe}")
        ax.set_title(probe)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(probes) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("frontiers: best retention reached at each gain (cross-fitted; bands: 95% CI)")
    fig.tight_layout()  # several rows of panels: keep each title clear of the row above
    save_figure(fig, path, dpi=130, bbox_inches="tight")


def _cost(results: dict[str, Any]) -> list[str]:
    cost = results.get("cost")
    if not cost:
        return []
    return [
        "",
        f"Cost: {cost['runs']} runs, {cost['wall_s'] / 60:.1f} min wall for this invocation; training "
        f"{cost['train_s'] / 60:.1f} min and evaluation {cost['eval_s'] / 60:.1f} min (probes, and the "
        "forgetting predictor's KL where a run recorded its seconds) as recorded by the runs (a reused run "
        "counts its recorded times).",
        *_versions(results),
    ]


def _versions(results: dict[str, Any]) -> list[str]:
    versions = results.get("versions")
    if not versions:
        return []
    return ["", "Made with " + ", ".join(f"{package} {' / '.join(found)}" for package, found in versions.items()) + "."]


def plot_gain_retention(results: dict[str, Any], path: Path) -> None:
    """One panel per retention probe: target gain (x) vs retention change (y), each arm's curve
    with the base model at (0, 0) and a 95% interval bar on its final point (nothing to draw
    without matched-gain curves)."""
    if not results["gain_levels"]:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    retention = [name for name in next(iter(results["matched"].values())) if name != "curve"]
    columns = min(len(retention), 3) or 1
    rows_n = math.ceil(len(retention) / columns) or 1
    fig, axes = plt.subplots(rows_n, columns, figsize=(5 * columns, 4 * rows_n), squeeze=False)
    match = results["match_on"]
    for ax, probe in zip(axes.flat, retention):
        for arm, matched in results["matched"].items():
            xs = [0.0] + [point["gain"] for point in matched["curve"]]
            ys = [0.0] + [point[probe] for point in matched["curve"]]
            (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=arm)
            final = [row for row in results["rows"].values() if row["arm"] == arm][-1]["probes"]
            gain, ret = final[match]["delta"], final[probe]["delta"]
            ax.errorbar(
                gain["estimate"],
                ret["estimate"],
                color=line.get_color(),
                capsize=3,
                xerr=[[gain["estimate"] - gain["low"]], [gain["high"] - gain["estimate"]]],
                yerr=[[ret["estimate"] - ret["low"]], [ret["high"] - ret["estimate"]]],
            )
        ax.scatter([0], [0], marker="*", s=120, color="black", zorder=5, label="base model")
        ax.axvline(results["gain_levels"][0], color="grey", linestyle=":", linewidth=1)
        higher = results["probes"][probe]["higher_is_better"]
        ax.set_xlabel(f"target gain ({match})")
        ax.set_ylabel(f"change on {probe}" + ("" if higher else " (NLL, lower is better)"))
        ax.set_title(probe)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(retention) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("gain vs retention (mean over seeds; bars: 95% CI of the final point)")
    save_figure(fig, path, dpi=130, bbox_inches="tight")


def plot_forest(results: dict[str, Any], path: Path) -> None:
    """Paired difference vs the baseline, per probe and arm, with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = forest_rows(results)  # the same rows as the page's forest
    labels, estimates = [row["label"] for row in rows], [row["estimate"] for row in rows]
    lows, highs = [row["estimate"] - row["low"] for row in rows], [row["high"] - row["estimate"] for row in rows]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.2))
    positions = list(range(len(labels)))[::-1]
    ax.errorbar(estimates, positions, xerr=[lows, highs], fmt="o", capsize=3)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel(f"difference vs baseline '{results['baseline']}' (paired, 95% CI)")
    ax.grid(alpha=0.3, axis="x")
    save_figure(fig, path, dpi=130, bbox_inches="tight")
