"""``stagewise compare``: several recipes, one table and one plot of target vs retention.

The shape of PEFT's accuracy-and-forgetting table, across strategies: each recipe is
run (or its finished stages reused), and its final scores are set beside the base model's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .io import atomic_write_json, atomic_write_text, save_figure
from .report import fmt


def comparison_rows(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, report in reports.items():
        final = report["final"] or {}
        rows.append(
            {
                "recipe": name,
                "target_score": final.get("target_score"),
                "retention_score": final.get("retention_score"),
                "target_gain": final.get("target_gain"),
                "retention_delta": final.get("retention_delta"),
                "retention_perplexity_change": final.get("retention_perplexity_change"),
                "base_target_score": report.get("base_target_score"),
                "base_retention_score": report.get("base_retention_score"),
            }
        )
    return rows


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| recipe | target | retention | target gain | retention delta | retention ppl change |",
        "|---|---|---|---|---|---|",
    ]
    if rows:
        lines.append(
            f"| base model | {fmt(rows[0]['base_target_score'])} | {fmt(rows[0]['base_retention_score'])} | - | - | - |"
        )
    for row in rows:
        lines.append(
            f"| {row['recipe']} | {fmt(row['target_score'])} | {fmt(row['retention_score'])} "
            f"| {fmt(row['target_gain'], signed=True)} | {fmt(row['retention_delta'], signed=True)} "
            f"| {fmt(row['retention_perplexity_change'], '.1%', signed=True)} |"
        )
    return "\n".join(lines) + "\n"


def plot_comparison(rows: list[dict[str, Any]], path: Path) -> None:
    """Target score (y) vs retention score (x), one point per recipe, the base model as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for row in rows:
        if row["target_score"] is None or row["retention_score"] is None:
            continue
        ax.scatter(row["retention_score"], row["target_score"], s=50)
        ax.annotate(
            row["recipe"],
            (row["retention_score"], row["target_score"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    if rows and rows[0]["base_target_score"] is not None and rows[0]["base_retention_score"] is not None:
        ax.scatter(
            rows[0]["base_retention_score"],
            rows[0]["base_target_score"],
            marker="*",
            s=180,
            color="black",
            label="base model",
        )
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("retention score (higher = less forgetting)")
    ax.set_ylabel("target score")
    ax.set_title("gain vs forgetting")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def write_comparison(reports: dict[str, dict[str, Any]], out_dir: Path) -> list[dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(reports)
    atomic_write_json(out_dir / "compare.json", {"rows": rows, "reports": reports})
    atomic_write_text(out_dir / "compare.md", comparison_markdown(rows))
    plot_comparison(rows, out_dir / "compare.png")
    return rows
