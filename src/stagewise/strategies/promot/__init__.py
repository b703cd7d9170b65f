"""ProMoT — prompt tuning with model tuning (Wang et al. ICLR 2024, arXiv 2211.00635).

Fine-tuning on one task makes a model specialise to that task's *format* and lose in-context
ability on others. ProMoT's stage 1 tunes a soft prompt (Lester et al. 2021, through PEFT)
with the model frozen, so the prompt absorbs the format (``trainable: prompt``); stage 2 tunes
the model with that prompt attached and frozen (``trainable: full``: the soft prompt is an
add-on, and add-ons train only under their own selector). At inference the prompt is used for
the fine-tuned task and removed for every other task: the add-on's probe rule below (a probe's
``addon: auto|always|never``; ``auto`` = attached for target probes only).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ...addons import base_model_of, is_peft_model, peft_task_type, train_addon
from ...errors import RecipeError
from ...protocols import Selection, SelectionContext
from ...registry import ADDONS, SELECTORS, PluginConfig, Requires, SelectorTraits

MARKER = "prompt_encoder"


class PromptSelectorConfig(PluginConfig):
    num_virtual_tokens: int = Field(default=20, ge=1)  # ProMoT paper: 100 on large models
    init: Literal["sample_vocab", "random", "text"] = "sample_vocab"
    init_text: str | None = None


def _carries_prompt(model: torch.nn.Module) -> bool:
    return is_peft_model(model) and model.peft_config["default"].is_prompt_learning


@SELECTORS.register(
    "prompt", PromptSelectorConfig, requires=Requires(sharded=False), traits=SelectorTraits(wraps_model=True)
)
def select_prompt(model: torch.nn.Module, config: PromptSelectorConfig, context: SelectionContext) -> Selection:
    """Soft prompt tuning: virtual token embeddings prepended to every input; only they train."""
    return Selection(model=train_addon(model, SOFT_PROMPT, "prompt", lambda: attach_prompt(model, config, context)))


def attach_prompt(model: torch.nn.Module, config: PromptSelectorConfig, context: SelectionContext) -> torch.nn.Module:
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    if config.init == "text" and not config.init_text:
        raise RecipeError("trainable.init_text: required when init is 'text'")
    name_or_path = getattr(model.config, "_name_or_path", None)
    peft_config = PromptTuningConfig(
        task_type=peft_task_type(model),
        num_virtual_tokens=config.num_virtual_tokens,
        prompt_tuning_init={
            "sample_vocab": PromptTuningInit.SAMPLE_VOCAB,
            "random": PromptTuningInit.RANDOM,
            "text": PromptTuningInit.TEXT,
        }[config.init],
        prompt_tuning_init_text=config.init_text,
        tokenizer_name_or_path=name_or_path if config.init == "text" else None,
    )
    torch.manual_seed(context.seed)
    return get_peft_model(model, peft_config)


class SoftPromptAddOn:
    """ProMoT's inference rule: the prompt is attached for the fine-tuned task (target probes)
    and removed for other tasks (retention probes); ``always``/``never`` force it. The bare
    model is the very base object inside the wrapper, so 'never' equals the bare model."""

    marker = MARKER

    def attached(self, model: torch.nn.Module) -> bool:
        return _carries_prompt(model)

    def for_saving(self, model: torch.nn.Module, selector: PluginConfig) -> torch.nn.Module:
        return model

    def for_probe(self, model: torch.nn.Module, probe: Any, group: str) -> torch.nn.Module:
        attach = probe.addon == "always" or (probe.addon == "auto" and group == "target")
        return model if attach else base_model_of(model)


SOFT_PROMPT = SoftPromptAddOn()
ADDONS.register("prompt")(SOFT_PROMPT)
