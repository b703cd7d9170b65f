"""Loss functions a stage can train with. ``ce`` keeps the model's own loss
(next-token CE with shifted labels, or classification CE); strategies register
class-balanced and margin losses here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .registry import LOSSES, PluginConfig

LossFn = Callable[..., object]


@dataclass(frozen=True)
class LossContext:
    """What a loss may depend on: the stage objective and, for classification, class counts."""

    objective: str
    class_counts: list[int] = field(default_factory=list)


@LOSSES.register("ce")
def cross_entropy(config: PluginConfig, context: LossContext) -> LossFn | None:
    """Cross-entropy as computed by the model itself (``None`` = the model's own loss)."""
    return None
