"""Learning-rate rules layered on top of the stage's schedule (``lr_scheduler_type``).

A rule returns an :class:`LrPlan`: optionally a function that splits the optimizer's
parameter groups (each group's LR then follows the schedule scaled by its own initial
LR), and Trainer callbacks that adjust those groups during training. ``uniform`` gives
every trainable tensor the scheduled LR; TempBalance registers in its strategy folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from transformers import TrainerCallback

from .registry import LR_RULES, PluginConfig

GroupSplitter = Callable[[torch.nn.Module, list[dict[str, Any]]], list[dict[str, Any]]]


@dataclass(frozen=True)
class LrRuleContext:
    base_lr: float


@dataclass
class LrPlan:
    split_groups: GroupSplitter | None = None
    callbacks: list[TrainerCallback] = field(default_factory=list)


class LrRule(Protocol):
    """Plans the stage's optimizer groups and LR callbacks for ``model`` (already selected)."""

    def __call__(self, config: Any, model: torch.nn.Module, context: LrRuleContext) -> LrPlan: ...


@LR_RULES.register("uniform")
def uniform_lr(config: PluginConfig, model: torch.nn.Module, context: LrRuleContext) -> LrPlan:
    """One LR for every trainable tensor, following the stage's schedule."""
    return LrPlan()
