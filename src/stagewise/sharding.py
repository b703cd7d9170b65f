"""FSDP2 sharding, applied by the engine (``distributed: {fsdp: true}`` under torchrun).

Each stage selects its trainable tensors on the plain model, then ``fully_shard`` wraps every
decoder block and the root over a device mesh of all ranks (gloo on CPUs, NCCL on GPUs): a
parameter becomes a ``DTensor`` whose ``to_local()`` is this rank's shard. The same code runs in
the CPU tests and on GPUs (accelerate refuses FSDP on CPUs, so stagewise does not go through its
plugin). The Trainer sees an already sharded model (no DDP wrap); checkpoints gather full state
dicts (rank 0 writes them, every rank reads them back). When a stage ends, its full weights are
saved and every rank reloads them as a plain model, so merges, evaluation, generation and the next
stage's selector work on whole tensors as without sharding.

This module is the one place that knows what a shard is: :func:`gathered` (a tensor, whole),
:func:`local` (this rank's part of it) and :func:`local_shard` (a whole tensor, cut as a parameter is).

Precision: FSDP2 gathers one dtype per shard unit, so under mixed precision every weight is held
in fp32 while sharded (4 bytes per parameter divided by the number of ranks) and FSDP2's
``MixedPrecisionPolicy`` gathers it in the compute dtype, with gradients reduced in fp32.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, cast

import torch

from .errors import RecipeError


def wants_sharding(recipe: Any) -> bool:
    """FSDP asked for, with more than one process."""
    return bool(recipe.distributed.fsdp) and int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def gathered(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor (every rank must call this for a sharded one: it is a collective)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor`` as a plain tensor sharing its storage (the tensor itself when
    it is not sharded): in-place changes to it change the sharded tensor."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def local_shard(whole: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """This rank's slice of ``whole``, cut as ``parameter`` is sharded (``whole`` itself for a plain
    parameter). Every rank holds ``whole``, so no data moves between ranks."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(parameter, DTensor):
        return whole
    return distribute_tensor(whole, parameter.device_mesh, parameter.placements, src_data_rank=None).to_local()


def sum_over_ranks(value: float) -> float:
    """A per-rank partial sum, summed over every rank (a collective when the process group runs)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return value
    total = torch.tensor([value], dtype=torch.float64, device="cuda" if torch.cuda.is_available() else "cpu")
    dist.all_reduce(total)
    return float(total.item())


def shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """One shard unit per decoder block: the block class transformers marks unsplittable
    (``_no_split_modules``) when it does, else the repeated block of the stack. One line when neither
    is found."""
    from .addons import base_model_of
    from .selection import transformer_blocks

    base = base_model_of(model)
    try:
        _, blocks = transformer_blocks(base)
    except RecipeError as err:
        raise RecipeError(f"distributed.fsdp: {err}") from None
    unsplit = set(getattr(base, "_no_split_modules", None) or [])
    kind = type(blocks[0]).__name__
    if unsplit and kind not in unsplit:
        raise RecipeError(
            f"distributed.fsdp: the repeated block {kind} of {type(base).__name__} is not one of its "
            f"unsplittable modules ({', '.join(sorted(unsplit))}); cannot choose shard units"
        )
    return list(blocks)


def check_shardable(recipe: Any) -> None:
    """With ``distributed.fsdp``: one line (before anything trains) when the model has no decoder
    blocks to shard, read from its config on the meta device. A config that cannot be read offline
    is checked when the model loads."""
    if not recipe.distributed.fsdp:
        return
    from .plan import load_model_config, meta_model

    try:
        config = load_model_config(recipe.model)
    except RecipeError:
        return
    shard_units(meta_model(config, recipe.model.task, torch.float32))


def shard_model(model: torch.nn.Module, compute_dtype: torch.dtype, reshard_after_forward: bool = True) -> None:
    """``fully_shard`` every decoder block, then the root, over a mesh of all ranks (in place: the
    modules and parameter names stay, each parameter becomes a ``DTensor`` holding this rank's
    shard; ``requires_grad`` is kept per parameter). Transformers' Trainer is told the model is
    already placed and sharded, so it neither moves it nor wraps it in DDP."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    units = shard_units(model)
    policy = MixedPrecisionPolicy()
    if compute_dtype != torch.float32 and any(p.dtype == torch.float32 for p in model.parameters()):
        for param in model.parameters():  # mixed precision: one dtype per unit, fp32 masters
            if param.is_floating_point() and param.dtype != torch.float32:
                param.data = param.data.float()
        policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (dist.get_world_size(),))
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    setattr(model, "_is_distributed_loading_by_transformers", True)  # read by the Trainer (transformers >= 5.2x)


def full_state_dict(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The whole state dict on rank 0 (on the CPU; floating tensors cast to ``dtype`` when given),
    empty elsewhere; every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = cast(
        dict[str, torch.Tensor],
        get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)),
    )
    if dtype is None:
        return state
    return {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in state.items()}


def load_full_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Whole tensors (held by every rank) into a sharded model, each rank keeping its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, dict(state), options=StateDictOptions(full_state_dict=True, strict=False))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole state on rank 0, empty elsewhere; every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
