"""Retention suites keep only the items a named model already answers, so a drop is forgetting,
not noise on items it never knew. The ids per model are listed in ``data/<suite>_known_<model>.json``
(made by ``benchmarks/build_retention_suites.py``)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import DataError

KNOWN_LISTS = Path(__file__).with_name("data")


def known_list_path(suite: str, model: str) -> Path:
    """``suite`` is the file prefix (``geo``, ``element``), ``model`` the bundled name."""
    return KNOWN_LISTS / f"{suite}_known_{model}.json"


def keep_known(
    builtin: str, suite: str, splits: dict[str, list[dict[str, Any]]], known_by: str | None
) -> dict[str, list[dict[str, Any]]]:
    """The rows of each split whose id ``known_by`` answered; every row when ``known_by`` is None."""
    counts = Counter(row["id"] for rows in splits.values() for row in rows)
    assert all(count == 1 for count in counts.values()), "ids are unique across splits"
    if known_by is None:
        return splits
    path = known_list_path(suite, known_by)
    if not path.is_file():
        prefix = f"{suite}_known_"
        available = sorted(p.stem.removeprefix(prefix) for p in KNOWN_LISTS.glob(f"{prefix}*.json"))
        raise DataError(f"builtin {builtin!r}: no list of known items for {known_by!r} (have: {available}, or null)")
    known = set(json.loads(path.read_text())["ids"])
    return {name: [row for row in rows if row["id"] in known] for name, rows in splits.items()}
