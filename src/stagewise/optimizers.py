"""The optimizer slot: what turns the stage's optimizer groups into a torch optimizer.

An optimizer entry receives the parameter groups the engine prepared (decay / no-decay, then split
by the LR rule, e.g. one group per layer under TempBalance) and the stage's ``TrainingArguments``
(learning rate, betas, epsilon) and returns a ``torch.optim.Optimizer`` over exactly those groups,
so every selector and LR rule works with every optimizer. ``hf`` (the default) returns ``None``:
the Trainer builds its own, named by the stage's ``optim``. Strategies register others (MoFO).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from transformers import TrainingArguments

from .registry import OPTIMIZERS, PluginConfig

ParamGroups = list[dict[str, Any]]  # torch optimizer groups: {"params": [...], "weight_decay": ..., "lr"?: ...}


class OptimizerBuilder(Protocol):
    """Builds the stage's optimizer over ``groups``; ``None`` = the Trainer's own (``optim``)."""

    def __call__(self, config: Any, groups: ParamGroups, args: TrainingArguments) -> torch.optim.Optimizer | None: ...


@OPTIMIZERS.register("hf")
def trainer_optimizer(
    config: PluginConfig, groups: ParamGroups, args: TrainingArguments
) -> torch.optim.Optimizer | None:
    """The transformers Trainer's optimizer, chosen by the stage's ``optim`` (default AdamW)."""
    return None
