"""Recipe schema (pydantic): model, datasets, stages, evaluation, distribution, performance.

Key names follow LLaMA-Factory / TRL / transformers where those exist
(``model_name_or_path``, ``train_on_prompt``, ``output_dir``, ``report_to``,
``resume_from_checkpoint``, ``lr_scheduler_type``, ``warmup_ratio``, ...).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SerializeAsAny, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..distributed import DEFAULT_TIMEOUT_S
from ..errors import RecipeError
from ..io import expanded_path
from ..merging import MergeConfig
from ..registry import (
    LOSSES,
    LR_RULES,
    OPTIMIZERS,
    REGULARIZERS,
    SELECTORS,
    TRAINERS,
    TRANSFORMS,
    PluginConfig,
    Registry,
    TransformConfig,
    load_plugins,
)
from ..schema import SafeName, StrictModel
from .evaluation import EvaluationConfig, StageEval


class QuantizationConfig(StrictModel):
    """Load the base weights 4- or 8-bit through bitsandbytes (QLoRA: Dettmers et al. 2023). Only
    add-ons (LoRA, DoRA, a soft prompt) and unquantized heads can train on such a base."""

    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"  # 4-bit: NormalFloat4 (QLoRA's choice) or plain FP4
    double_quant: bool = True  # 4-bit: quantize the quantization constants too (QLoRA)
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: the precision's compute dtype

    @model_validator(mode="after")
    def _needs_bitsandbytes(self) -> "QuantizationConfig":
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(
                "quantized loading needs the bitsandbytes package (pip install bitsandbytes; "
                "scripts/install.sh installs it)"
            )
        return self


class ModelConfig(StrictModel):
    """Which weights to start from: a bundled name, a local folder, or a hub id."""

    model_name_or_path: str
    task: Literal["causal_lm", "sequence_classification"] = "causal_lm"
    num_labels: int | None = Field(default=None, ge=2)
    head_layers: Literal[1, 2] = 1  # classification head: 1 = HF's linear head, 2 = Linear-ReLU-Linear MLP
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # weights in memory and on disk; auto = the
    # checkpoint's own torch_dtype
    revision: str | None = None
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"  # auto: transformers' pick
    quantization: QuantizationConfig | None = None  # {bits: 4}: QLoRA's 4-bit NF4 base

    @field_validator("attn_implementation")
    @classmethod
    def _flash_attention_installed(cls, value: str) -> str:
        import importlib.util

        if value == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ValueError(
                "flash_attention_2 needs the flash-attn package and a CUDA GPU "
                "(pip install flash-attn); sdpa is the portable choice"
            )
        return value


class DatasetConfig(StrictModel):
    """A named dataset: a file (JSONL/CSV/Parquet), in-memory ``rows``, or a built-in benchmark."""

    format: str  # a registered data format (DATA_FORMATS: text, instruction, chat, prompt_completion, ...)
    path: str | None = None
    rows: list[dict[str, Any]] | None = None
    builtin: str | None = None  # e.g. "facts:train" (see stagewise.bench)
    builtin_options: dict[str, Any] = Field(default_factory=dict)
    hub: str | None = None  # a Hugging Face dataset id (org/name) or builder (json, csv, parquet), via
    # datasets.load_dataset; `split` picks the split (default train)
    subset: str | None = None  # hub: the dataset's configuration (load_dataset's `name`)
    revision: str | None = None  # hub: branch, tag or commit
    data_files: str | list[str] | dict[str, str | list[str]] | None = None  # hub: which of its files
    split: str | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    template: Literal["auto", "chat", "alpaca"] = "auto"
    labels: list[str] | None = None
    max_samples: int | None = Field(default=None, ge=1)
    encoding: str = "utf-8"  # text encoding of a data file (JSONL/JSON/CSV)
    cluster: SafeName | None = None  # task cluster (sentiment, qa, ...): `loco` studies hold one out at a time

    @field_validator("encoding")
    @classmethod
    def _check_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError("unknown text encoding (e.g. utf-8, latin-1, utf-16)") from None
        return value

    @field_validator("split")
    @classmethod
    def _check_split(cls, value: str | None) -> str | None:
        if value is not None and not SPLIT_RE.match(value):
            raise ValueError("expected a slice like 'train', 'train[:80%]' or 'train[100:]'")
        return value


def check_path_text(value: str) -> str:
    """A path a file system can hold: no NUL, no empty path, each part at most 255 bytes; ``~`` and
    ``$VAR`` expanded (:func:`~stagewise.io.expanded_path`)."""
    if not value or "\x00" in value:
        raise ValueError("expected a folder path (non-empty, without NUL characters)")
    value = expanded_path(value)
    long = next((part for part in Path(value).parts if len(part.encode()) > 255), None)
    if long is not None:
        raise ValueError(f"path part {long[:20]!r}... is longer than 255 bytes")
    return value


SPLIT_RE = re.compile(r"^\w+(\[(-?\d+%?)?:(-?\d+%?)?\])?$")


def registered(registry: Registry[Any, Any]) -> BeforeValidator:
    """A stage field holding one of ``registry``'s entries: ``name`` or ``{kind: name, ...}`` becomes
    that entry's own config class. Its errors travel as context (``messages`` renders them at the
    entry's own keys and lines)."""

    def parse(raw: Any) -> PluginConfig:
        try:
            data = registry.normalize(raw)
            if data["kind"] not in registry.names():
                load_plugins()  # a recipe validated before anything imported the strategies
            config_cls = registry.get(data["kind"]).config_cls
        except RecipeError as err:
            raise PydanticCustomError("entry_unknown", "{message}", {"message": str(err)}) from None
        try:
            return config_cls.model_validate(data)
        except ValidationError as exc:
            context = {"message": exc.errors()[0]["msg"], "entry_errors": exc.errors(), "entry_class": config_cls}
            raise PydanticCustomError("entry_invalid", "{message}", context) from None

    return BeforeValidator(parse)


