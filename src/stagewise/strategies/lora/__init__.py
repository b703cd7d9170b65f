"""LoRA (Hu et al. 2021) through PEFT: low-rank adapters on the target modules; only they train.

The selector attaches the adapter (or reuses the one carried from an earlier stage). The stage
folder then holds the base model (``save_pretrained``) and the adapter under ``adapter/``, so
``PeftModel.from_pretrained(AutoModel...(stage), stage/"adapter")`` restores it with plain
transformers + peft; ``merge_on_save`` saves (and hands on) the merged weights instead.

PEFT's forgetting-aware variants are options of the same selector:
- ``use_dora``: DoRA (Liu et al., ICML 2024), a magnitude vector and a LoRA-updated direction;
- ``init: pissa`` (Meng et al. 2024: the adapter starts as the principal singular directions,
  the base keeps the residual), ``init: olora`` (Büyükakyüz 2024: QR-orthonormal start), and
  ``init: corda`` (Yang et al. 2024, CorDA): the weights are decomposed by the covariance of
  ``corda_data``'s activations; ``corda_method: kpm`` (knowledge-preserved) adapts the
  directions that dataset uses *least*, so what it exercises (e.g. general QA) is kept.
PiSSA/OLoRA/CorDA rewrite the base weights to the residual; the saved base folder holds that
residual, so base + adapter reload to the trained model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import torch
from pydantic import Field, model_validator

from ...addons import is_peft_model, peft_task_type, train_addon
from ...errors import DataError, RecipeError
from ...models import dequantize_in_place, is_quantized
from ...protocols import Selection, SelectionContext
from ...registry import ADDONS, SELECTORS, PluginConfig, Requires, SelectorTraits

if TYPE_CHECKING:
    from peft import PeftModel

MARKER = "lora_"


class LoraSelectorConfig(PluginConfig):
    lora_rank: int = Field(default=8, ge=1)  # LLaMA-Factory's key; paper/PEFT default r=8
    lora_alpha: float | None = None  # default 2 x rank (LLaMA-Factory)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    lora_target: list[str] | Literal["all"] = "all"  # module names, or every linear layer
    merge_on_save: bool = False  # save (and carry on) merged weights instead of an adapter
    use_dora: bool = False  # DoRA: weight-decomposed low-rank adaptation
    init: Literal["default", "gaussian", "pissa", "olora", "corda"] = "default"  # PEFT's init_lora_weights
    corda_data: str | None = None  # init corda: the dataset whose activations to keep
    corda_method: Literal["kpm", "ipm"] = "kpm"  # CorDA: knowledge-preserved (kpm) or instruction-previewed
    corda_samples: int = Field(default=64, ge=1)  # CorDA: examples of corda_data read for the covariance
    dataset_fields: ClassVar[tuple[str, ...]] = ("corda_data",)

    @model_validator(mode="after")
    def _corda_needs_data(self) -> "LoraSelectorConfig":
        if (self.init == "corda") != (self.corda_data is not None):
            raise ValueError(
                "init: corda and corda_data go together (CorDA decomposes weights by that data's activations)"
            )
        return self


def _carries_lora(model: torch.nn.Module) -> bool:
    return is_peft_model(model) and "lora" in str(model.peft_config["default"].peft_type).lower()


@SELECTORS.register(
    "lora", LoraSelectorConfig, requires=Requires(sharded=False), traits=SelectorTraits(wraps_model=True)
)
def select_lora(model: torch.nn.Module, config: LoraSelectorConfig, context: SelectionContext) -> Selection:
    """Low-rank adapters on the target modules; only the adapters train."""
    return Selection(model=train_addon(model, LORA, "lora", lambda: attach_lora(model, config, context)))


def attach_lora(model: torch.nn.Module, config: LoraSelectorConfig, context: SelectionContext) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    target = "all-linear" if config.lora_target == "all" else config.lora_target
    init: Any = {"default": True, "gaussian": "gaussian"}.get(config.init, config.init)
    peft_config = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha or 2 * config.lora_rank,  # type: ignore[arg-type]  # PEFT scales by any number
        lora_dropout=config.lora_dropout,
        target_modules=target,
        task_type=peft_task_type(model),
        use_dora=config.use_dora,
        init_lora_weights=init,
        **corda_settings(config),
    )
    torch.manual_seed(context.seed)
    try:
        if config.init == "corda":
            prepare_corda(model, peft_config, config, context)
        wrapped = get_peft_model(model, peft_config)
    except ValueError as err:
        raise RecipeError(f"trainable.lora_target: {str(err).splitlines()[0]}") from None
    # the init (PiSSA/OLoRA/CorDA) is applied: the base now holds the residual, and a reload of
    # base + adapter must not apply it again
    applied = cast(LoraConfig, wrapped.peft_config["default"])
    applied.init_lora_weights = True
    applied.corda_config = None
    return wrapped


def corda_settings(config: LoraSelectorConfig) -> dict[str, Any]:
    if config.init != "corda":
        return {}
    from peft.tuners.lora.config import CordaConfig

    return {"corda_config": CordaConfig(corda_method=config.corda_method)}


@torch.no_grad()
def prepare_corda(
    model: torch.nn.Module, peft_config: Any, config: LoraSelectorConfig, context: SelectionContext
) -> None:
    """CorDA's covariance pass: the model reads ``corda_samples`` examples of ``corda_data``, one
    at a time (PEFT's hooks take one unpadded sequence per call)."""
    from peft.tuners.lora.corda import preprocess_corda

    assert context.examples_of is not None and config.corda_data is not None
    examples = context.examples_of(config.corda_data)
    if not examples or "input_ids" not in examples[0]:
        raise DataError(f"trainable.corda_data: dataset {config.corda_data!r} gives no tokenized examples")
    device = next(model.parameters()).device

    def run_model() -> None:
        for example in examples[: config.corda_samples]:
            model(input_ids=torch.tensor([example["input_ids"]], device=device))

    preprocess_corda(model, peft_config, run_model=run_model)


def merge_into_dequantized(model: PeftModel) -> torch.nn.Module:
    """``merge_on_save`` on a 4/8-bit base (QLoRA): the base is dequantized first and the adapter
    merged into the plain weights, so the saved model is base + adapter without a second rounding
    to 4 bits (PEFT's own merge would requantize). DoRA's magnitude is merged by PEFT as usual."""
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    adapter, peft_config = get_peft_model_state_dict(model), model.peft_config["default"]
    base = dequantize_in_place(model.unload())
    wrapped = get_peft_model(base, peft_config)
    set_peft_model_state_dict(wrapped, adapter)
    return wrapped.merge_and_unload()


class LoraAddOn:
    """LoRA layers live inside the base model's modules: they score every probe."""

    marker = MARKER

    def attached(self, model: torch.nn.Module) -> bool:
        return _carries_lora(model)

    def for_saving(self, model: torch.nn.Module, selector: PluginConfig) -> torch.nn.Module:
        merge = isinstance(selector, LoraSelectorConfig) and selector.merge_on_save
        if not (merge and is_peft_model(model)):
            return model
        return merge_into_dequantized(model) if is_quantized(model) else model.merge_and_unload()

    def for_probe(self, model: torch.nn.Module, probe: Any, group: str) -> torch.nn.Module:
        if probe.addon == "never":
            raise RecipeError(
                f"evaluation {probe.name!r}: addon: never cannot detach LoRA layers "
                "(they are inside the model); use merge_on_save or drop the key"
            )
        return model


LORA = LoraAddOn()
ADDONS.register("lora")(LORA)
