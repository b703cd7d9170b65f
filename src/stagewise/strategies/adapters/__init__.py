"""PEFT add-ons as trainable selectors: LoRA (Hu et al. 2021) and soft prompt tuning
(Lester et al. 2021), built with the ``peft`` library.

The selector attaches the add-on (or reuses the one carried from an earlier stage) and
trains only it. The stage folder then holds the base model (``save_pretrained``) and the
add-on under ``adapter/``, so ``PeftModel.from_pretrained(AutoModel...(stage), stage/"adapter")``
restores it with plain transformers + peft.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from ...errors import RecipeError
from ...registry import SELECTORS, PluginConfig
from ...selection import Selection, SelectionContext, is_peft_model, set_trainable

def _task_type(model: torch.nn.Module) -> str:
    return "SEQ_CLS" if "ForSequenceClassification" in type(model).__name__ else "CAUSAL_LM"


class LoraSelectorConfig(PluginConfig):
    acts_on_wrapper: ClassVar[bool] = True
    lora_rank: int = Field(default=8, ge=1)                 # LLaMA-Factory's key; paper/PEFT default r=8
    lora_alpha: float | None = None                         # default 2 x rank (LLaMA-Factory)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    lora_target: list[str] | Literal["all"] = "all"         # module names, or every linear layer
    merge_on_save: bool = False                             # save (and carry on) merged weights instead of an adapter


class PromptSelectorConfig(PluginConfig):
    acts_on_wrapper: ClassVar[bool] = True
    num_virtual_tokens: int = Field(default=20, ge=1)       # ProMoT paper: 100 on large models
    init: Literal["sample_vocab", "random", "text"] = "sample_vocab"
    init_text: str | None = None


@SELECTORS.register("lora", LoraSelectorConfig)
def select_lora(model: torch.nn.Module, config: LoraSelectorConfig, context: SelectionContext) -> Selection:
    """Low-rank adapters on the target modules; only the adapters train."""
    from peft import LoraConfig, get_peft_model

    if is_peft_model(model):
        if "lora" not in str(model.peft_config["default"].peft_type).lower():
            raise RecipeError("trainable: lora on a model that already carries a different adapter")
        wrapped = model
    else:
        target = "all-linear" if config.lora_target == "all" else config.lora_target
        peft_config = LoraConfig(
            r=config.lora_rank, lora_alpha=config.lora_alpha or 2 * config.lora_rank,
            lora_dropout=config.lora_dropout, target_modules=target, task_type=_task_type(model),
        )
        torch.manual_seed(context.seed)
        try:
            wrapped = get_peft_model(model, peft_config)
        except ValueError as err:
            raise RecipeError(f"trainable.lora_target: {str(err).splitlines()[0]}") from None
    set_trainable(wrapped, [p for n, p in wrapped.named_parameters() if "lora_" in n])
    return Selection(model=wrapped)


@SELECTORS.register("prompt", PromptSelectorConfig)
def select_prompt(model: torch.nn.Module, config: PromptSelectorConfig, context: SelectionContext) -> Selection:
    """Soft prompt tuning: virtual token embeddings prepended to every input; only they train."""
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    if is_peft_model(model):
        if not model.peft_config["default"].is_prompt_learning:
            raise RecipeError("trainable: prompt on a model that already carries a different adapter")
        wrapped = model
    else:
        if config.init == "text" and not config.init_text:
            raise RecipeError("trainable.init_text: required when init is 'text'")
        name_or_path = getattr(model.config, "_name_or_path", None)
        peft_config = PromptTuningConfig(
            task_type=_task_type(model), num_virtual_tokens=config.num_virtual_tokens,
            prompt_tuning_init={"sample_vocab": PromptTuningInit.SAMPLE_VOCAB, "random": PromptTuningInit.RANDOM,
                                "text": PromptTuningInit.TEXT}[config.init],
            prompt_tuning_init_text=config.init_text, tokenizer_name_or_path=name_or_path if config.init == "text" else None,
        )
        torch.manual_seed(context.seed)
        wrapped = get_peft_model(model, peft_config)
    set_trainable(wrapped, [p for n, p in wrapped.named_parameters() if "prompt_encoder" in n])
    return Selection(model=wrapped)
