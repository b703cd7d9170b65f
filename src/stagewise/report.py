"""Reports: gain on the target probes and retention on the others, per stage, vs the base model.

``report.json`` holds every number; ``report.md`` is the same as tables; the run's
console summary and ``stagewise compare`` read the same structure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .io import atomic_write_json, atomic_write_text

GROUPS = ("target", "retention")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def compare_scores(base: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per probe: base, after, delta. Per group: mean score and mean delta over accuracy-like
    probes (``target_gain``, ``retention_delta``) and mean relative perplexity change."""
    out: dict[str, Any] = {}
    for group in GROUPS:
        rows: dict[str, Any] = {}
        scores, deltas, ppl_changes = [], [], []
        for name, result in after.get(group, {}).items():
            before = base.get(group, {}).get(name, {}).get("score")
            delta = None if before is None else result["score"] - before
            rows[name] = {"metric": result["metric"], "base": before, "after": result["score"], "delta": delta,
                          "truncated": result.get("truncated", 0)}  # inputs clipped to evaluation.max_length
            if result["higher_is_better"]:
                scores.append(result["score"])
                if delta is not None:
                    deltas.append(delta)
            elif delta is not None and before:
                ppl_changes.append(delta / before)
        out[group] = rows
        out["target_gain" if group == "target" else "retention_delta"] = _mean(deltas)
        out[f"{group}_score"] = _mean(scores)
        out[f"{group}_perplexity_change"] = _mean(ppl_changes)
    return out


def build_report(manifest: dict[str, Any]) -> dict[str, Any]:
    base = manifest.get("base_evaluation") or {}
    stages = []
    for entry in manifest["stages"]:
        if entry.get("evaluation"):
            stages.append({"stage": f"{entry['index']}-{entry['name']}", **compare_scores(base, entry["evaluation"])})
    base_scores = compare_scores(base, base) if base else {}
    return {
        "recipe": manifest.get("recipe_path"),
        "model": manifest.get("model"),
        "base": {group: {name: r["score"] for name, r in base.get(group, {}).items()} for group in GROUPS},
        "base_target_score": base_scores.get("target_score"),
        "base_retention_score": base_scores.get("retention_score"),
        "stages": stages,
        "final": stages[-1] if stages else None,
    }


def fmt(value: Any, spec: str = ".3f", signed: bool = False) -> str:
    """A number for a table cell; '-' where there is none."""
    if value is None:
        return "-"
    return format(value, ("+" if signed else "") + spec)


def report_markdown(report: dict[str, Any]) -> str:
    lines = [f"# stagewise report: {report['recipe'] or report['model']}", "", f"Base model: `{report['model']}`", ""]
    for stage in report["stages"]:
        lines += [f"## after {stage['stage']}", "",
                  f"target gain: **{fmt(stage['target_gain'], signed=True)}**, "
                  f"retention delta: **{fmt(stage['retention_delta'], signed=True)}**", "",
                  "| group | probe | metric | base | after | delta |", "|---|---|---|---|---|---|"]
        for group in GROUPS:
            for name, row in stage[group].items():
                lines.append(f"| {group} | {name} | {row['metric']} | {fmt(row['base'])} | {fmt(row['after'])} "
                             f"| {fmt(row['delta'], signed=True)} |")
        clipped = [f"{name} ({row['truncated']})" for group in GROUPS for name, row in stage[group].items()
                   if row.get("truncated")]
        if clipped:
            lines += ["", f"Prompts clipped to evaluation.max_length (kept their last tokens): {', '.join(clipped)}"]
        lines.append("")
    return "\n".join(lines)


def write_report(output_dir: Path, report: dict[str, Any]) -> None:
    atomic_write_json(output_dir / "report.json", report)
    atomic_write_text(output_dir / "report.md", report_markdown(report))


def print_run_summary(manifest: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=max(Console().width, 110))
    table = Table(title=f"stagewise run: {manifest.get('recipe_path') or manifest.get('model')}")
    for column in ("stage", "status", "trainable", "rows", "tokens/s", "wall s", "train loss"):
        table.add_column(column)
    for entry in manifest["stages"]:
        metrics = entry.get("metrics", {})
        table.add_row(
            f"{entry['index']}-{entry['name']}", entry.get("status", "?"),
            fmt(entry.get("trainable_fraction"), ".1%"), fmt(entry.get("train_rows"), "d"),
            fmt(entry.get("tokens_per_s"), ".1f"), fmt(entry.get("wall_time_s"), ".1f"),
            fmt(metrics.get("train_loss"), ".4g"),
        )
    console.print(table)
    report = build_report(manifest)
    if not report["stages"]:
        return
    probes = Table(title="gain vs forgetting (base -> after each stage)")
    for column in ("stage", "group", "probe", "metric", "base", "after", "delta"):
        probes.add_column(column)
    for stage in report["stages"]:
        for group in GROUPS:
            for name, row in stage[group].items():
                probes.add_row(stage["stage"], group, name, row["metric"], fmt(row["base"]), fmt(row["after"]),
                               fmt(row["delta"], signed=True))
    console.print(probes)
    final = report["final"]
    console.print(f"target gain {fmt(final['target_gain'], signed=True)} | "
                  f"retention delta {fmt(final['retention_delta'], signed=True)} | "
                  f"retention perplexity change {fmt(final['retention_perplexity_change'], '.1%', signed=True)}")
