"""The optimizer slot: what turns the stage's optimizer groups into a torch optimizer.

An optimizer entry receives the parameter groups the engine prepared (decay / no-decay, then split
by the LR rule, e.g. one group per layer under TempBalance) and the stage's ``TrainingArguments``
(learning rate, betas, epsilon) and returns a ``torch.optim.Optimizer`` over exactly those groups,
so every selector and LR rule works with every optimizer. ``hf`` (the default) returns ``None``:
the Trainer builds its own, named by the stage's ``optim``. Strategies register others (MoFO).
"""

from __future__ import annotations

import torch
from transformers import TrainingArguments

from .protocols import ParamGroups
from .registry import OPTIMIZERS, PluginConfig


@OPTIMIZERS.register("hf")
def trainer_optimizer(
    config: PluginConfig, groups: ParamGroups, args: TrainingArguments
) -> torch.optim.Optimizer | None:
    """The transformers Trainer's optimizer, chosen by the stage's ``optim`` (default AdamW)."""
    return None
