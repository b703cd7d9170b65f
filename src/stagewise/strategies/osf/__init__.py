"""OSF — Orthogonal Subspace Fine-tuning, through PEFT's ``OSFConfig`` (peft >= 0.21).

Each target weight matrix is split by its SVD: the top ``effective_rank`` singular directions
(what the model relies on most) stay frozen, and training moves only the remaining low-rank
subspace, orthogonal to them — a continual-learning adapter that protects earlier knowledge.
The stage saves the merged weights (a plain ``save_pretrained`` folder), so the next stage, or
the next task of a sequence, decomposes the updated matrices afresh.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ...addons import is_peft_model, peft_task_type, train_addon
from ...errors import RecipeError
from ...protocols import Selection, SelectionContext
from ...registry import ADDONS, SELECTORS, PluginConfig, Requires, SelectorTraits

MARKER = "osf_svd_params"


class OSFSelectorConfig(PluginConfig):
    effective_rank: float | None = Field(default=None, gt=0)  # frozen rank: an int, or a fraction of min(shape);
    # None = half of each matrix's smaller dimension
    target: list[str] | Literal["all"] = "all"  # module names, or every linear layer


def _carries_osf(model: torch.nn.Module) -> bool:
    return is_peft_model(model) and "osf" in str(model.peft_config["default"].peft_type).lower()


@SELECTORS.register(
    "osf",
    OSFSelectorConfig,
    requires=Requires(plain_weights=True, sharded=False),
    traits=SelectorTraits(wraps_model=True),
)
def select_osf(model: torch.nn.Module, config: OSFSelectorConfig, context: SelectionContext) -> Selection:
    """Train each target matrix only in the subspace orthogonal to its top singular directions."""
    return Selection(model=train_addon(model, OSF, "osf", lambda: attach_osf(model, config)))


def attach_osf(model: torch.nn.Module, config: OSFSelectorConfig) -> torch.nn.Module:
    from peft import OSFConfig, get_peft_model

    rank: Any = (
        int(config.effective_rank)
        if config.effective_rank is not None and config.effective_rank >= 1
        else config.effective_rank
    )
    target = "all-linear" if config.target == "all" else config.target
    try:
        return get_peft_model(
            model, OSFConfig(effective_rank=rank, target_modules=target, task_type=peft_task_type(model))
        )
    except ValueError as err:
        raise RecipeError(f"trainable.target: {str(err).splitlines()[0]}") from None


class OSFAddOn:
    """Saved merged: the next stage decomposes the updated weights again."""

    marker = MARKER

    def attached(self, model: torch.nn.Module) -> bool:
        return _carries_osf(model)

    def for_saving(self, model: torch.nn.Module, selector: PluginConfig) -> torch.nn.Module:
        return model.merge_and_unload() if is_peft_model(model) else model

    def for_probe(self, model: torch.nn.Module, probe: Any, group: str) -> torch.nn.Module:
        return model


OSF = OSFAddOn()
ADDONS.register("osf")(OSF)