class StageConfig(StrictModel):
    """One training stage. The model entering it is the previous stage's output. Each registered
    section (trainable, loss, ...) holds its entry's own config class once validated."""

    name: SafeName
    data: list[str]
    trainable: Annotated[SerializeAsAny[PluginConfig], registered(SELECTORS)] = Field("full", validate_default=True)
    loss: Annotated[SerializeAsAny[PluginConfig], registered(LOSSES)] = Field("ce", validate_default=True)
    # a penalty added to the loss: none, l2sp or ewc (anchored to the entering model)
    regularizer: Annotated[SerializeAsAny[PluginConfig], registered(REGULARIZERS)] = Field(
        "none", validate_default=True
    )
    lr_rule: Annotated[SerializeAsAny[PluginConfig], registered(LR_RULES)] = Field("uniform", validate_default=True)
    # hf: the Trainer's, named by `optim`; or mofo. The default is already the entry's config (not
    # the name), so a stage that sets no optimizer hashes as it did before this key existed.
    optimizer: Annotated[SerializeAsAny[PluginConfig], registered(OPTIMIZERS)] = Field(
        default_factory=lambda: PluginConfig(kind="hf")
    )
    # model-in-the-loop data steps (distill, select)
    transforms: list[Annotated[SerializeAsAny[TransformConfig], registered(TRANSFORMS)]] = Field(default_factory=list)
    # what runs the optimisation: hf (transformers Trainer) or a registered one (dpo)
    trainer: Annotated[SerializeAsAny[PluginConfig], registered(TRAINERS)] = Field("hf", validate_default=True)
    lr: float = Field(default=5e-5, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = Field(default=-1, ge=-1)  # -1: run for `epochs`
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)  # numpy's and transformers' seeding take 0..2^32-1
    weight_decay: float = Field(default=0.0, ge=0)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(default=0.0, ge=0, le=1)
    max_grad_norm: float = Field(default=1.0, ge=0)
    optim: str | None = None  # None = transformers' default (adamw_torch_fused); a transformers OptimizerNames value
    max_length: int = Field(default=512, ge=8)
    train_on_prompt: bool = False
    save_steps: int = Field(default=50, ge=1)
    logging_steps: int = Field(default=10, ge=1)
    eval: StageEval | None = None
    merge: MergeConfig | None = None  # after training (or instead: trainable none): WiSE-FT / task arithmetic

    @field_validator("max_steps")
    @classmethod
    def _check_max_steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("expected -1 (train for `epochs`) or a positive number of steps")
        return value

    @field_validator("optim")
    @classmethod
    def _check_optim(cls, value: str | None) -> str | None:
        if value is not None:
            from transformers.training_args import OptimizerNames

            known = [name.value for name in OptimizerNames]
            if value not in known:
                hint = difflib.get_close_matches(value, known, n=1)
                maybe = f"did you mean {hint[0]!r}? " if hint else ""
                raise ValueError(
                    f"unknown optimizer ({maybe}expected a transformers optimizer name, "
                    "e.g. adamw_torch, sgd, adafactor)"
                )
        return value

    data_weights: dict[str, float] | None = None  # set by `data: {name: weight}` (a weighted mixture)

    @model_validator(mode="before")
    @classmethod
    def _weighted_data(cls, values: Any) -> Any:
        """``data: {a: 1.0, b: 0.3}`` is a mixture: the names, and their weights."""
        if isinstance(values, dict) and isinstance(values.get("data"), dict):
            values = {**values, "data": list(values["data"]), "data_weights": values["data"]}
        return values

    @field_validator("data_weights")
    @classmethod
    def _check_weights(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return value
        negative = [name for name, weight in value.items() if weight < 0]
        if negative:
            raise ValueError(
                f"data: weight of {negative[0]!r} is negative ({value[negative[0]]}); weights are row proportions >= 0"
            )
        first = next(iter(value))
        if value[first] <= 0:
            raise ValueError(f"data: the first dataset ({first!r}) anchors each epoch, so its weight must be > 0")
        return value

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class DistributedConfig(StrictModel):
    """Sharding; plain DDP needs nothing here (``torchrun --nproc_per_node=N -m stagewise run ...``)."""

    fsdp: bool = False  # FSDP2, applied by stagewise: weights, gradients and optimizer state
    # sharded over all ranks, one shard unit per decoder block
    reshard_after_forward: bool = True  # FSDP2: free each block's gathered weights after its forward (less
    # memory; false keeps them until backward: one all-gather fewer)
    deepspeed: str | None = None  # a DeepSpeed ZeRO-2 JSON (recipes/distributed/zero2.json), passed to
    # the Trainer; ZeRO-3 is refused (use fsdp)
    # collective timeout of the process group and the Trainer's ddp_timeout: raise it where rank 0 works
    # alone for long (an EWC Fisher of a large model)
    timeout_s: int = Field(default=DEFAULT_TIMEOUT_S, ge=60, le=7 * 86400)


class PerformanceConfig(StrictModel):
    """Speed knobs; off by default where they could change results."""

    # fp32 | bf16-mixed | fp16-mixed (trainable tensors held in fp32 as master weights, compute autocast to
    # bf16/fp16) | bf16-pure (everything bf16: small updates are lost) | auto: bf16-mixed on a GPU with bf16,
    # fp16-mixed on an older GPU, fp32 on a CPU
    precision: Literal["auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16-pure"] = "auto"
    gradient_checkpointing: bool = False  # recompute activations: less memory, ~30% more compute
    torch_compile: bool = False
    padding_free: bool = False  # LM stages: each batch's examples packed into one row, no padding;
    # positions restart per example and attention stays inside it

    @model_validator(mode="before")
    @classmethod
    def _bf16_alias(cls, values: Any) -> Any:
        """``bf16: true`` (the older key) is ``precision: bf16-mixed``."""
        if not isinstance(values, dict) or "bf16" not in values:
            return values
        values = dict(values)
        bf16 = values.pop("bf16")
        if not isinstance(bf16, bool):
            raise ValueError("bf16: expected true or false (an alias of precision: bf16-mixed)")
        if bf16 and values.get("precision", "auto") not in ("auto", "bf16-mixed"):
            raise ValueError(f"bf16: true means precision bf16-mixed, but precision is {values['precision']!r}")
        if bf16:
            values["precision"] = "bf16-mixed"
        return values


class Recipe(StrictModel):
    """A whole run: model, named datasets, ordered stages."""

    description: str = ""
    model: ModelConfig
    datasets: dict[str, DatasetConfig]
    stages: list[StageConfig]
    evaluation: EvaluationConfig | None = None
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)
    output_dir: str = "runs/default"
    report_to: list[str] = Field(default_factory=lambda: ["none"])
    resume_from_checkpoint: bool = True

    @field_validator("stages")
    @classmethod
    def _at_least_one_stage(cls, stages: list[StageConfig], info) -> list[StageConfig]:
        if not stages and not (info.context or {}).get("evaluation_only"):  # `stagewise eval` reads only the probes
            raise ValueError("List should have at least 1 item (a recipe trains in one or more stages)")
        return stages

    @field_validator("output_dir")
    @classmethod
    def _check_output_dir(cls, value: str) -> str:
        return check_path_text(value)

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, value: Any) -> Any:
        return {"model_name_or_path": value} if isinstance(value, str) else value

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("report_to")
    @classmethod
    def _check_report_to(cls, value: list[str]) -> list[str]:
        from transformers.integrations.integration_utils import (
            INTEGRATION_TO_CALLBACK,
            get_available_reporting_integrations,
        )

        for name in value:
            if name in ("none", "all"):
                continue
            if name not in INTEGRATION_TO_CALLBACK:
                raise ValueError(
                    f"unknown logger {name!r} (expected none, all or one of: {', '.join(INTEGRATION_TO_CALLBACK)})"
                )
            if name not in get_available_reporting_integrations():
                raise ValueError(
                    f"logger {name!r} is not installed (pip install {name.replace('_', '-')}), or use 'none'"
                )
        return value


# The registered sections of a stage: field name -> registry that validates it.
PLUGIN_FIELDS: dict[str, Registry[Any, Any]] = {  # in the order their fit is checked: the trainer decides the most
    "trainer": TRAINERS,
    "trainable": SELECTORS,
    "loss": LOSSES,
    "regularizer": REGULARIZERS,
    "lr_rule": LR_RULES,
    "optimizer": OPTIMIZERS,
}
