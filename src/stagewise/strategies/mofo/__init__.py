"""MoFO — Momentum-Filtered Optimizer (Chen et al., "MoFO: Momentum-Filtered Optimizer for
Mitigating Forgetting in LLM Fine-Tuning", TMLR 2025, Algorithm 1; reference: YChen-zzz/MoFO,
``algorithms_MoFO.AdamW_MoFO``).

Fine-tuning forgets less when the weights stay near the pre-trained ones. MoFO keeps AdamW's
moments for every entry but, in each weight matrix (one partition per parameter tensor, as the
reference), moves only the entries whose first moment is among the largest in magnitude:

    m_t = β1 m_{t−1} + (1−β1) g_t,   v_t = β2 v_{t−1} + (1−β2) g_t²
    θ_t = θ_{t−1}(1 − η λ) − η · (m_t ⊙ 1[|m_t| ≥ τ]) / (1−β1^t) / (√(v_t/(1−β2^t)) + ε)

τ the k-th largest |m_t| of the tensor, k = ⌊fraction · numel⌋ (at least 1). Biases and norm
scales (the 1-D tensors: the reference names them ``bias``/``norm``) take the plain AdamW update.
Decoupled weight decay applies to every entry, as in the reference; which tensors decay is the
Trainer's usual split (no decay on biases and norms). ``fraction: 1.0`` is AdamW exactly.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import Field
from transformers import TrainingArguments

from ...protocols import ParamGroups
from ...registry import OPTIMIZERS, PluginConfig, Requires


class MoFOConfig(PluginConfig):
    fraction: float = Field(default=0.15, gt=0, le=1)  # share of each matrix updated per step; the reference
    # recommends 5-20% (README "MoFO_fraction"), 15% its example


def momentum_mask(exp_avg: torch.Tensor, fraction: float) -> torch.Tensor:
    """True at the ⌊fraction · numel⌋ (at least 1) entries of largest |momentum| (ties at the
    threshold kept, as the reference's ``>=``)."""
    magnitude = exp_avg.abs()
    k = max(1, int(exp_avg.numel() * fraction))
    threshold = torch.topk(magnitude.reshape(-1), k).values.min()
    return magnitude >= threshold


class MoFO(torch.optim.Optimizer):
    """AdamW (torch's single-tensor arithmetic, op for op) whose update of each ≥2-D tensor is
    restricted to its largest-momentum entries. State keys are AdamW's (``step``, ``exp_avg``,
    ``exp_avg_sq``), so checkpoints save and resume it like any torch optimizer."""

    def __init__(
        self,
        params: Any,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        fraction: float = 0.15,
    ) -> None:
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "fraction": fraction}
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        state = self.state[param]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        exp_avg, exp_avg_sq, grad = state["exp_avg"], state["exp_avg_sq"], param.grad
        state["step"] += 1
        if group["weight_decay"] != 0:
            param.mul_(1 - lr * group["weight_decay"])
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = state["step"].item()
        step_size = lr / (1 - beta1**step)
        denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
        update = exp_avg
        if param.ndim >= 2 and group["fraction"] < 1:
            update = torch.where(momentum_mask(exp_avg, group["fraction"]), exp_avg, 0)
        param.addcdiv_(update, denom, value=-step_size)


@OPTIMIZERS.register(
    "mofo",
    MoFOConfig,
    requires=Requires(
        sharded=False,
        deepspeed_problem="ZeRO hands the optimizer 1-D flat partitions, which MoFO's per-matrix top-k skips",
    ),
    example={"fraction": 0.5},
)
def mofo(config: MoFOConfig, groups: ParamGroups, args: TrainingArguments) -> torch.optim.Optimizer:
    """MoFO over the stage's groups, with the stage's learning rate, betas and epsilon.

    Not on FSDP2 shards: the top-k of a tensor would be taken per rank's slice."""
    return MoFO(
        groups,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
        fraction=config.fraction,
    )
