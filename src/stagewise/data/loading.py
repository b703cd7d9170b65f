"""Read JSONL / CSV / Parquet files or in-memory rows and validate every row.

Errors name the file, the row (JSONL: line) and the field, in one line.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DatasetConfig
from ..errors import DataError
from ..io import JSONProblem, parse_json
from ..registry import DATA_FORMATS
from . import formats  # noqa: F401  (registers the built-in formats)

NOT_TEXT = {"messages", "label"}  # fields a format checks itself


@dataclass
class LoadedDataset:
    name: str
    rows: list[dict[str, Any]]
    source: str
    fingerprint: str  # content hash: part of the stage config hash, so edited data reruns a stage
    format: str | None = None  # set when a transform turned the rows into another format (e.g. instruction)


def _decode(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line}: not {encoding} text (byte {err.start} is 0x{data[err.start]:02x}); "
            "convert the file or set the dataset's 'encoding'"
        ) from None


def _read_jsonl(path: Path, encoding: str) -> list[tuple[str, Any]]:
    rows = []
    for number, line in enumerate(_decode(path, encoding).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {number}", parse_json(line)))
        except JSONProblem as err:
            raise DataError(f"{path} line {number}: {err.why}") from None
    return rows


def _read_json(path: Path, encoding: str) -> list[tuple[str, Any]]:
    try:
        data = parse_json(_decode(path, encoding))
    except JSONProblem as err:
        raise DataError(f"{path} line {err.line}: {err.why}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows")
    return [(f"row {i}", row) for i, row in enumerate(data, start=1)]


def _read_csv(path: Path, encoding: str) -> list[tuple[str, Any]]:
    reader = csv.DictReader(io.StringIO(_decode(path, encoding), newline=""))
    rows = []
    try:
        for row in reader:
            if None in row:
                raise DataError(f"{path} line {reader.line_num}: more values than header columns")
            rows.append((f"line {reader.line_num}", row))
    except csv.Error as err:
        raise DataError(f"{path} line {reader.line_num}: malformed CSV ({err})") from None
    return rows


def _read_parquet(path: Path, encoding: str) -> list[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises many types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({type(err).__name__})") from None
    try:
        rows = table.to_pylist()
    except (ValueError, OverflowError) as err:  # a date or time outside Python's range, say
        raise DataError(
            f"{path}: a value cannot be read ({str(err).splitlines()[0][:120]}); store it as text"
        ) from None
    return [(f"row {i}", row) for i, row in enumerate(rows, start=1)]


READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def _value_problem(value: Any) -> str | None:
    """Why a row's value is not plain data stagewise can read and write back (JSON's types, text
    that encodes as UTF-8), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "a lone UTF-16 surrogate (text that is not valid Unicode)"
        return None
    if value is None or isinstance(value, (bool, int, float)):
        return None
    if isinstance(value, (list, tuple)):
        return next((problem for item in value if (problem := _value_problem(item))), None)
    if isinstance(value, dict):
        return next((problem for item in [*value, *value.values()] if (problem := _value_problem(item))), None)
    names = {"date": "a date", "datetime": "a date and time", "time": "a time", "timedelta": "a duration"}
    return (
        names.get(type(value).__name__, f"a {type(value).__name__}")
        + " (stagewise reads text, numbers, booleans, lists and objects)"
    )


def _check_row(row: Any, where: str, data_format: str, columns: dict[str, str]) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with fields, got {type(row).__name__}")
    row = {columns.get(key, key): value for key, value in row.items()}
    for key, value in row.items():
        problem = _value_problem(value)
        if problem:
            raise DataError(f"{where}: field {key!r} holds {problem}")
    traits = DATA_FORMATS.get(data_format).traits
    for field in traits.fields:
        if field not in row or row[field] is None:
            needs = ", ".join(traits.fields)
            raise DataError(f"{where}: field {field!r} missing (format {data_format!r} needs {needs})")
    out = {key: value for key, value in row.items() if value is not None}  # extra fields (aliases, type) kept
    text = [field for field in traits.fields + traits.optional if field not in NOT_TEXT]
    for field in text:
        if field in out and not isinstance(out[field], str):
            raise DataError(f"{where}: field {field!r} must be text, got {type(out[field]).__name__}")
    if text and not any(out.get(field, "").strip() for field in text if field in traits.fields):
        raise DataError(f"{where}: all text fields are empty")
    if traits.check is not None:
        traits.check(out, where)
    return out


_SLICE = re.compile(r"^(\w+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$")


def _bound(text: str | None, size: int, default: int) -> int:
    if not text:
        return default
    value = round(size * int(text[:-1]) / 100) if text.endswith("%") else int(text)
    return value + size if value < 0 else value


def apply_split(rows: list[Any], split: str | None) -> list[Any]:
    """``train[:80%]`` / ``train[100:]`` slicing, as in ``datasets``' split syntax."""
    if split is None:
        return rows
    match = _SLICE.match(split)
    assert match, split  # validated by DatasetConfig
    start = _bound(match.group(2), len(rows), 0)
    stop = _bound(match.group(3), len(rows), len(rows))
    return rows[start:stop]


