"""Loss functions a stage can train with. ``ce`` keeps the model's own loss
(next-token CE with shifted labels, or classification CE); strategies register
class-balanced and margin losses here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from .registry import LOSSES, PluginConfig

LossFn = Callable[..., object]


@dataclass(frozen=True)
class LossContext:
    """What a loss may depend on: the stage objective and, for classification, class counts."""

    objective: str
    class_counts: list[int] = field(default_factory=list)


@runtime_checkable
class TrainerBuilder(Protocol):
    """A loss that needs its own trainer (DPO): the stage runner calls ``build`` and trains it."""

    def build(self, *, model: Any, tokenizer: Any, rows: list[dict[str, Any]], callbacks: list[Any],
              args_for: Callable[..., Any]) -> Any: ...


@LOSSES.register("ce")
def cross_entropy(config: PluginConfig, context: LossContext) -> LossFn | None:
    """Cross-entropy as computed by the model itself (``None`` = the model's own loss)."""
    return None
