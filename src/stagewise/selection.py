"""Trainable-parameter selectors: which tensors a stage updates.

A selector sets ``requires_grad`` on every parameter; the Trainer then builds its
optimizer over trainable tensors only, so frozen tensors get no gradient, no
optimizer state and no weight decay: they stay bit-identical.
Strategies register more selectors in their folders.

Selectors see the plain transformers model; an attached add-on (adapter, soft prompt) stays
frozen unless the stage's selector is one that wraps the model (``SelectorTraits.wraps_model``),
so a ``full`` stage on a model carrying a prompt trains the base and keeps the prompt
bit-identical (see ``addons``). A selector may return a :class:`Selection`.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable, cast

import torch
from pydantic import Field

from .addons import addon_parameters, base_model_of, output_embeddings
from .errors import RecipeError
from .protocols import Selection, SelectionContext
from .registry import SELECTORS, PluginConfig, Requires

PLAIN = Requires(plain_weights=True)  # trains base weight matrices: not on a quantized base


def apply_selector(
    model: torch.nn.Module, config: PluginConfig, context: SelectionContext
) -> tuple[torch.nn.Module, list[Any]]:
    """Run a stage's selector; returns the (possibly newly wrapped) model and its callbacks."""
    set_trainable(model, [])
    entry = SELECTORS.get(config.kind)
    target = model if entry.traits.wraps_model else base_model_of(model)
    selection = entry.impl(target, config, context) or Selection()
    model = selection.model or model
    if not entry.traits.wraps_model:
        for param in addon_parameters(model):  # adapter layers may live inside the base model: keep them frozen
            param.requires_grad_(False)
    return model, selection.callbacks


def transformer_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The model's stack of transformer blocks: the longest ModuleList of same-type modules.

    Works for Llama/Qwen/SmolLM (``model.layers``), GPT-2 (``transformer.h``) and BERT
    (``encoder.layer``) without a per-architecture table.
    """
    best: tuple[str, torch.nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            if len({type(child) for child in module}) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        kinds = sorted({type(m).__name__ for m in model.modules()})[:12]
        raise RecipeError(f"cannot find the transformer blocks of {type(model).__name__}; modules found: {kinds}")
    return best


def head_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Task head: everything outside the base model (lm_head, classifier, score), plus a tied output embedding."""
    prefix = getattr(model, "base_model_prefix", "")
    params = [p for n, p in model.named_parameters() if prefix and not n.startswith(prefix + ".")]
    output = output_embeddings(model)
    if output is not None and all(output.weight is not p for p in params):
        params.append(cast(torch.nn.Parameter, output.weight))
    if not params:
        raise RecipeError(f"cannot find a head in {type(model).__name__} (no parameter outside {prefix!r})")
    return params


def set_trainable(model: torch.nn.Module, trainable: list[torch.nn.Parameter] | None) -> None:
    """Freeze everything, then unfreeze ``trainable`` (``None`` = everything)."""
    chosen = None if trainable is None else {id(p) for p in trainable}
    for param in model.parameters():
        param.requires_grad_(chosen is None or id(param) in chosen)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) element counts, shared tensors counted once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


class HeadConfig(PluginConfig):
    top_layers: int = Field(default=0, ge=0)  # also train this many top transformer blocks
    pooler: bool = False  # also train the encoder's pooler (BERT), as LP-FT's reference does


class LayersConfig(PluginConfig):
    indices: list[int] = Field(min_length=1)
    with_head: bool = True


class ModulesConfig(PluginConfig):
    patterns: list[str] = Field(min_length=1)


@SELECTORS.register("full", requires=PLAIN)
def select_full(model: torch.nn.Module, config: PluginConfig, context: SelectionContext) -> None:
    """Train every parameter (plain full fine-tuning)."""
    set_trainable(model, None)


@SELECTORS.register("none")
def select_none(model: torch.nn.Module, config: PluginConfig, context: SelectionContext) -> None:
    """Freeze every parameter (a stage that only evaluates, or trains an add-on)."""
    set_trainable(model, [])


@SELECTORS.register("head", HeadConfig)
def select_head(model: torch.nn.Module, config: HeadConfig, context: SelectionContext) -> None:
    """Train only the task head (lm_head or classifier), optionally with the pooler and top blocks."""
    params = head_parameters(model)
    if config.top_layers:
        _, blocks = transformer_blocks(model)
        if config.top_layers > len(blocks):
            raise RecipeError(f"trainable.top_layers: {config.top_layers} exceeds the {len(blocks)} blocks")
        params += [p for block in blocks[-config.top_layers :] for p in block.parameters()]
    if config.pooler:
        pooler = [p for n, p in model.named_parameters() if ".pooler." in f".{n}"]
        if not pooler:
            raise RecipeError(f"trainable.pooler: {type(model).__name__} has no pooler")
        params += pooler
    set_trainable(model, params)


@SELECTORS.register("layers", LayersConfig, requires=PLAIN, example={"indices": [-1]})
def select_layers(model: torch.nn.Module, config: LayersConfig, context: SelectionContext) -> None:
    """Train the listed transformer blocks (negative = from the top), optionally with the head."""
    _, blocks = transformer_blocks(model)
    params: list[torch.nn.Parameter] = []
    for index in config.indices:
        if not -len(blocks) <= index < len(blocks):
            raise RecipeError(f"trainable.indices: layer {index} out of range for {len(blocks)} blocks")
        params += list(blocks[index].parameters())
    set_trainable(model, params + (head_parameters(model) if config.with_head else []))


def _name_matcher(pattern: str) -> Callable[[str], bool]:
    """A glob matches the whole name; ``re:<regex>`` searches anywhere in it."""
    if not pattern.startswith("re:"):
        return lambda name: fnmatch.fnmatchcase(name, pattern)
    try:
        regex = re.compile(pattern[3:])
    except re.error as err:
        raise RecipeError(f"trainable.patterns: bad regex {pattern[3:]!r}: {err}") from None
    return lambda name: regex.search(name) is not None


@SELECTORS.register("modules", ModulesConfig, requires=PLAIN, example={"patterns": ["*.weight"]})
def select_modules(model: torch.nn.Module, config: ModulesConfig, context: SelectionContext) -> None:
    """Train parameters whose names match a glob (``*.mlp.*``) or regex (``re:...``)."""
    params = []
    for pattern in config.patterns:
        matches = _name_matcher(pattern)
        hits = [p for n, p in model.named_parameters() if matches(n)]
        if not hits:
            sample = ", ".join(n for n, _ in list(model.named_parameters())[:4])
            raise RecipeError(f"trainable.patterns: {pattern!r} matches no parameter (names look like: {sample}, ...)")
        params += hits
    set_trainable(model, params)
