"""HFT — Half Fine-Tuning (Hui et al. 2024, arXiv 2404.18466).

Inside every transformer block, a random half of the parameters train and the rest stay
frozen (bit-identical), so a fine-tune keeps much of what the block knew. The paper's
category-level selection (its best ablation):
- attention: exactly ``ratio`` of the projections (2 of q, k, v, o) train;
- MLP: over all blocks ``ratio`` of the matrices train — for a 3-matrix MLP (gate, up,
  down) a random half of the blocks train 2 and the other half 1; for 2-matrix MLPs
  (GPT-2, BERT) 1 of 2;
- norms: ``ratio`` of each block's norm modules;
- embeddings and the head (lm_head, final norm, classifier, pooler) train by default.
The mask is drawn from the stage seed at the start of each stage (SFT, then DPO, then
each continual task draws anew), or at the start of every epoch with ``redraw: per_epoch``.

GPT-2's fused ``c_attn`` (q, k and v in one Conv1D) cannot be half-frozen by
``requires_grad``; there the attention categories are ``c_attn`` and ``c_proj`` and one of
the two trains (documented fallback).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from transformers import TrainerCallback

from ...errors import RecipeError
from ...protocols import Selection, SelectionContext
from ...registry import SELECTORS, PluginConfig, Requires
from ...selection import set_trainable, transformer_blocks

ATTENTION_WORDS = ("attn", "attention")


class HFTConfig(PluginConfig):
    ratio: float = Field(default=0.5, gt=0, lt=1)  # fraction of each category that trains (paper: 0.5)
    redraw: Literal["per_stage", "per_epoch"] = "per_stage"
    granularity: Literal["category", "layer", "parameter"] = "category"
    train_embeddings: bool = True
    train_head: bool = True


@dataclass
class BlockParts:
    """One transformer block's selectable parts, each a list of (name, module)."""

    attention: list[tuple[str, torch.nn.Module]]
    mlp: list[tuple[str, torch.nn.Module]]
    norms: list[tuple[str, torch.nn.Module]]


def _is_matrix_module(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.nn.Parameter) and weight.dim() == 2 and not isinstance(module, torch.nn.Embedding)


def block_parts(model: torch.nn.Module) -> list[BlockParts]:
    """Attention / MLP matrices and norms of every block, found by module type and name."""
    _, blocks = transformer_blocks(model)
    parts = []
    for block in blocks:
        attention: list[tuple[str, torch.nn.Module]] = []
        mlp: list[tuple[str, torch.nn.Module]] = []
        norms: list[tuple[str, torch.nn.Module]] = []
        for name, module in block.named_modules():
            if _is_matrix_module(module) and not list(module.children()):
                (attention if any(w in name.lower() for w in ATTENTION_WORDS) else mlp).append((name, module))
            elif "norm" in type(module).__name__.lower() and getattr(module, "weight", None) is not None:
                norms.append((name, module))
        if not attention or not mlp:
            found = [f"{n}:{type(m).__name__}" for n, m in block.named_modules() if n][:12]
            raise RecipeError(
                f"HFT cannot find attention and MLP matrices in {type(block).__name__}; modules found: {found}"
            )
        parts.append(BlockParts(attention, mlp, norms))
    return parts


def _choose(rng: random.Random, items: list, count: int) -> list:
    return rng.sample(items, count)


def mlp_counts(n_blocks: int, n_matrices: int, ratio: float, rng: random.Random) -> list[int]:
    """How many MLP matrices train in each block: ``ratio * n_matrices`` on average over blocks.

    Each block trains floor(ratio*n) or one more; the blocks that get one more are a random
    ``frac(ratio*n)`` share. For ratio 0.5 and 3 matrices: half the blocks 2, half 1 (1.5 L).
    """
    exact = ratio * n_matrices
    base = math.floor(exact)
    extra = round((exact - base) * n_blocks)
    bonus = set(rng.sample(range(n_blocks), extra))
    return [base + (index in bonus) for index in range(n_blocks)]


