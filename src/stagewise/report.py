"""Human-readable summaries of a run (the one-screen table at the end of ``run``)."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def print_run_summary(manifest: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"stagewise run: {manifest.get('recipe_path') or manifest.get('model')}")
    for column in ("stage", "status", "trainable", "rows", "tokens/s", "wall s", "train loss", "eval"):
        table.add_column(column)
    for entry in manifest["stages"]:
        metrics = entry.get("metrics", {})
        evals = ", ".join(f"{k.removeprefix('eval_')}={v:.4g}" for k, v in metrics.items()
                          if k.startswith("eval_") and not k.endswith(("runtime", "per_second")))
        table.add_row(
            f"{entry['index']}-{entry['name']}", entry.get("status", "?"),
            _fmt(entry.get("trainable_fraction"), ".1%"), _fmt(entry.get("train_rows"), "d"),
            _fmt(entry.get("tokens_per_s"), ".1f"), _fmt(entry.get("wall_time_s"), ".1f"),
            _fmt(metrics.get("train_loss")), evals or "-",
        )
    console.print(table)
