"""Loss functions a stage can train with. ``ce`` keeps the model's own loss (next-token CE
with shifted labels, or classification CE); strategies register class-balanced and margin
losses here. A loss is a ``compute_loss_func`` for the Trainer; a method that needs its own
training loop (DPO, reward modelling) is a trainer (``trainers``), not a loss."""

from __future__ import annotations

from .protocols import LossContext, LossFn
from .registry import LOSSES, PluginConfig, Requires


@LOSSES.register("ce", requires=Requires(objectives=("lm", "classification")))
def cross_entropy(config: PluginConfig, context: LossContext) -> LossFn | None:
    """Cross-entropy as computed by the model itself (``None`` = the model's own loss)."""
    return None
