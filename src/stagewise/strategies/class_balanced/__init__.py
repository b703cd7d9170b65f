"""Class-imbalance losses for classification stages.

- ``class_balanced_ce``: cross-entropy weighted by the inverse *effective number* of
  samples, w_c = (1−β)/(1−β^{n_c}), normalized to sum to C (Cui et al. CVPR 2019, Eq. 4-5).
- ``ldam``: label-distribution-aware margins m_c ∝ n_c^(−1/4), the largest equal to
  ``max_m``; loss = CE(s·(z − m_y·onehot(y)), y, weight=w) (Cao et al. NeurIPS 2019, Eq. 13),
  here with the class-balanced weights, as in two-stage fine-tuning (ValizadehAslani et al.
  2022, arXiv 2207.10858).
- ``focal``: (1−p_y)^γ · CE (Lin et al. 2017), optionally class-balanced.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from ...errors import RecipeError
from ...protocols import LossContext
from ...registry import LOSSES, PluginConfig, Requires


def effective_number_weights(counts: list[int], beta: float) -> torch.Tensor:
    """w_c = (1−β)/(1−β^{n_c}), normalized so the weights sum to the number of classes."""
    n = torch.tensor(counts, dtype=torch.float64)
    weights = (1 - beta) / (1 - torch.pow(beta, n))
    return (weights / weights.sum() * len(counts)).float()


def ldam_margins(counts: list[int], max_m: float) -> torch.Tensor:
    """m_c = n_c^(−1/4), rescaled so the largest margin (rarest class) is ``max_m``."""
    margins = torch.tensor(counts, dtype=torch.float64).pow(-0.25)
    return (margins * (max_m / margins.max())).float()


def ldam_loss(
    logits: torch.Tensor, labels: torch.Tensor, margins: torch.Tensor, scale: float, weights: torch.Tensor | None
) -> torch.Tensor:
    adjusted = logits - F.one_hot(labels, logits.shape[-1]).to(logits.dtype) * margins.to(logits)[labels, None]
    return F.cross_entropy(scale * adjusted, labels, weight=None if weights is None else weights.to(logits))


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float, weights: torch.Tensor | None) -> torch.Tensor:
    log_probs = F.log_softmax(logits.float(), dim=-1)
    log_p = log_probs.gather(1, labels[:, None]).squeeze(1)
    loss = -((1 - log_p.exp()) ** gamma) * log_p
    if weights is None:
        return loss.mean()
    w = weights.to(loss)[labels]
    return (w * loss).sum() / w.sum()


class ClassBalancedConfig(PluginConfig):
    beta: float = Field(default=0.9999, ge=0, lt=1)  # Cui et al.: 0.9999 for large imbalance


class LDAMConfig(PluginConfig):
    max_m: float = Field(default=0.5, gt=0)  # LDAM paper and two-stage reference: 0.5
    scale: float = Field(default=1.0, gt=0)  # two-stage reference: s = 1 (the LDAM paper used 30)
    beta: float = Field(default=0.9999, ge=0, lt=1)
    reweight: bool = True  # class-balanced weights on top of the margins


class FocalConfig(PluginConfig):
    gamma: float = Field(default=2.0, ge=0)
    beta: float | None = Field(default=None, ge=0, lt=1)  # set to class-balance the focal loss


CLASSIFICATION = Requires(objectives=("classification",), model_tasks=("sequence_classification",))


def _needs_classes(name: str, context: LossContext) -> None:
    if min(context.class_counts) == 0:
        raise RecipeError(f"loss {name!r}: a class has no training example (counts {context.class_counts})")


def _logits_and_labels(outputs: Any, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    return logits, labels.view(-1)


@LOSSES.register("class_balanced_ce", ClassBalancedConfig, requires=CLASSIFICATION)
def class_balanced_ce(config: ClassBalancedConfig, context: LossContext):
    """Cross-entropy weighted by inverse effective class counts (Cui et al. 2019)."""
    _needs_classes("class_balanced_ce", context)
    weights = effective_number_weights(context.class_counts, config.beta)

    def compute(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits, labels = _logits_and_labels(outputs, labels)
        return F.cross_entropy(logits, labels, weight=weights.to(logits))

    return compute


@LOSSES.register("ldam", LDAMConfig, requires=CLASSIFICATION)
def ldam(config: LDAMConfig, context: LossContext):
    """LDAM margins with class-balanced weights (Cao et al. 2019; two-stage fine-tuning stage 1)."""
    _needs_classes("ldam", context)
    margins = ldam_margins(context.class_counts, config.max_m)
    weights = effective_number_weights(context.class_counts, config.beta) if config.reweight else None

    def compute(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits, labels = _logits_and_labels(outputs, labels)
        return ldam_loss(logits, labels, margins, config.scale, weights)

    return compute


@LOSSES.register("focal", FocalConfig, requires=CLASSIFICATION)
def focal(config: FocalConfig, context: LossContext):
    """Focal loss (Lin et al. 2017), class-balanced when ``beta`` is set (Cui et al. 2019)."""
    _needs_classes("focal", context)
    weights = effective_number_weights(context.class_counts, config.beta) if config.beta is not None else None

    def compute(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits, labels = _logits_and_labels(outputs, labels)
        return focal_loss(logits, labels, config.gamma, weights)

    return compute
