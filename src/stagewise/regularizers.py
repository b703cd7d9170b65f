"""Regularizers: a penalty on the trainable tensors, whatever the loss, selector or trainer.

A regularizer entry builds a :class:`Penalty` from the model *entering the stage* (after its
trainable tensors are selected). Its gradient is added to the trainable tensors' gradients after
every backward pass (by ``trainers.StageTrainerMixin``, scaled so that it counts once per optimizer
step under gradient accumulation), tensor by tensor: the same update as adding the penalty to the
loss, without an autograd graph of full-size intermediates. Its value is logged as ``penalty``.
A penalty is built on the whole model; when the stage is sharded it is told to :meth:`Penalty.follow`
the shards, and each rank then penalises its own slice of every tensor.
``none`` adds nothing; strategies register anchors to the entering weights (L2-SP, EWC).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from .registry import REGULARIZERS, PluginConfig


class Penalty(Protocol):
    def value(self) -> float:
        """The penalty at the current weights (for the logs)."""

    def add_gradients(self, scale: float) -> None:
        """Add ``scale`` × the penalty's gradient to each trainable tensor's ``.grad``."""

    def follow(self, model: torch.nn.Module) -> None:
        """Act on ``model``'s parameters from now on: sharding (FSDP2) replaced the tensors the
        penalty was built on by shards of the same names."""


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
    """Plain fine-tuning: nothing added."""
    return None
