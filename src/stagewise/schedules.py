"""Learning-rate rules layered on top of the stage's schedule (``lr_scheduler_type``).

A rule returns an :class:`LrPlan`: optionally a function that splits the optimizer's
parameter groups (each group's LR then follows the schedule scaled by its own initial
LR), and Trainer callbacks that adjust those groups during training. ``uniform`` gives
every trainable tensor the scheduled LR; TempBalance registers in its strategy folder.
"""

from __future__ import annotations

import torch

from .protocols import LrPlan, LrRuleContext
from .registry import LR_RULES, PluginConfig


@LR_RULES.register("uniform")
def uniform_lr(config: PluginConfig, model: torch.nn.Module, context: LrRuleContext) -> LrPlan:
    """One LR for every trainable tensor, following the stage's schedule."""
    return LrPlan()
