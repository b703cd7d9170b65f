"""``audit.json`` (every number and every flipped item) and ``audit.md`` (the same as tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_write_json, atomic_write_text
from ..page import write_page
from ..report import flip_table, fmt, fmt_interval


def verdict(row: dict[str, Any]) -> str:
    difference = row["difference"]
    if difference is None or difference.get("p_holm", 1.0) >= 0.05:
        return "no significant change"
    worse = (difference["estimate"] < 0) == row["higher_is_better"]
    return "**worse**" if worse else "better"


def probe_table(tuned: dict[str, Any]) -> list[str]:
    lines = [
        "| probe | metric | n | base | tuned | tuned - base per item [95% CI] | p (Holm) | MDD | |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in tuned["probes"].items():
        difference = row["difference"]
        p = "-" if difference is None else f"{fmt(difference['p_value'])} ({fmt(difference.get('p_holm'))})"
        mdd = "-" if difference is None else fmt(difference["half_width"])
        lines.append(
            f"| {name} | {row['metric']} | {row['n']} | {fmt(row['base'], '.4g')} | {fmt(row['tuned'], '.4g')} "
            f"| {fmt_interval(difference)} | {p} | {mdd} | {verdict(row)} |"
        )
    return lines


def split_table(tuned: dict[str, Any]) -> list[str]:
    split = tuned["knowledge_vs_format"]
    if not split:
        return []
    lines = [
        "",
        "Knowledge vs format (each probe also scored with examples of its own items in the prompt: what the "
        "examples bring back was format, what they do not was knowledge):",
        "",
        "| probe | drop | knowledge loss [95% CI] | format loss |",
        "|---|---|---|---|",
    ]
    for name, row in split.items():
        lines.append(
            f"| {name} | {fmt(row['drop'], signed=True)} | {fmt_interval(row['knowledge_interval'])} "
            f"| {fmt(row['format_loss'], signed=True)} |"
        )
    return lines


def tuned_section(tuned: dict[str, Any]) -> list[str]:
    lines = ["", f"## {tuned['model']}", ""]
    if tuned["adapter_base"]:
        lines += [f"A PEFT adapter on `{tuned['adapter_base']}`.", ""]
    if tuned["identical_to_base"]:
        lines += ["**Identical to the base model** (every weight equal): nothing can have been forgotten.", ""]
    if tuned["note"]:
        lines += [f"Note: {tuned['note']}.", ""]
    lines += probe_table(tuned) + split_table(tuned)
    kl = tuned["kl_from_base"]
    if kl is not None:
        lines += [
            "",
            f"KL(tuned || base) on general prompts: {kl['per_sequence']:.3f} nats per answer, "
            f"{kl['per_token']:.4f} per token.",
        ]
    for name, items in tuned["flipped"].items():
        lines += flip_table(name, items)
    return lines


def audit_markdown(audit: dict[str, Any]) -> str:
    lines = [
        "# Forgetting audit",
        "",
        f"Base `{audit['base']}`; suites: {', '.join(f'`{s}`' for s in audit['suites'])}. Per probe: tuned minus "
        "base on the same items, a paired bootstrap 95% interval, p (Holm-adjusted across probes), and the MDD "
        "(the half width: the smallest difference this probe could have seen). Perplexity's items are mean "
        "token negative log-likelihoods, so there a positive difference is worse.",
    ]
    for tuned in audit["tuned"]:
        lines += tuned_section(tuned)
    lines += ["", cost_line(audit)]
    return "\n".join(lines) + "\n"


def cost_line(audit: dict[str, Any]) -> str:
    """Where the wall time went (audit.json has each probe's seconds)."""
    parts = [f"base scored in {audit['base_seconds'].get('scoring', 0):.0f} s"]
    for tuned in audit["tuned"]:
        spent = ", ".join(f"{phase} {value:.0f} s" for phase, value in tuned["seconds"].items() if phase != "per_probe")
        parts.append(f"{tuned['model']}: {spent}")
    return f"Cost: {'; '.join(parts)}; wall {audit['wall_s']:.0f} s in all."


def write_audit(out: Path, audit: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "audit.json", audit)
    markdown = audit_markdown(audit)
    atomic_write_text(out / "audit.md", markdown)
    intro = f"Base {audit['base']} vs {', '.join(t['model'] for t in audit['tuned'])}."
    page = write_page(
        out / "report.html", "Forgetting audit", intro, [forest_section(audit), items_section(audit)], markdown
    )
    return [out / "audit.json", out / "audit.md", page]


def forest_section(audit: dict[str, Any]) -> dict[str, Any]:
    several = len(audit["tuned"]) > 1
    rows = []
    for tuned in audit["tuned"]:
        for name, row in tuned["probes"].items():
            difference = row["difference"]
            if difference is None:
                continue
            unit = "" if row["higher_is_better"] else " (NLL)"
            rows.append(
                {
                    "label": (f"{tuned['model'][-30:]}: " if several else "") + name + unit,
                    "estimate": difference["estimate"],
                    "low": difference["low"],
                    "high": difference["high"],
                    "significant": difference.get("p_holm", 1.0) < 0.05,
                    "info": {
                        "probe": name,
                        "metric": row["metric"],
                        "items": row["n"],
                        "base": fmt(row["base"], ".4g"),
                        "tuned": fmt(row["tuned"], ".4g"),
                        "difference": fmt_interval(difference),
                        "p (Holm)": f"{fmt(difference['p_value'])} ({fmt(difference.get('p_holm'))})",
                        "MDD": fmt(difference["half_width"]),
                    },
                }
            )
    return {
        "kind": "forest",
        "title": "Tuned minus base, per probe (paired, 95% CI; red: Holm p < 0.05)",
        "x_label": "tuned - base per item",
        "rows": rows,
    }


def items_section(audit: dict[str, Any]) -> dict[str, Any]:
    rows = [
        {
            "model": tuned["model"],
            "suite": name,
            "flip": item["flip"],
            "question": item["question"],
            "gold": item["gold"],
            "base answered": item["base_answer"],
            "tuned answered": item["tuned_answer"],
            "gold log-prob change": fmt(item.get("gold_logprob_change"), "+.2f"),
        }
        for tuned in audit["tuned"]
        for name, items in tuned["flipped"].items()
        for item in items
    ]
    columns = ["suite", "flip", "question", "gold", "base answered", "tuned answered", "gold log-prob change"]
    filters = ["suite", "flip"]
    if len(audit["tuned"]) > 1:
        columns, filters = ["model", *columns], ["model", *filters]
    return {
        "kind": "items",
        "title": "Items that flipped",
        "columns": columns,
        "filters": filters,
        "rows": rows,
        "note": "Forgotten: right before, wrong after; learned: the other way. Ordered by the gold answer's "
        "log-probability change.",
    }
