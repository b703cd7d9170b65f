"""Add-ons: trainable parts attached to a model through PEFT (LoRA adapters, soft prompts, ...).

A selector that wraps the model (``SelectorTraits.wraps_model``) attaches its add-on and trains
only it; under any other selector an attached add-on stays frozen, so ProMoT's stage 2 trains
the base and keeps the prompt bit-identical. The engine and the evaluator never name an
add-on: they ask each registered one (``ADDONS``) whether it is attached, which parameters are
its own, what to save, and which model scores a probe.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeGuard

import torch

from .errors import RecipeError
from .protocols import AddOn
from .registry import ADDONS

if TYPE_CHECKING:
    from peft import PeftModel

    from .registry import PluginConfig


def is_peft_model(model: torch.nn.Module) -> TypeGuard[PeftModel]:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merges_into_weights(model: torch.nn.Module) -> TypeGuard[PeftModel]:
    """An adapter whose weights merge into the base (LoRA and kin); a soft prompt does not (it is
    extra input, so a prompt-tuned model stays wrapped wherever it is used whole)."""
    return is_peft_model(model) and not model.active_peft_config.is_prompt_learning


def base_model_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside an add-on wrapper (itself when there is none)."""
    return model.get_base_model() if is_peft_model(model) else model


def output_embeddings(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The model's output embedding (its LM head, perhaps tied to the input embedding); None where it has none."""
    get = getattr(model, "get_output_embeddings", None)
    return get() if get is not None else None


@contextlib.contextmanager
def base_without_addon_layers(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The transformers model inside a PEFT wrapper with each adapter layer swapped back to the
    layer it wraps, for as long as the block runs: saved then, it is the plain base (quantized
    bases too, whose own serializer ignores a filtered state dict)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = base_model_of(model)
    swaps = [
        (base.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2], module)
        for name, module in base.named_modules()
        if isinstance(module, BaseTunerLayer) and isinstance(getattr(module, "base_layer", None), torch.nn.Module)
    ]
    try:
        for parent, attribute, module in swaps:
            setattr(parent, attribute, getattr(module, "base_layer"))
        yield base
    finally:
        for parent, attribute, module in swaps:
            setattr(parent, attribute, module)


def peft_task_type(model: torch.nn.Module) -> str:
    return "SEQ_CLS" if "ForSequenceClassification" in type(model).__name__ else "CAUSAL_LM"


def train_addon(
    model: torch.nn.Module, addon: AddOn, kind: str, attach: Callable[[], torch.nn.Module]
) -> torch.nn.Module:
    """An add-on selector's common part: reuse the add-on carried from an earlier stage (or
    refuse a different one), else ``attach()`` a new one; then only the add-on's tensors train."""
    if is_peft_model(model):
        if not addon.attached(model):
            raise RecipeError(f"trainable: {kind} on a model that already carries a different adapter")
        wrapped: torch.nn.Module = model
    else:
        wrapped = attach()
    for name, param in wrapped.named_parameters():
        param.requires_grad_(addon.marker in name)
    return wrapped


def attached_addons(model: torch.nn.Module) -> list[AddOn]:
    return [entry.impl for entry in ADDONS.entries() if entry.impl.attached(model)]


def is_addon_parameter(name: str) -> bool:
    return any(entry.impl.marker in name for entry in ADDONS.entries())


def addon_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters of every attached add-on."""
    return [p for n, p in model.named_parameters() if is_addon_parameter(n)]


def model_to_save(model: torch.nn.Module, selector: PluginConfig) -> torch.nn.Module:
    for addon in attached_addons(model):
        model = addon.for_saving(model, selector)
    return model


def model_for_probe(model: torch.nn.Module, probe: Any, group: str) -> torch.nn.Module:
    for addon in attached_addons(model):
        model = addon.for_probe(model, probe, group)
    return model
