"""What a stage means beyond its fields: the formats and objective of the rows it trains on, the
datasets its transforms rewrite, whether it trains a separate model, whether its KL is measured,
which entries it uses."""

from __future__ import annotations

from typing import Any

from ..registry import (
    DATA_FORMATS,
    TRAINERS,
    TRANSFORMS,
    PluginConfig,
)
from .schema import PLUGIN_FIELDS, Recipe, StageConfig


def builds_model(stage: StageConfig) -> bool:
    """Does this stage train a separate model (a reward model) rather than the one it hands on?"""
    return TRAINERS.get(stage.trainer.kind).traits.builds_model is not None


def measures_kl(recipe: Recipe, stage: StageConfig) -> bool:
    """The forgetting predictor (KL to the entering model, ``engine.scoring.stage_kl``) applies to a
    causal LM stage that hands its model on (``kl_prompts > 0``); ``plan`` counts its reference model."""
    return bool(
        recipe.evaluation
        and recipe.evaluation.kl_prompts
        and recipe.model.task == "causal_lm"
        and not builds_model(stage)
    )


def plugin_configs(stage: StageConfig) -> list[tuple[tuple[Any, ...], PluginConfig]]:
    """(key path in the stage, config) of every registered entry a stage uses."""
    return [((field,), getattr(stage, field)) for field in PLUGIN_FIELDS] + [
        (("transforms", i), t) for i, t in enumerate(stage.transforms)
    ]


def trainable_formats() -> set[str]:
    """The registered formats a stage can train on (the rest are for evaluation probes)."""
    return {entry.name for entry in DATA_FORMATS.entries() if entry.traits.trainable}


def format_objective(data_format: str) -> str:
    return DATA_FORMATS.get(data_format).traits.objective


def transform_targets(recipe: Recipe, stage: StageConfig, transform: Any) -> list[str]:
    """The stage datasets a transform rewrites (:meth:`TransformConfig.targets`)."""
    return transform.targets(list(stage.data), earlier_data(recipe, stage))


def earlier_data(recipe: Recipe, stage: StageConfig) -> set[str]:
    """The datasets the stages before ``stage`` trained on."""
    names = [other.name for other in recipe.stages]
    index = names.index(stage.name) if stage.name in names else len(names)
    return {name for other in recipe.stages[:index] for name in other.data}


def format_chain(recipe: Recipe, stage: StageConfig) -> list[dict[str, str]]:
    """Each dataset's format as it enters each of the stage's transforms, then as the stage trains
    on it (a transform may return another format: labelled rows templated into instructions)."""
    chain = [{name: recipe.datasets[name].format for name in stage.data}]
    for transform in stage.transforms:
        output = TRANSFORMS.get(transform.kind).traits.output_format
        chain.append(
            {
                name: output if output and name in transform_targets(recipe, stage, transform) else fmt
                for name, fmt in chain[-1].items()
            }
        )
    return chain


def stage_formats(recipe: Recipe, stage: StageConfig) -> set[str]:
    """The formats of the rows the stage trains on."""
    return set(format_chain(recipe, stage)[-1].values())


def stage_objective(recipe: Recipe, stage: StageConfig) -> str:
    """'lm' (next-token), 'classification', 'preference' or 'feedback', from the format of the
    rows the stage trains on."""
    return format_objective(sorted(stage_formats(recipe, stage))[0])
