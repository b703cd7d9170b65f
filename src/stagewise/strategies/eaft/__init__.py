"""EAFT — Entropy-Adaptive Fine-Tuning (arXiv 2601.02151, 2026: "Resolving Confident
Conflicts to Mitigate Forgetting"; reference: the authors' loss merged into LLaMA-Factory as
``use_eaft_loss``, ``eaft_loss_func``).

SFT forgets most on *confident conflicts*: tokens where the model is sure (low entropy) and the
label says otherwise. EAFT scales each answer token's cross-entropy by the model's own, detached
uncertainty at that position:

    w_t = (H̃_t / s)^α,   H̃_t = −Σ_{v ∈ top-k} p̃_v log p̃_v   (p̃: softmax over the k largest logits)
    L = Σ_t w_t · CE_t / N

with k = 20, s = 3.0 (≈ ln 20, the largest top-20 entropy, so w_t ≤ ~1), α = 1 in the reference and
N the batch's answer tokens (the Trainer's ``num_items_in_batch``; the mean when absent). α = 0 is
plain SFT. Uncertain tokens learn as in SFT; confidently contradicted ones barely move the model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from ...protocols import LossContext
from ...registry import LOSSES, PluginConfig, Requires

IGNORE = -100


class EAFTConfig(PluginConfig):
    alpha: float = Field(default=1.0, ge=0)  # reference `eaft_alpha` 1.0: the weight's power (0 = SFT)
    top_k: int = Field(default=20, ge=2)  # reference: entropy over the 20 largest logits
    entropy_scale: float = Field(default=3.0, gt=0)  # reference: H̃ / 3.0 (≈ ln 20, top-20's largest entropy)


def entropy_weights(logits: torch.Tensor, top_k: int, scale: float, alpha: float) -> torch.Tensor:
    """w = (H̃ / scale)^alpha per row of ``logits`` (tokens × vocab), H̃ the entropy of the softmax
    over each row's ``top_k`` largest logits; no gradient flows through it."""
    with torch.no_grad():
        top = torch.topk(logits.detach().float(), k=min(top_k, logits.shape[-1]), dim=-1).values
        log_probs = top - torch.logsumexp(top, dim=-1, keepdim=True)
        entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
        return torch.pow(entropy / scale, alpha)


def eaft_loss(
    logits: torch.Tensor, labels: torch.Tensor, config: EAFTConfig, num_items_in_batch: Any = None
) -> torch.Tensor:
    """EAFT on a causal LM's logits (batch × length × vocab) and unshifted labels (batch × length),
    position t predicting label t+1 as in transformers' own loss; ``-100`` labels are ignored."""
    vocab = logits.shape[-1]
    targets = F.pad(labels, (0, 1), value=IGNORE)[..., 1:].reshape(-1).to(logits.device)
    flat = logits.float().reshape(-1, vocab)
    kept = targets != IGNORE
    if not kept.any():
        return flat.sum() * 0.0  # no answer token in this batch: no gradient, still a graph
    per_token = F.cross_entropy(flat[kept], targets[kept], reduction="none")
    weighted = per_token * entropy_weights(flat[kept], config.top_k, config.entropy_scale, config.alpha)
    if num_items_in_batch is None:
        return weighted.mean()
    return weighted.sum() / torch.as_tensor(num_items_in_batch, device=weighted.device)


@LOSSES.register("eaft", EAFTConfig, requires=Requires(objectives=("lm",), model_tasks=("causal_lm",)))
def eaft(config: EAFTConfig, context: LossContext):
    """Entropy-adaptive token weights on next-token cross-entropy (EAFT, arXiv 2601.02151)."""

    def compute(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        return eaft_loss(logits, labels, config, num_items_in_batch)

    return compute
