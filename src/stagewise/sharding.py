"""FSDP2 sharding, applied by the engine (``distributed: {fsdp: true}`` under torchrun).

Each stage selects its trainable tensors on the plain model, then ``fully_shard`` wraps every
decoder block and the root over a device mesh of all ranks (gloo on CPUs, NCCL on GPUs): a
parameter becomes a ``DTensor`` whose ``to_local()`` is this rank's shard. The same code runs in
the CPU tests and on GPUs (accelerate refuses FSDP on CPUs, so stagewise does not go through its
plugin). The Trainer sees an already sharded model (no DDP wrap); checkpoints gather full state
dicts (rank 0 writes them, every rank reads them back). When a stage ends, its full weights are
saved and every rank reloads them as a plain model, so merges, evaluation, generation and the next
stage's selector work on whole tensors as without sharding.

This module is the one place that knows what a shard is: :func:`gathered` (a tensor, whole) and
:func:`shaped_like` (a whole tensor, laid out as a parameter is).
"""
from __future__ import annotations

import os
from typing import Any

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


def shaped_like(whole: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """``whole`` laid out as ``parameter`` is: its local shard when the parameter is sharded
    (every rank holds ``whole``, so each takes its own slice without communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(parameter, DTensor):
        return whole
    return distribute_tensor(whole.to(parameter.device), parameter.device_mesh, parameter.placements,
                             src_data_rank=None)


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """``fully_shard`` on every decoder block (the class transformers marks unsplittable when it
    does, else the repeated block of the stack), then on the root."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from .addons import base_model_of
    from .selection import transformer_blocks

    base = base_model_of(model)
    _, blocks = transformer_blocks(base)
    unsplit = set(getattr(base, "_no_split_modules", None) or [])
    kind = type(blocks[0]).__name__
    if unsplit and kind not in unsplit:
        raise RecipeError(f"distributed.fsdp: the repeated block {kind} of {type(base).__name__} is not one of its "
                          f"unsplittable modules ({', '.join(sorted(unsplit))}); cannot choose shard units")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device, (dist.get_world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on rank 0 (on the CPU), empty elsewhere; every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Whole tensors (held by every rank) into a sharded model, each rank keeping its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole state on rank 0, empty elsewhere; every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                cpu_offload=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
