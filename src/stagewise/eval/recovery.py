"""Knowledge vs format: how much of a retention drop a few examples in the prompt recover.

A drop on a retention probe mixes losing the knowledge with losing the answer format ("spurious
forgetting", Zheng et al., ICLR 2025: a few in-context examples bring much of it back). A retention
probe with ``recovery_shots: k`` is scored a second time, as probe ``<name>@<k>shot``, with k other
items of the same probe and their gold answers before each item, each rendered exactly as the probe
renders one item (template and all), so the examples show the format and nothing else. The k
examples are the same for every item (drawn once from the probe's ids; an item that is one of them
takes the next one drawn instead), so every prompt starts with the same text and likelihood
metrics run it once per batch (lm-evaluation-harness likewise fixes a task's few-shot context). The report
splits the drop: *knowledge loss* is the drop that remains with the examples, *format loss* the
part they recover (the drop without them minus the drop with them).
"""

from __future__ import annotations

import random
from typing import Any

from ..config import DatasetConfig, EvalTaskConfig
from ..data.formats import answer_field
from ..data.tokenize import prompt_text, row_segments
from ..errors import DataError


def recovery_name(task: EvalTaskConfig) -> str:
    return f"{task.name}@{task.recovery_shots}shot"


def render_with_answer(row: dict[str, Any], cfg: DatasetConfig, tokenizer: Any) -> str:
    """One item as text, prompt and answer, as training renders it; a blank line after it where the
    format ends an item with an end-of-sequence token rather than a chat template's end of turn."""
    segments, adds_special_tokens = row_segments(row, cfg.format, tokenizer, cfg.template)
    return "".join(text for text, _ in segments) + ("\n\n" if adds_special_tokens else "")


def with_examples(
    task: EvalTaskConfig, cfg: DatasetConfig, rows: list[dict[str, Any]], ids: list[str], tokenizer: Any
) -> tuple[DatasetConfig, list[dict[str, Any]]]:
    """The probe's rows as prompt/completion rows whose prompt holds ``recovery_shots`` other items
    (the same draw for every item and run) rendered with their answers, then the item's own
    prompt; the gold answer and its aliases are kept for scoring."""
    k = task.recovery_shots
    if len(rows) <= k:
        raise DataError(
            f"evaluation {task.name!r}: recovery_shots {k} needs more than {k} items in "
            f"dataset {task.data!r} (it has {len(rows)})"
        )
    rendered = {item_id: render_with_answer(row, cfg, tokenizer) for row, item_id in zip(rows, ids)}
    key = answer_field(cfg.format)
    drawn = random.Random(f"{task.name}:{k}").sample(sorted(rendered), k + 1)
    out = []
    for row, item_id in zip(rows, ids):
        shots = [other for other in drawn if other != item_id][:k]
        prompt = "".join(rendered[other] for other in shots) + prompt_text(row, cfg.format, tokenizer, cfg.template)
        out.append(
            {
                "id": item_id,
                "prompt": prompt,
                "completion": row[key],
                **({"aliases": row["aliases"]} if row.get("aliases") else {}),
                **({"answer": row["answer"]} if "answer" in row else {}),
            }
        )
    return DatasetConfig(format="prompt_completion", rows=out), out
