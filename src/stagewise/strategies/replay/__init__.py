"""Self-replay: general-data replay without the original training data.

The model entering the stage answers a set of general prompts (any instruction dataset of the
recipe: the built-in ``chat`` prompts, known-facts questions, or the user's own), greedily, and
its own answers become extra training rows, mixed into the stage's data. Training on them pulls
the model towards what it already did on general inputs while it learns the new task — the
replay practitioners are told to use ("mix general data back in"), when the general data the
model was trained on is not at hand. ``ratio`` counts replay rows per training row (0.3 over 120
rows: 36 replay rows, 23% of the stage). Answers are cached by (entering model, prompts,
settings) and written beside the stage as ``self-replay-<dataset>.jsonl``.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

from pydantic import Field

from ...errors import DataError
from ...plan.footprint import generation_plan
from ...protocols import TransformContext
from ...registry import TRANSFORMS, Requires, TransformConfig
from ...transforms import cached, greedy_answers, rows_fingerprint, write_rows


class SelfReplayConfig(TransformConfig):
    dataset_fields: ClassVar[tuple[str, ...]] = ("prompts",)
    prompts: str  # an instruction dataset whose instructions the model answers
    ratio: float = Field(default=0.3, gt=0)  # replay rows per training row (0.25-0.43 = 20-30% of the stage)
    max_new_tokens: int = Field(default=64, ge=1)  # answer length
    batch_size: int = Field(default=16, ge=1)


@TRANSFORMS.register(
    "self_replay",
    SelfReplayConfig,
    example={"prompts": "d"},
    requires=Requires(formats=("instruction",), model_tasks=("causal_lm",)),
    plan=generation_plan,
)
def self_replay(rows: list[dict[str, Any]], config: SelfReplayConfig, context: TransformContext):
    """Append the entering model's own greedy answers to ``ratio`` x len(rows) general prompts."""
    pool = [row for row in context.rows_of(config.prompts) if row.get("instruction")]
    if not pool:
        raise DataError(
            f"transform 'self_replay': prompts dataset {config.prompts!r} has no rows with an 'instruction' to answer"
        )
    count = round(config.ratio * len(rows))
    rng = random.Random(context.seed)
    chosen = [rng.choice(pool) for _ in range(count)] if count > len(pool) else rng.sample(pool, count)
    prompts = [
        {"instruction": row["instruction"], **({"input": row["input"]} if row.get("input") else {})} for row in chosen
    ]

    def answer() -> list[str]:
        empty = [{**row, "output": ""} for row in prompts]
        texts = greedy_answers(context, empty, "instruction", config.max_new_tokens, config.batch_size, "self-replay")
        return [text.strip() for text in texts]

    settings = config.model_dump(exclude={"batch_size"})
    answers = cached(
        "self_replay",
        [context.model_key, rows_fingerprint(prompts), context.dataset.template, settings],
        answer,
        context.log,
    )
    replay = [{**prompt, "output": text, "self_replay": True} for prompt, text in zip(prompts, answers) if text]
    write_rows(context.stage_dir / f"self-replay-{context.dataset_name}.jsonl", replay)
    return rows + replay, {"rows": len(rows), "replay_rows": len(replay), "empty_answers": len(prompts) - len(replay)}
