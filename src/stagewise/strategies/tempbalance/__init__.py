"""TempBalance — per-layer learning rates from each weight matrix's spectrum.

Zhou et al. NeurIPS 2023 ("Temperature Balancing, Layer-wise Weight Analysis, and Neural
Network Training") with the linear map, and Liu et al. EMNLP 2024 ("Model Balancing Helps
Low-data Training and Fine-tuning") with the block-wise sigmoid map. Every eligible matrix
(≥ ``min_eigs`` eigenvalues) gets its own optimizer group whose LR is ``η_t · multiplier``:
the multiplier sits in the group's initial LR, so HF's scheduler (warmup, cosine, ...) keeps
scaling it. Alphas are recomputed every ``esd_interval`` steps (default: each epoch) and the
new multipliers are applied to the scheduler's base LRs and the current groups at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, cast

import torch
from pydantic import Field
from transformers import TrainerCallback

from ...distributed import broadcast_from_main, is_main_process
from ...io import save_figure
from ...protocols import LrPlan, LrRuleContext
from ...registry import LR_RULES, PluginConfig, Requires
from ...selection import transformer_blocks
from ...sharding import gathered
from ...written import Written
from .esd import block_sigmoid_multipliers, eigenvalues, hill_alpha, linear_multipliers


class TempBalanceConfig(PluginConfig):
    lr_map: Literal["linear", "block_sigmoid"] = "linear"
    xmin_pos: float = Field(default=2.0, gt=1)  # 2 = median (NeurIPS'23); EMNLP'24 GLUE used 1.5
    min_eigs: int = Field(default=50, ge=2)  # fewer eigenvalues: no reliable fit, keep the base LR
    skip_first_last: bool = True  # reference default (remove_first_layer/remove_last_layer): the first
    # and last weight matrix in module order keep the base LR
    s1: float = 0.5  # linear map: LR multiplier at the lowest alpha
    s2: float = 1.5  # linear map: LR multiplier at the highest alpha
    s_min: float = 2.0  # block_sigmoid: scale for blocks below the mean alpha
    s_max: float = 1.0  # block_sigmoid: scale for blocks above the mean alpha
    temperature: float = 10.0  # block_sigmoid: T
    esd_interval: int | None = Field(default=None, ge=1)  # steps between recomputations (Model Balancing's
    # reference: 100); None = at each epoch's start


def matrix_modules(model: torch.nn.Module, config: TempBalanceConfig) -> dict[str, torch.nn.Module]:
    """The weight matrices that get their own LR, in module order, by the reference's rule
    (``Tempbalance.build_optimizer_param_group``): every linear/conv layer (embeddings are not
    layers), the first and the last dropped when ``skip_first_last`` (on a causal LM the last is
    the LM head, tied to the embedding; on BERT the classifier, not the pooler), then those with
    fewer than ``min_eigs`` eigenvalues. Frozen matrices (another selector's choice) keep no group."""
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "weight", None), torch.nn.Parameter)
        and module.weight.dim() >= 2
        and not isinstance(module, torch.nn.Embedding)
    ]
    if config.skip_first_last:
        layers = layers[1:-1]
    return {
        name: module
        for name, module in layers
        if module.weight.requires_grad and min(module.weight.shape[:2]) >= config.min_eigs
    }


def layer_alphas(model: torch.nn.Module, config: TempBalanceConfig) -> dict[str, float]:
    """Each matrix's alpha. Sharded: every rank gathers one matrix at a time, rank 0 alone computes
    its spectrum, and the alphas are sent to every rank (all ranks then set the same LRs)."""
    alphas = {}
    for name, module in matrix_modules(model, config).items():
        weight = gathered(cast(torch.Tensor, module.weight))
        if is_main_process():
            alphas[name] = hill_alpha(eigenvalues(weight), config.xmin_pos)
    return broadcast_from_main(alphas)


