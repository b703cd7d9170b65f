"""``stagewise plan``: will each stage fit, per device, before anything is downloaded or trained?

Built from the model's *config* on the meta device (:mod:`.footprint` holds the formulas), with
the stage's own selector applied, so the trained-element counts are exact. For each stage: weights,
gradients, optimizer state, activations, what the stage's entries add (anchors, reference model,
KV cache), and evaluation's generation; then a verdict against the device's memory and, when it
does not fit, the cheapest change that does (gradient checkpointing, bf16-mixed, an 8-bit
optimizer, LoRA, QLoRA, more devices with FSDP).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..addons import base_model_of, is_addon_parameter, output_embeddings
from ..config import ModelConfig, Recipe, StageConfig, measures_kl
from ..errors import RecipeError
from ..io import parse_json
from ..precision import COMPUTE_DTYPES, MIXED, resolve_precision
from ..registry import LR_RULES, OPTIMIZERS, REGULARIZERS, SELECTORS, TRAINERS, TRANSFORMS, load_plugins
from .footprint import (
    Footprint,
    GiB,
    ModelShape,
    PlanContext,
    activation_bytes,
    dtype_bytes,
    kv_bytes_per_token,
    optimizer_bytes,
    quantized_weight_bytes,
)

__all__ = ["Settings", "StagePlan", "load_model_config", "parse_memory", "plan_recipe", "render_plan"]

HEADROOM = 0.95  # of the device's memory: the allocator's fragmentation and the runtime's own buffers


@dataclass(frozen=True)
class Settings:
    """The knobs a plan is made for (the recipe's, or a suggested change)."""

    precision: str
    devices: int = 1
    checkpointing: bool = False
    optim: str | None = None
    selector: Any = None  # replaces every training stage's selector (a suggestion: LoRA)
    quantization: Any = None  # {bits, double_quant} or None
    seq_len: int | None = None  # tokens per sequence (default: the stage's max_length)
    kl_off: bool = False  # no forgetting predictor (evaluation.kl_prompts: 0): no reference copy while scoring


@dataclass
class StagePlan:
    index: int
    name: str
    train: Footprint
    generation: Footprint  # transforms before training, probes after it
    settings: Settings
    fits: bool | None = None
    suggestion: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return max(self.train.peak, self.generation.peak)


def parse_memory(text: str) -> float:
    """``80GB`` / ``24GiB`` / ``512MB`` -> bytes (GB taken as GiB, as GPUs are sold)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?)?\s*", text, re.IGNORECASE)
    size = float(match.group(1)) * 1024 ** "KMGT".index((match.group(2) or "G")[0].upper()) * 1024 if match else 0.0
    if not 0 < size <= 2**50:  # up to a PiB: a 400-digit size is a typo, not a device
        raise RecipeError(
            f"--device-memory: expected a size such as 80GB or 24GiB (at most 1024TiB), got {text[:40]!r}"
        )
    return size


class ConfigShape(BaseModel):
    """The shape fields a plan reads from a model config, typed and bounded (larger than any released
    model, small enough that building the model on the meta device answers in seconds)."""

    model_config = ConfigDict(strict=True)

    hidden_size: int = Field(ge=1, le=2**17)
    intermediate_size: int = Field(ge=1, le=2**20)
    num_hidden_layers: int = Field(ge=1, le=1024)
    num_attention_heads: int = Field(ge=1, le=2**12)
    num_key_value_heads: int = Field(ge=1, le=2**12)
    head_dim: int = Field(ge=1, le=2**14)
    vocab_size: int = Field(ge=1, le=2**24)
    dtype: str | None = None


def checked_shape(config: Any, name: str) -> Any:
    """``config`` (a transformers config, or the raw config.json object before transformers computes
    anything from it) when its shape fields are integers in range and its dtype a torch dtype; one
    line otherwise."""

    def field_of(*keys: str) -> Any:
        found = (config.get(key) if isinstance(config, dict) else getattr(config, key, None) for key in keys)
        return next((value for value in found if value is not None), None)

    hidden, heads = field_of("hidden_size", "n_embd"), field_of("num_attention_heads", "n_head")
    whole = isinstance(hidden, int) and isinstance(heads, int) and heads > 0
    fields = {
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": field_of("num_key_value_heads") or heads,
        "head_dim": field_of("head_dim") or (hidden // heads if whole else hidden),
        "intermediate_size": field_of("intermediate_size", "n_inner") or (4 * hidden if whole else hidden),
        "num_hidden_layers": field_of("num_hidden_layers", "n_layer"),
        "vocab_size": field_of("vocab_size"),
    }
    dtype = field_of("dtype", "torch_dtype")
    fields["dtype"] = str(dtype).removeprefix("torch.") if dtype is not None else None
    try:
        ConfigShape.model_validate(fields)
    except ValidationError as err:
        error = err.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise RecipeError(
            f"--model: config of {name!r}: {where}: {error['msg']} (got {str(error.get('input'))[:40]!r})"
        ) from None
    if fields["dtype"] is not None and not isinstance(getattr(torch, fields["dtype"], None), torch.dtype):
        raise RecipeError(f"--model: config of {name!r}: dtype {fields['dtype'][:40]!r} is not a torch dtype")
    return config


def load_model_config(model: ModelConfig, override: str | None = None) -> Any:
    """The transformers config of ``--model`` (a config.json file, a folder or hub id, offline from
    the cache) or of the recipe's model, its shape checked; one line when it cannot be read."""
    from transformers import AutoConfig

    from ..models import TINY_MODELS, _tiny_config

    name = override or model.model_name_or_path
    if name in TINY_MODELS:
        return _tiny_config(TINY_MODELS[name])
    path = Path(name).expanduser()
    try:
        if path.is_file():
            data = parse_json(path.read_text(encoding="utf-8", errors="replace"))
            if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
                raise ValueError("expected a JSON object with a model_type")
            checked_shape(data, name)  # before transformers divides by a head count of 0
            return checked_shape(AutoConfig.for_model(data.pop("model_type"), **data), name)
        from ..bundled import BUNDLED, resolve_bundled

        source = resolve_bundled(name) if name in BUNDLED else name
        config = AutoConfig.from_pretrained(source, trust_remote_code=model.trust_remote_code, revision=model.revision)
        return checked_shape(config, name)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ArithmeticError, RecursionError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise RecipeError(
            f"--model: cannot read the config of {name!r} ({reason}); offline, give a config.json"
        ) from None


def meta_model(config: Any, task: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if task == "sequence_classification" else AutoModelForCausalLM
    with torch.device("meta"):
        return cls.from_config(config, dtype=dtype)


def storage_dtype_for(recipe: Recipe, config: Any, precision: str) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "bf16-pure":
        return torch.bfloat16
    if recipe.model.dtype != "auto":
        return getattr(torch, recipe.model.dtype)
    found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return (
        getattr(torch, found) if isinstance(found, str) else found if isinstance(found, torch.dtype) else torch.float32
    )


def planned_precision(recipe: Recipe, device_memory: float | None) -> str:
    """The recipe's precision; ``auto`` planned for a GPU (bf16-mixed) when a device memory is given."""
    precision = recipe.performance.precision
    if precision == "auto" and device_memory is not None:
        return "bf16-mixed"
    return resolve_precision(precision)


def plan_recipe(
    recipe: Recipe, config: Any, device_memory: float | None = None, devices: int = 1, seq_len: int | None = None
) -> list[StagePlan]:
    """One :class:`StagePlan` per stage; with ``device_memory`` each has a verdict and, when it does
    not fit, the cheapest change that does."""
    load_plugins()
    base = Settings(
        precision=planned_precision(recipe, device_memory),
        devices=devices,
        checkpointing=recipe.performance.gradient_checkpointing,
        seq_len=seq_len,
        quantization=recipe.model.quantization,
    )
    plans = plan_stages(recipe, config, base)
    if device_memory is not None:
        for plan in plans:
            plan.fits = plan.peak <= HEADROOM * device_memory
            if not plan.fits:
                plan.suggestion = cheapest_fix(recipe, config, plan, device_memory)
    return plans


def plan_stages(recipe: Recipe, config: Any, settings: Settings) -> list[StagePlan]:
    """Every stage in order on one meta model (adapters a stage attaches stay for the next)."""
    from ..protocols import SelectionContext
    from ..selection import apply_selector

    shape = ModelShape.of(config)
    storage = storage_dtype_for(recipe, config, settings.precision)
    model = meta_model(config, recipe.model.task, storage)
    plans = []
    for index, stage in enumerate(recipe.stages):
        selector = stage.trainable if settings.selector is None or stage.trainable.kind == "none" else settings.selector
        try:
            model, _ = apply_selector(model, selector, SelectionContext(seed=stage.seed, stage_index=index))
        except RecipeError as err:  # the selector does not fit this model (as a run would say)
            raise RecipeError(f"stages.{index} '{stage.name}': {err}") from None
        except Exception as err:  # a data-aware selector (CorDA) cannot run on the meta device
            raise RecipeError(
                f"stages.{index} '{stage.name}': plan cannot apply {selector.kind!r} on the meta "
                f"device ({str(err).splitlines()[0][:160] if str(err) else type(err).__name__})"
            ) from None
        train = stage_footprint(recipe, stage, model, shape, storage, settings)
        plans.append(
            StagePlan(
                index, stage.name, train, generation_footprint(recipe, stage, model, shape, storage, settings), settings
            )
        )
    return plans


def weight_bytes(
    model: torch.nn.Module, storage: torch.dtype, settings: Settings, training: bool = True
) -> tuple[float, list[torch.nn.Parameter]]:
    """(bytes of every weight, the trained tensors) for the model as a stage holds it: quantized
    matrices packed, add-ons in fp32, and while training under mixed precision the trained base
    tensors as fp32 master copies (PEFT keeps a quantized base's other tensors in fp32)."""
    quantized = quantized_matrices(model) if settings.quantization is not None else set()
    unquantized = dtype_bytes(torch.float32 if quantized else storage)
    master = training and settings.precision in MIXED
    total, trained, seen = 0.0, [], set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        if param.requires_grad:
            trained.append(param)
        if id(param) in quantized:
            q = settings.quantization
            total += quantized_weight_bytes(param.numel(), param.shape[0], q.bits, q.double_quant)
        elif is_addon_parameter(name) or (param.requires_grad and master):
            total += 4 * param.numel()
        else:
            total += unquantized * param.numel()
    return total, trained


def quantized_matrices(model: torch.nn.Module) -> set[int]:
    """The weights bitsandbytes would quantize: every linear layer of the base but the output head."""
    base = base_model_of(model)
    head = output_embeddings(base)
    return {
        id(module.weight)
        for name, module in base.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head and not is_addon_parameter(name)
    }


def stage_footprint(
    recipe: Recipe,
    stage: StageConfig,
    model: torch.nn.Module,
    shape: ModelShape,
    storage: torch.dtype,
    settings: Settings,
) -> Footprint:
    compute = dtype_bytes(COMPUTE_DTYPES[settings.precision])
    weights, trained = weight_bytes(model, storage, settings)
    grad_bytes = 2.0 if settings.precision == "bf16-pure" else 4.0
    trained_numel = sum(p.numel() for p in trained)
    shard = settings.devices
    seq = settings.seq_len or stage.max_length
    batch = stage.batch_size
    parts = {
        "weights": weights / shard,
        "gradients": trained_numel * grad_bytes / shard,
        "optimizer": optimizer_bytes(settings.optim or stage.optim, trained, grad_bytes) / shard,
    }
    if trained_numel:
        parts["activations"] = activation_bytes(
            shape, batch, seq, compute, settings.checkpointing, recipe.model.attn_implementation == "eager"
        )
    context = plan_context(model, shape, storage, settings, stage, weights)
    for registry, config in (
        (TRAINERS, stage.trainer),
        (REGULARIZERS, stage.regularizer),
        (LR_RULES, stage.lr_rule),
        (SELECTORS, stage.trainable),
        (OPTIMIZERS, stage.optimizer),
    ):
        plan = registry.get(config.kind).plan
        parts.update(plan(config, context) if plan else {})
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    head = output_embeddings(base_model_of(model))
    head_gradient = head.weight.numel() * grad_bytes / shard if head is not None and head.weight.requires_grad else 0.0
    return Footprint(
        {k: v for k, v in parts.items() if v}, trainable=trained_numel, total=total, head_gradient=head_gradient
    )


def plan_context(
    model: torch.nn.Module,
    shape: ModelShape,
    storage: torch.dtype,
    settings: Settings,
    stage: StageConfig,
    weights: float,
) -> PlanContext:
    compute = dtype_bytes(COMPUTE_DTYPES[settings.precision])
    stored, trained = weight_bytes(model, storage, settings, training=False)
    return PlanContext(
        weights=weights / settings.devices,
        stored_weights=stored / settings.devices,
        trainable=sum(p.numel() for p in trained),
        storage_bytes=dtype_bytes(storage),
        compute_bytes=compute,
        has_adapter=any(is_addon_parameter(n) for n, _ in model.named_parameters()),
        kv_bytes_per_token=kv_bytes_per_token(shape, compute),
        batch_size=stage.batch_size,
        seq_len=settings.seq_len or stage.max_length,
        devices=settings.devices,
    )


def generation_footprint(
    recipe: Recipe,
    stage: StageConfig,
    model: torch.nn.Module,
    shape: ModelShape,
    storage: torch.dtype,
    settings: Settings,
) -> Footprint:
    """Generating without training (the stage's transforms before it, the probes after it): the
    stored weights and the largest generation batch's KV cache and last-token logits, plus the
    entering model the forgetting predictor reloads beside the tuned one (``measures_kl``)."""
    stored, _ = weight_bytes(model, storage, settings, training=False)
    context = plan_context(model, shape, storage, settings, stage, stored)
    plans = [(TRANSFORMS.get(t.kind).plan, t) for t in stage.transforms]
    caches = [plan(t, context).get("kv cache", 0.0) for plan, t in plans if plan is not None]
    batch = 0
    if recipe.evaluation is not None:
        evaluation = recipe.evaluation
        new_tokens = max((p.max_new_tokens for p in [*evaluation.target, *evaluation.retention]), default=0)
        length = min(settings.seq_len or evaluation.max_length, evaluation.max_length) + new_tokens
        caches.append(evaluation.batch_size * length * context.kv_bytes_per_token)
        batch = evaluation.batch_size
    return Footprint(
        {
            "weights": stored / settings.devices,
            "kv cache": max(caches, default=0.0),
            "logits": batch * shape.vocab * (context.compute_bytes + 4),
            "KL reference model": stored / settings.devices
            if measures_kl(recipe, stage) and not settings.kl_off
            else 0.0,
        }
    )


KL_OFF = ", without the KL predictor (evaluation.kl_prompts: 0: no second copy of the model while scoring)"
FIXES: list[tuple[str, dict[str, Any]]] = [  # each a complete change to the recipe, cheapest to the result first
    ("gradient checkpointing (performance.gradient_checkpointing: true)", {"checkpointing": True}),
    ("precision bf16-mixed", {"precision": "bf16-mixed"}),
    ("precision bf16-mixed and gradient checkpointing", {"precision": "bf16-mixed", "checkpointing": True}),
    (
        "an 8-bit optimizer (optim: adamw_bnb_8bit) and gradient checkpointing",
        {"optim": "adamw_bnb_8bit", "checkpointing": True},
    ),
    ("LoRA (trainable: lora) and gradient checkpointing", {"selector": "lora", "checkpointing": True}),
    (
        "QLoRA (model.quantization: {bits: 4}, trainable: lora) and gradient checkpointing",
        {"selector": "lora", "quantization": "4bit", "checkpointing": True},
    ),
]


def fixed_settings(settings: Settings, change: dict[str, Any]) -> Settings:
    from ..config import QuantizationConfig

    update = dict(change)
    if update.get("selector") == "lora":  # through the registry: plan sits below the strategies
        update["selector"] = SELECTORS.get("lora").config_cls(kind="lora")
    if update.get("quantization") == "4bit":
        update["quantization"] = QuantizationConfig.model_construct(
            bits=4, quant_type="nf4", double_quant=True, compute_dtype="auto"
        )
    return replace(settings, **update)


def change_overrides(recipe: Recipe, change: dict[str, Any]) -> list[str]:
    """A suggested change as the recipe overrides a user would write for it."""
    found = ["performance.gradient_checkpointing=true"] if change.get("checkpointing") else []
    found += [f"performance.precision={change['precision']}"] if "precision" in change else []
    found += ["model.quantization={bits: 4}"] if "quantization" in change else []
    found += ["distributed.fsdp=true"] if "devices" in change else []
    found += ["evaluation.kl_prompts=0"] if change.get("kl_off") and recipe.evaluation is not None else []
    for index, stage in enumerate(recipe.stages):
        if stage.trainable.kind != "none":
            found += [f"stages.{index}.trainable=lora"] if change.get("selector") == "lora" else []
            found += [f"stages.{index}.optim={change['optim']}"] if "optim" in change else []
    return found


def refusal(recipe: Recipe, change: dict[str, Any]) -> str | None:
    """Why ``validate`` would refuse the recipe with ``change`` made (never suggest that), or None."""
    from ..config import recipe_from_dict, recipe_to_dict

    try:
        recipe_from_dict(recipe_to_dict(recipe), overrides=change_overrides(recipe, change))
    except RecipeError as err:
        return str(err)
    return None


def cheapest_fix(recipe: Recipe, config: Any, plan: StagePlan, device_memory: float) -> str:
    """The first change (in order of its cost to the result) that makes this stage fit and that
    ``validate`` accepts, else FSDP over the fewest devices that fit (with gradient checkpointing)
    where the recipe can be sharded, else none."""

    def fits(settings: Settings) -> bool:
        return plan_stages(recipe, config, settings)[plan.index].peak <= HEADROOM * device_memory

    own_optimizer = recipe.stages[plan.index].optimizer.kind != "hf"  # (then `optim` is not the stage's to set)
    for text, change in FIXES:
        if own_optimizer and "optim" in change:
            continue
        for extra, also in ((), ""), ((("kl_off", True),), KL_OFF):  # the predictor's copy may be what does not fit
            candidate = {**change, **dict(extra)}
            changes = any(getattr(plan.settings, key) != value for key, value in candidate.items())
            if changes and fits(fixed_settings(plan.settings, candidate)) and refusal(recipe, candidate) is None:
                return text + also
    for devices in (2, 4, 8, 16, 32, 64):
        if devices > plan.settings.devices and fits(replace(plan.settings, devices=devices, checkpointing=True)):
            why = refusal(recipe, {"devices": devices, "checkpointing": True})
            if why is not None:
                return f"none that validate accepts ({devices} devices with FSDP would fit, but: {why})"
            return f"{devices} devices with FSDP (distributed: {{fsdp: true}}) and gradient checkpointing"
    return "none found: a smaller model or more memory"


def render_plan(plans: list[StagePlan], device_memory: float | None, model_name: str) -> str:
    """A readable table: per stage, each part in GiB, the peak, and the verdict."""
    first = plans[0].settings
    lines = [
        f"plan for {model_name}: precision {first.precision}, {first.devices} device(s)"
        + (f" of {device_memory / GiB:.0f} GiB" if device_memory else "")
        + (", gradient checkpointing" if first.checkpointing else "")
    ]
    for plan in plans:
        parts = ", ".join(f"{name} {value / GiB:.2f}" for name, value in plan.train.parts.items())
        generation = plan.generation.peak / GiB
        verdict = (
            ""
            if plan.fits is None
            else "  fits"
            if plan.fits
            else f"  does NOT fit; cheapest change: {plan.suggestion}"
        )
        lines.append(
            f"stage {plan.index} '{plan.name}': {plan.train.trainable:,} of {plan.train.total:,} elements "
            f"train; GiB per device: {parts}; training peak {plan.train.peak / GiB:.2f}, "
            f"generation {generation:.2f}{verdict}"
        )
    return "\n".join(lines)
