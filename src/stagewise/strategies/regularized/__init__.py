"""Regularized fine-tuning: anchor the trainable tensors to the weights entering the stage.

- **L2-SP** (Li, Grandvalet & Davoine, ICML 2018, "Explicit Inductive Bias for Transfer Learning
  with Convolutional Networks", eq. 3's first term): ``λ/2 · ‖θ − θ₀‖²``.
- **EWC** (Kirkpatrick et al., PNAS 2017, eq. 3): ``λ/2 · Σᵢ Fᵢ (θᵢ − θ₀,ᵢ)²`` with the diagonal
  empirical Fisher ``Fᵢ = mean over batches of (∂ℓ/∂θᵢ)²`` of the entering model's loss on a
  named dataset (the old task, or general data); ``batch_size: 1`` squares per-example
  gradients, as the paper's Fisher does.

θ₀ is the model entering the stage (not the checkpoint a resumed stage restarts from); only the
tensors the stage's selector made trainable are anchored, and the Fisher is computed on them
alone, once per stage, and cached by (entering model, Fisher data, settings).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from ...bundled import cache_dir
from ...distributed import barrier, broadcast_from_main, is_main_process
from ...errors import DataError
from ...protocols import Penalty, RegularizerContext
from ...registry import REGULARIZERS, PluginConfig, Requires
from ...sharding import local, local_shard, sum_over_ranks


class L2SPConfig(PluginConfig):
    weight: float = Field(default=0.01, ge=0)  # λ; the paper's α = 0.1 (images); tune on a dev set
    offload: bool = False  # keep θ₀ on the CPU (no device memory; a copy per step)


class EWCConfig(PluginConfig):
    dataset_fields = ("data",)
    weight: float = Field(default=1.0, ge=0)  # λ; scale with 1 / mean Fisher (the paper tunes it per task)
    data: str  # the dataset whose loss defines the Fisher (old task / general)
    batches: int = Field(default=32, ge=1)  # batches averaged into the Fisher (the first ones, in order)
    batch_size: int = Field(default=1, ge=1)  # 1: per-example squared gradients (the paper's empirical Fisher)
    offload: bool = False  # keep θ₀ and F on the CPU


def trainable_tensors(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of each trainable tensor once (tied weights counted once)."""
    seen: set[int] = set()
    found = []
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            found.append((name, param))
    return found


class Anchor:
    """``λ/2 · Σ wᵢ (θᵢ − θ₀,ᵢ)²`` over the trainable tensors (w = 1: L2-SP; w = F: EWC), applied
    through the gradients: after a backward pass ``λ·wᵢ·(θᵢ − θ₀,ᵢ)`` joins θᵢ's gradient, one
    tensor at a time, so no autograd graph of full-size differences is held. θ₀ and F are kept in
    the storage dtype (θ₀ is exact there: the entering weights were stored in it; under mixed
    precision the trained tensors are fp32 copies of them), on the CPU with ``offload``. It holds
    the parameter objects themselves, so a wrapped model (DDP) is penalised on the same tensors;
    under FSDP2 it follows the shards: θ₀ and F are cut like each parameter, every rank works on
    its own slice, and the logged value is summed over ranks."""

    def __init__(
        self, model: torch.nn.Module, weight: float, importance: list[torch.Tensor] | None = None, offload: bool = False
    ) -> None:
        from ...addons import base_model_of
        from ...precision import storage_dtype

        dtype = storage_dtype(base_model_of(model))
        named = trainable_tensors(model)
        self.names = [name for name, _ in named]
        self.params = [param for _, param in named]
        self.home = (
            (lambda t: t.detach().to("cpu", dtype, copy=True))
            if offload
            else (lambda t: t.detach().to(dtype=dtype, copy=True))
        )
        self.anchor = [self.home(param) for param in self.params]
        self.importance = None if importance is None else [self.home(tensor) for tensor in importance]
        self.weight = weight

    def follow(self, model: torch.nn.Module) -> None:
        parameters = dict(model.named_parameters())
        self.params = [parameters[name] for name in self.names]
        cut = [lambda whole, p=param: self.home(local_shard(whole.to(p.device), p)) for param in self.params]
        self.anchor = [shard(whole) for shard, whole in zip(cut, self.anchor)]
        if self.importance is not None:
            self.importance = [shard(whole) for shard, whole in zip(cut, self.importance)]

    def _difference(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(θᵢ − θ₀,ᵢ, wᵢ or None for L2-SP) of this rank's part, in the parameter's dtype, on its device."""
        param = local(self.params[index]).detach()
        difference = param - self.anchor[index].to(param.device, param.dtype)
        weight = None if self.importance is None else self.importance[index].to(param.device, param.dtype)
        return difference, weight

    @torch.no_grad()
    def value(self) -> float:
        total = 0.0
        for index in range(len(self.params)):
            difference, weight = self._difference(index)
            squared = difference.pow_(2)
            total += float((squared if weight is None else squared.mul_(weight)).sum())
        return 0.5 * self.weight * sum_over_ranks(total)

    @torch.no_grad()
    def add_gradients(self, scale: float) -> None:
        if self.weight == 0:
            return
        for index, param in enumerate(self.params):
            if param.grad is None:  # a tensor the loss did not reach this step is not stepped at all
                continue
            difference, weight = self._difference(index)
            gradient = difference if weight is None else difference.mul_(weight)
            grad = local(param.grad)
            grad.add_(gradient.to(grad.dtype), alpha=self.weight * scale)


def anchor_plan(copies: int) -> Any:
    """`stagewise plan`: θ₀ (and F) in the storage dtype over the trained tensors, on the device unless offloaded."""
    return lambda config, ctx: {
        f"{config.kind} copies": 0.0 if config.offload else copies * ctx.trainable * ctx.storage_bytes / ctx.devices
    }


# accelerate steps the DeepSpeed engine inside backward, before the penalty adds its gradient
AFTER_THE_STEP = Requires(
    deepspeed_problem="its gradient is added after the backward pass, where DeepSpeed has already stepped"
)


@REGULARIZERS.register("l2sp", L2SPConfig, requires=AFTER_THE_STEP, plan=anchor_plan(1))
def l2sp(config: L2SPConfig, model: torch.nn.Module, context: RegularizerContext) -> Penalty | None:
    """L2-SP: squared distance of the trainable tensors from the entering weights."""
    return Anchor(model, config.weight, offload=config.offload) if trainable_tensors(model) else None


def empirical_fisher(
    model: torch.nn.Module, examples: list[dict[str, Any]], collator: Any, batches: int, batch_size: int
) -> list[torch.Tensor]:
    """Diagonal empirical Fisher of the trainable tensors: the mean over ``batches`` batches of the
    squared gradient of the model's loss (dropout off: the Fisher of the model, not of a mask)."""
    params = [param for _, param in trainable_tensors(model)]
    fisher = [torch.zeros_like(param, dtype=torch.float32) for param in params]
    count = min(batches, math.ceil(len(examples) / batch_size))
    device = params[0].device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, count * batch_size, batch_size):
            batch = {k: v.to(device) for k, v in collator(examples[start : start + batch_size]).items()}
            grads = torch.autograd.grad(model(**batch).loss, params, allow_unused=True)
            for total, grad in zip(fisher, grads):
                if grad is not None:
                    total += grad.detach().float().pow(2)
    finally:
        model.train(was_training)
    return [total / count for total in fisher]


