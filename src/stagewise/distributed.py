"""One code path for one process or many (``torchrun`` / ``accelerate launch``).

A single process is rank 0 of 1. Under a launcher the process group is started through
accelerate (the state the HF Trainer uses as well) as soon as a run begins, so steps that
come before the first Trainer (distillation, categorization, evaluation) can already shard.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 1800  # transformers' ddp_timeout default; NCCL's own is 10 minutes


def init_from_launcher(timeout_s: int = DEFAULT_TIMEOUT_S) -> None:
    """Start the process group when launched with several processes (``WORLD_SIZE`` > 1), with the
    collective timeout the Trainer uses too (``distributed.timeout_s``): the group is made here, before
    the Trainer, so the Trainer's ``ddp_timeout`` alone would never reach it, and what rank 0 does alone
    while the others wait (an EWC Fisher, spectra, hashing a large model) needs it."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (dist.is_available() and dist.is_initialized()):
        from datetime import timedelta

        from accelerate import PartialState

        PartialState(timeout=timedelta(seconds=timeout_s))


def local_device() -> torch.device:
    """This rank's accelerator (``cuda:LOCAL_RANK``), else the CPU: where a loaded model goes, so
    evaluation and generation before the first Trainer do not run on the CPU of a GPU machine."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_size() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if _active() else (0, 1)


def is_main_process() -> bool:
    """Rank 0 writes files; before the process group exists, the launcher's RANK says who that is."""
    return dist.get_rank() == 0 if _active() else int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    if _active():
        dist.barrier()


def main_decides(check: Callable[[], T]) -> T | None:
    """Run ``check`` on rank 0 alone and return what it returns there (None on the other ranks); the
    one-line error it raises, if any, is raised on every rank (so under torchrun no rank waits at a
    collective for a rank that stopped, nor prints a traceback)."""
    from . import errors

    value, failure = None, None
    if is_main_process():
        try:
            value = check()
        except errors.StagewiseError as err:
            failure = (type(err).__name__, str(err))
    failure = broadcast_from_main(failure)
    if failure is not None:
        raise getattr(errors, failure[0], errors.StagewiseError)(failure[1])
    return value


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (so all ranks take the same branch)."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_ordered(shard: dict[int, Any], total: int) -> list[Any]:
    """Every rank's ``{index: result}`` shard merged into one list in index order, on every rank."""
    if not _active():
        return [shard[i] for i in range(total)]
    parts: list[dict[int, Any]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, shard)
    merged = {index: result for part in parts for index, result in part.items()}
    return [merged[i] for i in range(total)]
