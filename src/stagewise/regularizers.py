"""Regularizers: a penalty added to the stage's loss, whatever the loss, selector or trainer.

A regularizer entry builds a :class:`Penalty` from the model *entering the stage* (after its
trainable tensors are selected): ``penalty(model)`` is a scalar tensor added to every training
loss (by ``trainers.StageTrainerMixin``, once per optimizer step under gradient accumulation).
``none`` adds nothing; strategies register anchors to the entering weights (L2-SP, EWC).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from .registry import REGULARIZERS, PluginConfig

Penalty = Callable[[torch.nn.Module], torch.Tensor]


@dataclass(frozen=True)
class RegularizerContext:
    """What a regularizer may use besides the model: the encoded examples of any recipe dataset
    (EWC's Fisher data), the collator, the entering model's identity (for caches), a log."""

    examples_of: Callable[[str], list[dict[str, Any]]]
    collator: Any
    model_key: str
    stage_dir: Path
    log: Callable[[str], None]


class Regularizer(Protocol):
    def __call__(self, config: Any, model: torch.nn.Module, context: RegularizerContext) -> Penalty | None: ...


@REGULARIZERS.register("none")
def no_regularizer(config: PluginConfig, model: torch.nn.Module, context: RegularizerContext) -> Penalty | None:
    """Plain fine-tuning: nothing added to the loss."""
    return None
