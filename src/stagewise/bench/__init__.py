"""Built-in benchmark data: builders that write versioned, seeded JSONL splits.

A recipe names a split as ``builtin: facts:train``; the file is built once into the
cache (``~/.cache/stagewise/bench/v1/...``) and read like any other dataset file.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path
from typing import Any

from ..bundled import cache_dir
from ..config import config_hash
from ..errors import DataError, RecipeError
from ..io import atomic_folder
from ..registry import BENCHMARKS

for _module in pkgutil.iter_modules(__path__):  # each builder module registers itself (BENCHMARKS)
    importlib.import_module(f"{__name__}.{_module.name}")

VERSION = "v1"  # bump when a builder's output changes, so caches never mix versions


def bench_dir(name: str, options: dict[str, Any] | None = None) -> Path:
    suffix = f"-{config_hash(options)[:8]}" if options else ""
    return cache_dir() / "bench" / VERSION / f"{name}{suffix}"


def write_splits(folder: Path, splits: dict[str, list[dict[str, Any]]]) -> None:
    """All split files appear at once (a staging folder renamed into place)."""
    with atomic_folder(folder) as staging:
        for split, rows in splits.items():
            with (staging / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def build(name: str, options: dict[str, Any] | None = None, force: bool = False) -> Path:
    """Build (once) and return the folder holding ``<split>.jsonl`` for benchmark ``name``."""
    try:
        builder = BENCHMARKS.get(name).impl
    except RecipeError as err:
        raise DataError(str(err)) from None
    folder = bench_dir(name, options)
    if force or not folder.is_dir():
        try:
            splits = builder(**(options or {}))
        except TypeError as err:
            raise DataError(f"builtin {name!r}: bad builder option ({err})") from None
        write_splits(folder, splits)
    return folder


def builtin_file(spec: str, options: dict[str, Any] | None = None) -> Path:
    """``facts:train`` -> path of that split's JSONL (building the benchmark if needed)."""
    name, _, split = spec.partition(":")
    folder = build(name, options)
    path = folder / f"{split}.jsonl"
    if not split or not path.is_file():
        available = ", ".join(sorted(p.stem for p in folder.glob("*.jsonl")))
        raise DataError(f"builtin {spec!r}: expected '{name}:<split>' with split one of: {available}")
    return path