def plot_alphas(alphas: dict[str, float], path: Path, title: str) -> None:
    """Alpha per matrix in module order (the ``stagewise spectra`` figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, len(alphas) * 0.06), 3.5), dpi=120)
    ax.plot(range(len(alphas)), list(alphas.values()), marker=".", linewidth=0.8)
    ax.set_xlabel("weight matrix (module order)")
    ax.set_ylabel("Hill alpha")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def block_of(name: str, stack: str) -> int | None:
    if not name.startswith(stack + "."):
        return None
    return int(name[len(stack) + 1 :].split(".")[0])


class TempBalance:
    """Owns the param-group layout and the multipliers for one stage."""

    def __init__(self, model: torch.nn.Module, config: TempBalanceConfig, context: LrRuleContext) -> None:
        self.model, self.config, self.base_lr = model, config, context.base_lr
        self.stack = transformer_blocks(model)[0] if config.lr_map == "block_sigmoid" else ""
        self.log_path: Path | None = None
        self.alphas: dict[str, float] = {}
        self.eligible: set[str] = set()

    def group_key(self, module_name: str) -> str | None:
        """Which multiplier a module's parameters follow (None: the base LR)."""
        if self.config.lr_map == "block_sigmoid":
            block = block_of(module_name, self.stack)
            return None if block is None else f"block.{block}"
        return module_name if module_name in self.eligible else None

    def multipliers(self) -> dict[str, float]:
        self.alphas = layer_alphas(self.model, self.config)
        if self.config.lr_map == "linear":
            return linear_multipliers(self.alphas, self.config.s1, self.config.s2)
        per_block: dict[int, list[float]] = {}
        for name, alpha in self.alphas.items():
            block = block_of(name, self.stack)
            if block is not None:
                per_block.setdefault(block, []).append(alpha)
        means = {block: sum(values) / len(values) for block, values in per_block.items()}
        return {
            f"block.{block}": m
            for block, m in block_sigmoid_multipliers(
                means, self.config.s_min, self.config.s_max, self.config.temperature
            ).items()
        }

    def split_groups(self, model: torch.nn.Module, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Split the Trainer's decay/no-decay groups into one group per (multiplier key, decay)."""
        self.eligible = set(matrix_modules(model, self.config))
        owner = {id(p): name for name, module in model.named_modules() for p in module.parameters(recurse=False)}
        multipliers = self.multipliers()
        split: list[dict[str, Any]] = []
        for group in groups:
            buckets: dict[str | None, list[torch.nn.Parameter]] = {}
            for param in group["params"]:
                buckets.setdefault(self.group_key(owner.get(id(param), "")), []).append(param)
            for key, params in buckets.items():
                split.append(
                    {
                        **group,
                        "params": params,
                        "tb_key": key,
                        "lr": self.base_lr * multipliers.get(key, 1.0) if key else self.base_lr,
                    }
                )
        return split

    def apply(self, optimizer: torch.optim.Optimizer, scheduler: Any, step: int) -> None:
        """Recompute alphas and move every group's LR to η_t · new multiplier."""
        multipliers = self.multipliers()
        scale = scheduler.lr_lambdas[0](scheduler.last_epoch) if hasattr(scheduler, "lr_lambdas") else 1.0
        lrs = {}
        for index, group in enumerate(optimizer.param_groups):
            key = group.get("tb_key")
            base = self.base_lr * multipliers.get(key, 1.0) if key else self.base_lr
            group["initial_lr"] = base
            if hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs[index] = base
            group["lr"] = base * scale
            if key:
                lrs[key] = group["lr"]
        self.log(step, lrs)

    def log(self, step: int, lrs: dict[str, float]) -> None:
        if self.log_path is None:
            return
        Written(self.log_path.parent).record(self.log_path.name)  # every rank: it may start the stage (a barrier)
        if is_main_process():
            with self.log_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "alpha": self.alphas, "lr": lrs}) + "\n")


class TempBalanceCallback(TrainerCallback):
    """Re-applies spectrum-based LRs every ``esd_interval`` steps or at each epoch start."""

    def __init__(self, balance: TempBalance) -> None:
        self.balance = balance
        self.last_step = -1

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self.balance.log_path = Path(args.output_dir) / "tempbalance.jsonl"
        lrs = {g["tb_key"]: g["lr"] for g in optimizer.param_groups if g.get("tb_key")} if optimizer else {}
        self.balance.log(state.global_step, lrs)
        # resumed from a checkpoint written at an epoch's end: the uninterrupted run recomputed at the
        # next epoch's start, after that checkpoint was saved, so the resumed run must do it too
        at_epoch_end = state.global_step > 0 and state.epoch is not None and float(state.epoch).is_integer()
        self.last_step = -1 if at_epoch_end and self.balance.config.esd_interval is None else state.global_step

    def _maybe_apply(self, state, optimizer, lr_scheduler) -> None:
        if optimizer is not None and lr_scheduler is not None and state.global_step != self.last_step:
            self.balance.apply(optimizer, lr_scheduler, state.global_step)
            self.last_step = state.global_step

    def on_epoch_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if self.balance.config.esd_interval is None:
            self._maybe_apply(state, optimizer, lr_scheduler)

    def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        interval = self.balance.config.esd_interval
        if interval is not None and state.global_step % interval == 0:
            self._maybe_apply(state, optimizer, lr_scheduler)


@LR_RULES.register("tempbalance", TempBalanceConfig, requires=Requires(plain_weights=True))
def tempbalance(config: TempBalanceConfig, model: torch.nn.Module, context: LrRuleContext) -> LrPlan:
    """Per-layer LRs from each matrix's spectral power-law exponent (TempBalance)."""
    balance = TempBalance(model, config, context)
    return LrPlan(split_groups=balance.split_groups, callbacks=[TempBalanceCallback(balance)])
