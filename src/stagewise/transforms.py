"""Data transforms: steps that rewrite or select a stage's training rows *with the model
entering the stage* (SDFT's self-distillation, Gradual Learning's knowledge-based selection).

A transform gets the rows of one dataset and a :class:`TransformContext`, and returns the
new rows plus a small report (kept/selected counts) recorded in the manifest. Expensive
model calls go through :func:`cached`, keyed by the model's identity (the chain of stage
config hashes that produced it), the data and the settings, so a rerun does not regenerate.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from .bundled import cache_dir
from .distributed import broadcast_from_main, is_main_process
from .io import atomic_write_text, read_verified_json, write_verified_json
from .protocols import TransformContext
from .written import Written


def cached(kind: str, key_parts: Any, compute: Callable[[], Any], log: Callable[[str], None] = print) -> Any:
    """JSON result of ``compute()`` stored under the user cache by a hash of ``key_parts``.

    Under several ranks, rank 0 decides hit or miss for all (a miss computes on every rank,
    sharded inside ``generate``) and alone writes the file. An entry whose content no longer
    matches its stored hash (edited, truncated) is computed again.
    """
    digest = hashlib.sha256(json.dumps([kind, key_parts], sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = cache_dir() / "generations" / f"{kind}-{digest}.json"
    hit = None
    if is_main_process():
        hit, why = read_verified_json(path)
        if why not in (None, "missing"):
            log(f"[cache] {path}: {why}: computing it again")
    hit = broadcast_from_main(hit)
    if hit is not None:
        return hit
    result = compute()
    if is_main_process():
        write_verified_json(path, result)
    return result


def rows_fingerprint(rows: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """The transformed data, beside the stage's weights, for inspection (written by rank 0; every
    rank records it, since the first record starts the stage, which all ranks must do together)."""
    Written(path.parent).record(path.name)
    if is_main_process():
        atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def greedy_answers(
    context: TransformContext,
    rows: list[dict[str, Any]],
    data_format: str,
    max_new_tokens: int,
    batch_size: int,
    desc: str,
) -> list[str]:
    """The entering model's greedy continuation of each row's prompt, rendered as training renders
    the row (self-replay's and on-policy replay's answers)."""
    from .data.tokenize import encode_prompt
    from .generation import SamplingConfig, generate

    ids = [encode_prompt(row, data_format, context.tokenizer, context.dataset.template) for row in rows]
    outputs = generate(
        context.model,
        context.tokenizer,
        ids,
        SamplingConfig(max_new_tokens=max_new_tokens),
        batch_size=batch_size,
        desc=desc,
    )
    return [texts[0] for texts in outputs]