def load_dataset_config(name: str, cfg: DatasetConfig, seed: int = 0) -> LoadedDataset:
    """Read and validate one named dataset of a recipe."""
    raw, digest, source, sliced = read_source(name, cfg)
    rows = [_check_row(row, where, cfg.format, cfg.columns) for where, row in raw]
    rows = rows if sliced else apply_split(rows, cfg.split)
    if cfg.max_samples is not None and len(rows) > cfg.max_samples:
        rows = random.Random(seed).sample(rows, cfg.max_samples)
    if not rows:
        raise DataError(f"{source}: dataset {name!r} is empty" + (f" after split {cfg.split!r}" if cfg.split else ""))
    if cfg.format == "classification" and cfg.labels is not None:
        for index, row in enumerate(rows):
            if row["label"] not in cfg.labels:
                raise DataError(f"{source}: row {index + 1} label {row['label']!r} not in labels {cfg.labels}")
    fingerprint = hashlib.sha256(
        json.dumps([digest, cfg.model_dump(mode="json", exclude_defaults=True)], sort_keys=True).encode()
    ).hexdigest()[:16]
    return LoadedDataset(name=name, rows=rows, source=source, fingerprint=fingerprint)


Raw = list[tuple[str, Any]]  # (where, row) pairs: where names the source and the row in errors


def read_source(name: str, cfg: DatasetConfig) -> tuple[Raw, str, str, bool]:
    """(rows with their place, content digest, source name, already split) of a dataset's source:
    in-memory rows, a Hugging Face dataset, a built-in benchmark, a file, a glob of files or a
    ``save_to_disk`` folder."""
    if cfg.rows is not None:
        digest = hashlib.sha256(json.dumps(cfg.rows, sort_keys=True).encode()).hexdigest()
        return (
            [(f"datasets.{name}.rows[{i}]", row) for i, row in enumerate(cfg.rows)],
            digest,
            f"datasets.{name}",
            False,
        )
    if cfg.hub is not None:
        return _read_hub(name, cfg)
    if cfg.builtin is not None:
        from ..bench import builtin_file

        return _read_files(name, [builtin_file(cfg.builtin, cfg.builtin_options)], cfg)
    path = Path(cfg.path or "")
    if path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS):
        return _read_saved(name, path, cfg)
    if any(char in str(path) for char in "*?["):
        matches = sorted(Path(match) for match in glob.glob(str(path), recursive=True) if Path(match).is_file())
        if not matches:
            raise DataError(f"datasets.{name}.path: {str(path)!r} matches no file")
        return _read_files(name, matches, cfg)
    return _read_files(name, [path], cfg)


def _read_files(name: str, paths: list[Path], cfg: DatasetConfig) -> tuple[Raw, str, str, bool]:
    raw: Raw = []
    digest = hashlib.sha256()
    for path in paths:
        if not path.is_file():
            raise DataError(f"datasets.{name}.path: file {str(path)!r} not found")
        reader = READERS.get(path.suffix.lower())
        if reader is None:
            raise DataError(f"datasets.{name}.path: {str(path)!r} must end in one of {', '.join(READERS)}")
        raw += [(f"{path} {where}", row) for where, row in reader(path, cfg.encoding)]
        digest.update(path.read_bytes())
    source = str(paths[0]) if len(paths) == 1 else str(cfg.path)
    return raw, digest.hexdigest(), source, False


SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # a ``save_to_disk`` folder


def _read_saved(name: str, folder: Path, cfg: DatasetConfig) -> tuple[Raw, str, str, bool]:
    """A folder written by ``Dataset.save_to_disk`` (or a ``DatasetDict``'s: ``split`` picks one)."""
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(folder))
    except Exception as err:  # datasets raises several types for a damaged folder
        raise DataError(
            f"datasets.{name}.path: {folder} is not a readable save_to_disk folder "
            f"({str(err).splitlines()[0][:200] if str(err) else type(err).__name__})"
        ) from None
    if isinstance(loaded, DatasetDict):
        split = (cfg.split or "train").split("[")[0]
        if split not in loaded:
            raise DataError(f"datasets.{name}.split: {folder} has splits {', '.join(loaded)}, not {split!r}")
        loaded = loaded[split]
    digest = hashlib.sha256()
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            digest.update(file.read_bytes())
    rows = [(f"{folder} row {i}", row) for i, row in enumerate(loaded.to_list(), start=1)]
    return rows, digest.hexdigest(), str(folder), False


def _read_hub(name: str, cfg: DatasetConfig) -> tuple[Raw, str, str, bool]:
    """``datasets.load_dataset`` by name (through its cache; the split's slice is applied by it)."""
    from datasets import load_dataset

    source = f"{cfg.hub}/{cfg.subset}" if cfg.subset else str(cfg.hub)
    try:
        loaded = load_dataset(
            cfg.hub, cfg.subset, split=cfg.split or "train", revision=cfg.revision, data_files=cfg.data_files
        )
    except Exception as err:  # offline, unknown id, unknown split: many types
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise DataError(f"datasets.{name}.hub: could not fetch {source!r} ({reason})") from None
    digest = (
        getattr(loaded, "_fingerprint", None)
        or hashlib.sha256(json.dumps(loaded.to_list(), sort_keys=True, default=str).encode()).hexdigest()
    )
    return [(f"{source} row {i}", row) for i, row in enumerate(loaded.to_list(), start=1)], digest, source, True