def fisher_cache_key(
    context: RegularizerContext, config: EWCConfig, names: list[str], examples: list[dict[str, Any]]
) -> str:
    used = examples[: config.batches * config.batch_size]
    payload = [
        context.model_key,
        names,
        config.batches,
        config.batch_size,
        [example.get("input_ids") for example in used],
        [example.get("labels") for example in used],
    ]
    return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()[:24]


def cached_fisher(path: Path, named: list[tuple[str, torch.nn.Parameter]]) -> list[torch.Tensor] | None:
    """The Fisher cached at ``path`` for exactly these tensors, or None."""
    from safetensors.torch import load_file

    cached = load_file(str(path)) if path.is_file() else None  # (safetensors returns its names sorted)
    if (
        cached is None
        or set(cached) != {name for name, _ in named}
        or any(cached[name].shape != param.shape for name, param in named)
    ):
        return None
    return [cached[name].to(param.device) for name, param in named]


@REGULARIZERS.register("ewc", EWCConfig, requires=AFTER_THE_STEP, example={"data": "d"}, plan=anchor_plan(2))
def ewc(config: EWCConfig, model: torch.nn.Module, context: RegularizerContext) -> Penalty | None:
    """EWC: squared distance from the entering weights, weighted by their diagonal Fisher."""
    from safetensors.torch import save_file

    named = trainable_tensors(model)
    if not named:
        return None
    examples = context.examples_of(config.data)
    if not examples or "input_ids" not in examples[0]:
        raise DataError(
            f"regularizer.data: dataset {config.data!r} gives no tokenized examples to compute the Fisher "
            "from (EWC needs text, instruction, chat, prompt_completion or classification rows)"
        )
    names = [name for name, _ in named]
    path = cache_dir() / "fisher" / f"{fisher_cache_key(context, config, names, examples)}.safetensors"
    fisher = cached_fisher(path, named) if is_main_process() else None
    if broadcast_from_main(fisher is not None):  # every rank takes the branch rank 0 takes
        fisher = fisher or cached_fisher(path, named)
        context.log(f"[ewc] Fisher of {len(names)} tensors from {path}")
    else:  # rank 0 computes and writes it once; the other ranks wait and read it
        if is_main_process():
            fisher = empirical_fisher(model, examples, context.collator, config.batches, config.batch_size)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            save_file({name: tensor.contiguous().cpu() for name, tensor in zip(names, fisher)}, str(partial))
            partial.replace(path)
        barrier()
        fisher = fisher or cached_fisher(path, named)
        if fisher is None:
            raise DataError(f"regularizer: the Fisher that rank 0 wrote to {path} cannot be read on this rank")
        context.log(f"[ewc] Fisher of {len(names)} tensors from {config.batches} batches of {config.data!r}")
    return Anchor(model, config.weight, fisher, offload=config.offload)
