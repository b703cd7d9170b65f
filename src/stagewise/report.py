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
from .page import write_page

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


def fmt_interval(interval: dict[str, Any] | None, spec: str = "+.3f") -> str:
    """``estimate [low, high]``; '-' where there is none, ``(no CI)`` for an estimate without one."""
    if not interval or interval.get("estimate") is None:
        return "-"
    if interval.get("low") is None:
        return f"{format(interval['estimate'], spec)} (no CI)"
    return f"{format(interval['estimate'], spec)} [{format(interval['low'], spec)}, {format(interval['high'], spec)}]"


SHOWN_FLIPS = 8  # per probe and direction in the markdown reports; the JSON keeps them all


def cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(str(text).replace("|", "\\|").split())[:120] or " "


def flip_table(name: str, items: list[dict[str, Any]]) -> list[str]:
    lines = []
    for flip in ("forgotten", "learned"):
        chosen = [item for item in items if item["flip"] == flip]
        if not chosen:
            continue
        lines += [
            "",
            f"**{name}: {len(chosen)} {flip}** (right -> wrong)"
            if flip == "forgotten"
            else f"**{name}: {len(chosen)} {flip}** (wrong -> right)",
            "",
            "| question | gold | base answered | tuned answered | gold log-prob change |",
            "|---|---|---|---|---|",
        ]
        for item in chosen[:SHOWN_FLIPS]:
            lines.append(
                f"| {cell(item['question'])} | {cell(item['gold'])} | {cell(item['base_answer'])} "
                f"| {cell(item['tuned_answer'])} | {fmt(item.get('gold_logprob_change'), '+.2f')} |"
            )
    return lines


def flips_markdown(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for stage, flipped in (report.get("flipped") or {}).items():
        lines += [
            f"## items that flipped after {stage}",
            "",
            "Since the base model, on the 0/1 probes (report.html lists them all, filterable):",
        ]
        for probe, items in flipped.items():
            lines += flip_table(probe, items) or ["", f"{probe}: none"]
        lines.append("")
    return lines


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
    lines += flips_markdown(report)
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


def flipped_by_stage(
    output_dir: Path, manifest: RunManifest | dict[str, Any], rows: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per scored stage and 0/1 probe, the items that flipped since the base model (``rows``: each
    probe's rows, so an item shows its question and gold answer). A probe whose per-item files
    cannot be read is left out: the report keeps its numbers."""
    from .errors import DataError
    from .eval.evaluator import read_items
    from .eval.flips import flipped, is_binary

    manifest = as_manifest(manifest)
    found: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for entry in manifest.stages:
        for group in GROUPS:
            for name, summary in (entry.evaluation or {}).get(group, {}).items():
                before = (manifest.base_evaluation or {}).get(group, {}).get(name)
                if before is None or name not in rows:
                    continue
                try:
                    base = {"items": read_items(output_dir, before)}
                    after = {"items": read_items(output_dir, summary)}
                except DataError:
                    continue
                if is_binary(base) and is_binary(after):
                    found.setdefault(f"{entry.index}-{entry.name}", {})[name] = flipped(base, after, rows[name])
    return found


def stage_point(stage: dict[str, Any], probe: str) -> dict[str, Any]:
    """A stage on a gain-vs-retention panel: target gain (x), the probe's change (y)."""
    row = stage["retention"][probe]
    return {
        "x": stage["target_gain"],
        "y": row["delta"] or 0.0,
        "info": {
            "after": stage["stage"],
            "target gain": fmt(stage["target_gain"], signed=True),
            probe: f"{fmt(row['base'])} -> {fmt(row['after'])}",
        },
    }


def run_sections(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The run page: one panel per retention probe, target gain (x) vs that probe's change (y), a
    point per scored stage from the base model at (0, 0); the items that flipped."""
    stages = [stage for stage in report["stages"] if stage["target_gain"] is not None]
    origin = {"x": 0.0, "y": 0.0, "info": {"point": "base model"}}
    panels = [
        {
            "title": name,
            "x_label": "target gain",
            "y_label": f"change on {name}",
            "series": [
                {"name": "run", "points": [origin] + [stage_point(s, name) for s in stages if name in s["retention"]]}
            ],
        }
        for name in (stages[-1]["retention"] if stages else [])
    ]
    rows = [
        {
            "stage": stage,
            "probe": probe,
            "flip": item["flip"],
            "question": item["question"],
            "gold": item["gold"],
            "base answered": item["base_answer"],
            "after answered": item["tuned_answer"],
        }
        for stage, flipped in (report.get("flipped") or {}).items()
        for probe, items in flipped.items()
        for item in items
    ]
    sections = [{"kind": "scatter", "title": "Gain vs retention, per stage", "panels": panels}] if panels else []
    columns = ["stage", "probe", "flip", "question", "gold", "base answered", "after answered"]
    return sections + [
        {
            "kind": "items",
            "title": "Items that flipped since the base model",
            "rows": rows,
            "columns": columns,
            "filters": ["stage", "probe", "flip"],
        }
    ]


def write_report(output_dir: Path, report: dict[str, Any]) -> None:
    atomic_write_json(output_dir / "report.json", report)
    markdown = report_markdown(report)
    atomic_write_text(output_dir / "report.md", markdown)
    intro = f"Base model {report['model']}; every stage scored against it on the same items."
    write_page(
        output_dir / "report.html",
        f"stagewise run: {report['recipe'] or report['model']}",
        intro,
        run_sections(report),
        markdown,
    )


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
