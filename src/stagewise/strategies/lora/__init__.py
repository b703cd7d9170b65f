"""LoRA (Hu et al. 2021) through PEFT: low-rank adapters on the target modules; only they train.

The selector attaches the adapter (or reuses the one carried from an earlier stage). The stage
folder then holds the base model (``save_pretrained``) and the adapter under ``adapter/``, so
``PeftModel.from_pretrained(AutoModel...(stage), stage/"adapter")`` restores it with plain
transformers + peft; ``merge_on_save`` saves (and hands on) the merged weights instead.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ...addons import is_peft_model, peft_task_type
from ...errors import RecipeError
from ...registry import ADDONS, SELECTORS, PluginConfig, SelectorTraits
from ...selection import Selection, SelectionContext, set_trainable

MARKER = "lora_"


class LoraSelectorConfig(PluginConfig):
    lora_rank: int = Field(default=8, ge=1)                 # LLaMA-Factory's key; paper/PEFT default r=8
    lora_alpha: float | None = None                         # default 2 x rank (LLaMA-Factory)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    lora_target: list[str] | Literal["all"] = "all"         # module names, or every linear layer
    merge_on_save: bool = False                             # save (and carry on) merged weights instead of an adapter


def _carries_lora(model: torch.nn.Module) -> bool:
    return is_peft_model(model) and "lora" in str(model.peft_config["default"].peft_type).lower()


@SELECTORS.register("lora", LoraSelectorConfig, traits=SelectorTraits(wraps_model=True))
def select_lora(model: torch.nn.Module, config: LoraSelectorConfig, context: SelectionContext) -> Selection:
    """Low-rank adapters on the target modules; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    if is_peft_model(model):
        if not _carries_lora(model):
            raise RecipeError("trainable: lora on a model that already carries a different adapter")
        wrapped = model
    else:
        target = "all-linear" if config.lora_target == "all" else config.lora_target
        peft_config = LoraConfig(
            r=config.lora_rank, lora_alpha=config.lora_alpha or 2 * config.lora_rank,
            lora_dropout=config.lora_dropout, target_modules=target, task_type=peft_task_type(model),
        )
        torch.manual_seed(context.seed)
        try:
            wrapped = get_peft_model(model, peft_config)
        except ValueError as err:
            raise RecipeError(f"trainable.lora_target: {str(err).splitlines()[0]}") from None
    set_trainable(wrapped, [p for n, p in wrapped.named_parameters() if MARKER in n])
    return Selection(model=wrapped)


class LoraAddOn:
    """LoRA layers live inside the base model's modules: they score every probe."""

    marker = MARKER

    def attached(self, model: torch.nn.Module) -> bool:
        return _carries_lora(model)

    def for_saving(self, model: torch.nn.Module, selector: PluginConfig) -> torch.nn.Module:
        merge = isinstance(selector, LoraSelectorConfig) and selector.merge_on_save
        return model.merge_and_unload() if merge else model

    def for_probe(self, model: torch.nn.Module, probe: Any, group: str) -> torch.nn.Module:
        if probe.addon == "never":
            raise RecipeError(f"evaluation {probe.name!r}: addon: never cannot detach LoRA layers "
                              "(they are inside the model); use merge_on_save or drop the key")
        return model


ADDONS.register("lora")(LoraAddOn())
