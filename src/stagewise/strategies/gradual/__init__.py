"""Gradual Learning (Li et al. 2024, arXiv 2410.05802) on SliCK knowledge categories.

A ``select`` transform keeps the training items whose category — measured with the model
*entering the stage* — is in ``categories`` (stage 1: MaybeKnown), or that were *upgraded*
since the run's seed model (``upgraded_from: [WeaklyKnown, Unknown]``, ``to: [MaybeKnown,
HighlyKnown]``), plus a ``replay`` share of items in other categories (HighlyKnown). It runs
once over all of a stage's datasets together, so the replay ratio counts against every upgraded
item, as in the paper, and each dataset keeps its own selected rows.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...protocols import TransformContext
from ...registry import TRANSFORMS, Requires, TransformConfig, TransformTraits
from ...transforms import cached, rows_fingerprint, write_rows
from .slick import ProbeSettings, categorize, model_answerer, settings_dict, summary

Category = Literal["HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown"]


class ReplayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    categories: list[Category] = Field(min_length=1)
    ratio: float = Field(gt=0)  # replay items per selected (upgraded) item


class SelectConfig(TransformConfig):
    categories: list[Category] | None = None
    upgraded_from: list[Category] | None = None
    to: list[Category] | None = None
    replay: ReplayConfig | None = None
    n_prompts: int = Field(default=10, ge=1)  # SliCK N_ex = 10
    shots: int = Field(default=4, ge=0)  # 4-shot prompts
    samples: int = Field(default=16, ge=0)  # 16 samples at T = 0.5
    temperature: float = Field(default=0.5, gt=0)
    max_new_tokens: int = Field(default=16, ge=1)
    checker: Literal["exact_match", "contains"] = "exact_match"

    @model_validator(mode="after")
    def _one_rule(self) -> "SelectConfig":
        if (self.categories is None) == (self.upgraded_from is None):
            raise ValueError("give either 'categories' or 'upgraded_from' (with 'to')")
        if (self.upgraded_from is None) != (self.to is None):
            raise ValueError("'upgraded_from' and 'to' go together")
        return self

    def probe(self, seed: int) -> ProbeSettings:
        return ProbeSettings(
            self.n_prompts, self.shots, self.samples, self.temperature, self.max_new_tokens, self.checker, seed
        )


def categories_for(
    model_key: str,
    load: Callable[[], tuple[Any, Any]],
    rows: list[dict[str, Any]],
    settings: ProbeSettings,
    log: Callable[[str], None],
) -> list[str]:
    """SliCK category per row under the model ``model_key`` names; ``load`` runs only on a cache miss."""
    results = cached(
        "categorize",
        [model_key, rows_fingerprint(rows), settings_dict(settings)],
        lambda: categorize(rows, settings, model_answerer(*load())),
        log,
    )
    return [r["category"] for r in results]


def counts(categories: list[str]) -> dict[str, int]:
    return summary([{"category": c} for c in categories])


def choose(
    rows: list[dict[str, Any]], now: list[str], before: list[str] | None, config: SelectConfig, seed: int
) -> list[dict[str, Any]]:
    """The selection rule itself (pure): selected rows, then replay rows."""
    if config.categories is not None:
        picked = [i for i, c in enumerate(now) if c in config.categories]
    else:
        assert before is not None and config.upgraded_from and config.to
        picked = [i for i, (b, c) in enumerate(zip(before, now)) if b in config.upgraded_from and c in config.to]
    replayed: list[int] = []
    if config.replay is not None:
        chosen = set(picked)
        pool = [i for i, c in enumerate(now) if c in config.replay.categories and i not in chosen]
        count = min(len(pool), int(config.replay.ratio * len(picked) + 0.5))  # half rounds up, not to even
        replayed = sorted(random.Random(seed).sample(pool, count))
    return [rows[i] for i in picked] + [rows[i] for i in replayed]


@TRANSFORMS.register(
    "select",
    SelectConfig,
    requires=Requires(formats=("instruction",), model_tasks=("causal_lm",)),
    traits=TransformTraits(stage_wide=True),
    example={"categories": ["MaybeKnown"]},
)  # replay counts against the upgraded items of all datasets
def select(rows: list[dict[str, Any]], config: SelectConfig, context: TransformContext):
    """Keep items by SliCK knowledge category (Gradual Learning's data selection)."""
    settings = config.probe(context.seed)
    now = categories_for(context.model_key, lambda: (context.model, context.tokenizer), rows, settings, context.log)
    before = None
    if config.upgraded_from is not None:
        before = categories_for(context.seed_model_key, context.load_seed_model, rows, settings, context.log)
    selected = choose(rows, now, before, config, context.seed)
    write_rows(context.stage_dir / f"selected-{context.dataset_name}.jsonl", selected)
    report: dict[str, Any] = {"rows_in": len(rows), "rows_out": len(selected), "categories_now": counts(now)}
    if before is not None:
        report["categories_before"] = counts(before)
    return selected, report