def draw_mask(model: torch.nn.Module, config: HFTConfig, seed: int) -> list[torch.nn.Parameter]:
    """The parameters that train under HFT for this draw (same seed -> same mask, on every rank)."""
    rng = random.Random(seed)
    parts = block_parts(model)
    chosen: list[torch.nn.Module] = []
    if config.granularity == "layer":
        picked = set(rng.sample(range(len(parts)), max(1, round(config.ratio * len(parts)))))
        for index, block in enumerate(parts):
            if index in picked:
                chosen += [m for _, m in block.attention + block.mlp + block.norms]
    elif config.granularity == "parameter":
        matrices = [m for block in parts for _, m in block.attention + block.mlp]
        chosen += rng.sample(matrices, round(config.ratio * len(matrices)))
        norms = [m for block in parts for _, m in block.norms]
        chosen += rng.sample(norms, round(config.ratio * len(norms)))
    else:
        counts = mlp_counts(len(parts), len(parts[0].mlp), config.ratio, rng)
        for block, mlp_count in zip(parts, counts):
            chosen += [m for _, m in _choose(rng, block.attention, round(config.ratio * len(block.attention)))]
            chosen += [m for _, m in _choose(rng, block.mlp, mlp_count)]
            chosen += [m for _, m in _choose(rng, block.norms, round(config.ratio * len(block.norms)))]
    params = [p for module in chosen for p in module.parameters()]
    params += outer_parameters(model, config)
    return params


def outer_parameters(model: torch.nn.Module, config: HFTConfig) -> list[torch.nn.Parameter]:
    """Parameters outside the block stack: embeddings and/or head (incl. final norm, pooler)."""
    stack_name, _ = transformer_blocks(model)
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    chosen = []
    for name, param in model.named_parameters():
        if name.startswith(stack_name + "."):
            continue
        is_embedding = id(param) in embedding_ids or ".embeddings." in f".{name}"
        if (config.train_embeddings and is_embedding) or (config.train_head and not is_embedding):
            chosen.append(param)
    return chosen


def mask_seed(seed: int, stage_index: int, epoch: int = 0) -> int:
    """A distinct, reproducible draw per (stage seed, stage, epoch)."""
    return (seed * 1_000_003 + stage_index * 10_007 + epoch) % (2**31)


class RedrawEachEpoch(TrainerCallback):
    """``redraw: per_epoch``: every block parameter sits in the optimizer; at each epoch the
    frozen half gets ``requires_grad=False``, hence no gradient, so AdamW leaves it (and its
    weight decay) untouched for that epoch."""

    def __init__(self, model: torch.nn.Module, config: HFTConfig, context: SelectionContext) -> None:
        self.model, self.config, self.context = model, config, context

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = int(state.epoch or 0)
        set_trainable(
            self.model,
            draw_mask(self.model, self.config, mask_seed(self.context.seed, self.context.stage_index, epoch)),
        )


def _redraw_under_deepspeed(config: HFTConfig) -> str | None:
    if config.redraw == "per_epoch":
        return (
            "redraw: per_epoch freezes by withholding gradients, but ZeRO steps its flat partitions whole, "
            "so the frozen half keeps moving with Adam's momentum"
        )
    return None


@SELECTORS.register("hft", HFTConfig, requires=Requires(plain_weights=True, deepspeed_problem=_redraw_under_deepspeed))
def select_hft(model: torch.nn.Module, config: HFTConfig, context: SelectionContext) -> Selection | None:
    """Half Fine-Tuning: a random half of each block's attention/MLP/norm parameters train."""
    if config.redraw == "per_epoch":
        candidates = [
            p
            for block in block_parts(model)
            for _, m in block.attention + block.mlp + block.norms
            for p in m.parameters()
        ] + outer_parameters(model, config)
        set_trainable(model, candidates)  # the optimizer holds every candidate; each epoch masks by grad
        return Selection(callbacks=[RedrawEachEpoch(model, config, context)])
    set_trainable(model, draw_mask(model, config, mask_seed(context.seed, context.stage_index)))
    return None
