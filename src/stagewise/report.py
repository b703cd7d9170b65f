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
from .manifest import RunManifest, as_manifest

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
            rows[name] = {
                "metric": result["metric"],
                "base": before,
                "after": result["score"],
                "delta": delta,
                "truncated": result.get("truncated", 0),
            }  # inputs clipped to evaluation.max_length
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


def knowledge_vs_format(base: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per retention probe scored with examples too (``<name>@<k>shot``): its drop without them, the
    knowledge loss (the drop with them) and the format loss (the part the examples recover)."""
    split = {}
    for name, shown in after.get("recovery", {}).items():
        probe = name.rsplit("@", 1)[0]
        before, before_shown = base.get("retention", {}).get(probe), base.get("recovery", {}).get(name)
        if before is None or before_shown is None or probe not in after.get("retention", {}):
            continue
        drop = after["retention"][probe]["score"] - before["score"]
        knowledge = shown["score"] - before_shown["score"]
        split[probe] = {"examples": name, "drop": drop, "knowledge_loss": knowledge, "format_loss": drop - knowledge}
    return split


def measured_kl(kl: dict[str, Any] | None) -> dict[str, Any] | None:
    """The forgetting predictor's values without its cost: a report holds what was measured, so a
    resumed run reports the same as an uninterrupted one (its seconds stay in the manifest)."""
    return None if kl is None else {key: value for key, value in kl.items() if key != "seconds"}


def build_report(manifest: RunManifest | dict[str, Any]) -> dict[str, Any]:
    manifest = as_manifest(manifest)
    base = manifest.base_evaluation or {}
    stages = []
    for entry in manifest.stages:
        if entry.evaluation:
            stages.append(
                {
                    "stage": f"{entry.index}-{entry.name}",
                    **compare_scores(base, entry.evaluation),
                    "knowledge_vs_format": knowledge_vs_format(base, entry.evaluation),
                    "kl_to_entering": measured_kl(entry.kl_to_entering),
                }
            )
    base_scores = compare_scores(base, base) if base else {}
    return {
        "recipe": manifest.recipe_path,
        "model": manifest.model,
        "base": {group: {name: r["score"] for name, r in base.get(group, {}).items()} for group in GROUPS},
        "base_target_score": base_scores.get("target_score"),
        "base_retention_score": base_scores.get("retention_score"),
        "stages": stages,
        "final": stages[-1] if stages else None,
        "continual": continual_section(manifest),
    }


def fmt(value: Any, spec: str = ".3f", signed: bool = False) -> str:
    """A number for a table cell; '-' where there is none."""
    if value is None:
        return "-"
    return format(value, ("+" if signed else "") + spec)


def report_markdown(report: dict[str, Any]) -> str:
    lines = [f"# stagewise report: {report['recipe'] or report['model']}", "", f"Base model: `{report['model']}`", ""]
    for stage in report["stages"]:
        lines += [
            f"## after {stage['stage']}",
            "",
            f"target gain: **{fmt(stage['target_gain'], signed=True)}**, "
            f"retention delta: **{fmt(stage['retention_delta'], signed=True)}**"
            + (
                ", KL to the entering model on this stage's prompts: "
                f"**{fmt(stage['kl_to_entering']['per_sequence'])}**"
                f" per sequence ({fmt(stage['kl_to_entering']['per_token'], '.4f')} per token)"
                if (stage.get("kl_to_entering") or {}).get("per_sequence") is not None
                else ""
            ),
            "",
            "| group | probe | metric | base | after | delta |",
            "|---|---|---|---|---|---|",
        ]
        for group in GROUPS:
            for name, row in stage[group].items():
                lines.append(
                    f"| {group} | {name} | {row['metric']} | {fmt(row['base'])} | {fmt(row['after'])} "
                    f"| {fmt(row['delta'], signed=True)} |"
                )
        clipped = [
            f"{name} ({row['truncated']})"
            for group in GROUPS
            for name, row in stage[group].items()
            if row.get("truncated")
        ]
        if clipped:
            lines += ["", f"Prompts clipped to evaluation.max_length (kept their last tokens): {', '.join(clipped)}"]
        if stage.get("knowledge_vs_format"):
            lines += [
                "",
                "| retention probe | drop | with examples: knowledge loss | recovered: format loss |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {probe} ({split['examples']}) | {fmt(split['drop'], signed=True)} | "
                f"{fmt(split['knowledge_loss'], signed=True)} | {fmt(split['format_loss'], signed=True)} |"
                for probe, split in stage["knowledge_vs_format"].items()
            ]
        lines.append("")
    continual = report.get("continual")
    if continual:
        lines += [
            "## task sequence",
            "",
            "R[i][j]: task j's score after the stage that learns task i "
            f"(average accuracy **{fmt(continual.get('average_accuracy'))}**, "
            f"BWT **{fmt(continual.get('bwt'), signed=True)}**, FWT **{fmt(continual.get('fwt'), signed=True)}**)",
            "",
            "| after \\ task | " + " | ".join(continual["tasks"]) + " |",
            "|---" * (len(continual["tasks"]) + 1) + "|",
            "| base | " + " | ".join(fmt(v) for v in continual["base"]) + " |",
        ]
        lines += [
            f"| {stage} | " + " | ".join(fmt(v) for v in row) + " |"
            for stage, row in zip(continual["stages"], continual["matrix"])
        ]
        lines.append("")
    return "\n".join(lines)


def write_report(output_dir: Path, report: dict[str, Any]) -> None:
    atomic_write_json(output_dir / "report.json", report)
    atomic_write_text(output_dir / "report.md", report_markdown(report))


def print_run_summary(manifest: RunManifest | dict[str, Any], console: Console | None = None) -> None:
    manifest = as_manifest(manifest)
    console = console or Console(width=max(Console().width, 110))
    table = Table(title=f"stagewise run: {manifest.recipe_path or manifest.model}")
    for column in ("stage", "status", "trainable", "rows", "tokens/s", "wall s", "train loss"):
        table.add_column(column)
    for entry in manifest.stages:
        table.add_row(
            f"{entry.index}-{entry.name}",
            entry.status,
            fmt(entry.trainable_fraction, ".1%"),
            fmt(entry.train_rows, "d"),
            fmt(entry.tokens_per_s, ".1f"),
            fmt(entry.wall_time_s, ".1f"),
            fmt(entry.metrics.get("train_loss"), ".4g"),
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
                probes.add_row(
                    stage["stage"],
                    group,
                    name,
                    row["metric"],
                    fmt(row["base"]),
                    fmt(row["after"]),
                    fmt(row["delta"], signed=True),
                )
    console.print(probes)
    final = report["final"]
    console.print(
        f"target gain {fmt(final['target_gain'], signed=True)} | "
        f"retention delta {fmt(final['retention_delta'], signed=True)} | "
        f"retention perplexity change {fmt(final['retention_perplexity_change'], '.1%', signed=True)}"
    )


def continual_metrics(accuracy: list[list[float]], base: list[float]) -> dict[str, float | None]:
    """GEM's summary of a task sequence (Lopez-Paz & Ranzato, NeurIPS 2017, eqs. 2-4) from the
    accuracy matrix R (R[i][j]: task j's score after learning task i) and the base scores b:
    average accuracy = mean_j R[T-1][j]; backward transfer BWT = mean_{j<T-1} (R[T-1][j] - R[j][j])
    (negative = forgetting); forward transfer FWT = mean_{j>0} (R[j-1][j] - b[j])."""
    tasks = len(accuracy)
    last = accuracy[-1]
    return {
        "average_accuracy": sum(last) / tasks,
        "bwt": sum(last[j] - accuracy[j][j] for j in range(tasks - 1)) / (tasks - 1) if tasks > 1 else None,
        "fwt": sum(accuracy[j - 1][j] - base[j] for j in range(1, tasks)) / (tasks - 1) if tasks > 1 else None,
    }


def continual_section(manifest: RunManifest | dict[str, Any]) -> dict[str, Any] | None:
    """The accuracy matrix over the recipe's task probes (probes with ``stage:``), rows in the
    order of the stages that learn them."""
    manifest = as_manifest(manifest)
    evaluation = manifest.recipe.get("evaluation") or {}
    probes = [(group, task) for group in GROUPS for task in evaluation.get(group, []) if task.get("stage")]
    stage_names = [stage["name"] for stage in manifest.recipe.get("stages", [])]
    probes.sort(key=lambda item: stage_names.index(item[1]["stage"]))
    entries = {entry.name: entry.evaluation for entry in manifest.stages if entry.evaluation}
    if not probes or any(task["stage"] not in entries for _, task in probes):
        return None
    base = manifest.base_evaluation or {}
    matrix = [
        [entries[row_task["stage"]][group][task["name"]]["score"] for group, task in probes] for _, row_task in probes
    ]
    base_row = [base.get(group, {}).get(task["name"], {}).get("score") for group, task in probes]
    summary = continual_metrics(matrix, base_row) if None not in base_row else {}
    return {
        "tasks": [task["name"] for _, task in probes],
        "stages": [task["stage"] for _, task in probes],
        "matrix": matrix,
        "base": base_row,
        **summary,
    }
