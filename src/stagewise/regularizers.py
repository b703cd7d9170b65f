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

import torch

from .protocols import Penalty, RegularizerContext
from .registry import REGULARIZERS, PluginConfig


@REGULARIZERS.register("none")
def no_regularizer(config: PluginConfig, model: torch.nn.Module, context: RegularizerContext) -> Penalty | None:
    """Plain fine-tuning: nothing added."""
    return None
