"""The evaluation schema: which probes score gain and retention, and when (curve points, guard)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator

from ..schema import SafeName, StrictModel


class StageEval(StrictModel):
    """Held-out data scored (loss / perplexity) after the stage."""

    data: list[str]
    batch_size: int = Field(default=8, ge=1)
    select_best: bool = False  # evaluate each epoch; keep the epoch with the lowest loss on data[0] (a dev split)


class EvalTaskConfig(StrictModel):
    """One scored probe: a dataset and the metric that summarises it."""

    name: SafeName
    data: str | None = None  # the dataset scored (every metric but lm_eval, which loads its own)
    metric: str  # a registered metric (README: evaluation metrics)
    shots: int = Field(default=4, ge=0)  # fewshot: demonstrations per query, from the same task
    max_new_tokens: int = Field(default=24, ge=1)
    pattern: str | None = None  # regex metric: first group is the answer
    choices: int = Field(default=4, ge=2)  # choice: the gold and choices - 1 other items' answers (lm-eval: 4 options)
    recovery_shots: int = Field(default=0, ge=0)  # retention: also score with k other items as examples (probe
    # <name>@<k>shot), splitting a drop into format and knowledge loss
    addon: Literal["auto", "always", "never"] = Field(  # score with the stage's add-on attached? auto = the
        default="auto", validation_alias=AliasChoices("addon", "use_prompt")
    )  # add-on's rule (soft prompt: target only)
    n_prompts: int = Field(default=10, ge=1)  # highly_known: SliCK's few-shot prompts per item
    samples: int = Field(default=16, ge=0)  # highly_known: sampled answers per prompt (T = 0.5)
    tasks: list[str] | None = None  # lm_eval: lm-evaluation-harness task names
    num_fewshot: int | None = Field(default=None, ge=0)  # lm_eval: None = each task's default
    limit: int | None = Field(default=None, ge=1)  # lm_eval: first N documents per task
    include_path: str | None = None  # lm_eval: a folder of the user's own task YAMLs
    stage: str | None = None  # continual sequences: the stage that learns this probe's task
    # (the report's accuracy matrix, average accuracy, BWT, FWT)

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"invalid regular expression: {err}") from None
        return value


class GuardConfig(StrictModel):
    """``evaluation.guard``: stop a stage whose retention probe drops too far (``engine.guard``)."""

    probe: str  # a retention probe's name
    max_drop: float = Field(gt=0)  # largest drop from the entering model's score that is tolerated
    every_steps: int = Field(default=50, ge=1)  # optimizer steps between checks
    items: int | None = Field(default=None, ge=1)  # score the probe's first N items only (None: all)


class CurveSteps(StrictModel):
    """``evaluation.every: {steps: [25, 50, 100]}``: curve points after these optimizer steps."""

    steps: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)


class EvaluationConfig(StrictModel):
    """What 'gain' and 'forgetting' mean for this recipe: target probes and retention probes."""

    target: list[EvalTaskConfig] = Field(default_factory=list)
    retention: list[EvalTaskConfig] = Field(default_factory=list)
    batch_size: int = Field(default=16, ge=1)  # sequences decoded (or scored) per batch
    max_length: int = Field(default=512, ge=8)
    after_each_stage: bool = True
    # stage: score after each stage; epoch: also at each epoch's end (a gain/retention curve); log: also after
    # 1/8, 1/4 and 1/2 of the first epoch, then every epoch (dense where fine-tuning changes most);
    # {steps: [...]}: also after these optimizer steps of every stage
    every: Literal["stage", "epoch", "log"] | CurveSteps = "stage"
    guard: GuardConfig | None = None  # stop a stage when a retention probe drops more than max_drop
    kl_prompts: int = Field(default=64, ge=0)  # forgetting predictor: KL(tuned || entering) on this many of each
    kl_tokens: int = Field(default=32, ge=1)  # stage's prompts, tuned model's samples of this length (0: off)
