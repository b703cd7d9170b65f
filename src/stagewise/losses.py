"""Loss functions a stage can train with. ``ce`` keeps the model's own loss (next-token CE
with shifted labels, or classification CE); strategies register class-balanced and margin
losses here. A loss is a ``compute_loss_func`` for the Trainer; a method that needs its own
training loop (DPO, reward modelling) is a trainer (``trainers``), not a loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from .registry import LOSSES, PluginConfig, Requires

LossFn = Callable[..., object]  # (outputs, labels, num_items_in_batch) -> loss tensor


@dataclass(frozen=True)
class LossContext:
    """What a loss may depend on: the stage objective and, for classification, class counts."""

    objective: str
    class_counts: list[int] = field(default_factory=list)


class LossBuilder(Protocol):
    """Builds the stage's loss function; ``None`` = the model's own loss."""

    def __call__(self, config: Any, context: LossContext) -> LossFn | None: ...


@LOSSES.register("ce", requires=Requires(objectives=("lm", "classification")))
def cross_entropy(config: PluginConfig, context: LossContext) -> LossFn | None:
    """Cross-entropy as computed by the model itself (``None`` = the model's own loss)."""
    return None
