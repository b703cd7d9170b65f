"""Learning-rate rules layered on top of the stage's schedule (``lr_scheduler_type``).

``uniform`` gives every trainable tensor the scheduled LR. Rules such as TempBalance
register here and return Trainer callbacks that rescale per-group LRs after each step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from .registry import LR_RULES, PluginConfig


@dataclass(frozen=True)
class LrRuleContext:
    base_lr: float
    seed: int


@LR_RULES.register("uniform")
def uniform_lr(config: PluginConfig, model: torch.nn.Module, context: LrRuleContext) -> list[TrainerCallback]:
    """One LR for every trainable tensor, following the stage's schedule."""
    return []
