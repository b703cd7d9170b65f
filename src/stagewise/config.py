"""Recipe schema (pydantic) and loading with line-numbered, one-line errors.

Key names follow LLaMA-Factory / TRL / transformers where those exist
(``model_name_or_path``, ``train_on_prompt``, ``output_dir``, ``report_to``,
``resume_from_checkpoint``, ``lr_scheduler_type``, ``warmup_ratio``, ...).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, NoReturn

import yaml
from pydantic import AliasChoices, BaseModel, Field, ValidationError, field_validator, model_validator

from .errors import RecipeError
from .merging import BASE, MergeConfig
from .registry import (
    LOSSES,
    LR_RULES,
    METRICS,
    OPTIMIZERS,
    REGULARIZERS,
    SELECTORS,
    TRAINERS,
    TRANSFORMS,
    PluginConfig,
    Registry,
    load_plugins,
)
from .schema import SAFE_NAME_HINT, SafeName, StrictModel, is_safe_name

DataFormat = Literal[
    "text", "instruction", "chat", "prompt_completion", "preference", "feedback", "classification", "fewshot"
]


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

    format: DataFormat
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
    """A path a file system can hold: no NUL, no empty path, each part at most 255 bytes."""
    if not value or "\x00" in value:
        raise ValueError("expected a folder path (non-empty, without NUL characters)")
    long = next((part for part in Path(value).parts if len(part.encode()) > 255), None)
    if long is not None:
        raise ValueError(f"path part {long[:20]!r}... is longer than 255 bytes")
    return value


SPLIT_RE = re.compile(r"^\w+(\[(-?\d+%?)?:(-?\d+%?)?\])?$")


class StageEval(StrictModel):
    """Held-out data scored (loss / perplexity) after the stage."""

    data: list[str]
    batch_size: int = Field(default=8, ge=1)
    select_best: bool = False  # evaluate each epoch; keep the epoch with the lowest loss on data[0] (a dev split)


class EvalTaskConfig(StrictModel):
    """One scored probe: a dataset and the metric that summarises it."""

    name: SafeName
    data: str | None = None  # the dataset scored (every metric but lm_eval, which loads its own)
    metric: str  # a registered metric (README: evaluation metrics)
    shots: int = Field(default=4, ge=0)  # fewshot: demonstrations per query, from the same task
    max_new_tokens: int = Field(default=24, ge=1)
    pattern: str | None = None  # regex metric: first group is the answer
    choices: int = Field(default=4, ge=2)  # choice: the gold and choices - 1 other items' answers (lm-eval: 4 options)
    recovery_shots: int = Field(default=0, ge=0)  # retention: also score with k other items as examples (probe
    # <name>@<k>shot), splitting a drop into format and knowledge loss
    addon: Literal["auto", "always", "never"] = Field(  # score with the stage's add-on attached? auto = the
        default="auto", validation_alias=AliasChoices("addon", "use_prompt")
    )  # add-on's rule (soft prompt: target only)
    n_prompts: int = Field(default=10, ge=1)  # highly_known: SliCK's few-shot prompts per item
    samples: int = Field(default=16, ge=0)  # highly_known: sampled answers per prompt (T = 0.5)
    tasks: list[str] | None = None  # lm_eval: lm-evaluation-harness task names
    num_fewshot: int | None = Field(default=None, ge=0)  # lm_eval: None = each task's default
    limit: int | None = Field(default=None, ge=1)  # lm_eval: first N documents per task
    include_path: str | None = None  # lm_eval: a folder of the user's own task YAMLs
    stage: str | None = None  # continual sequences: the stage that learns this probe's task
    # (the report's accuracy matrix, average accuracy, BWT, FWT)

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"invalid regular expression: {err}") from None
        return value


class GuardConfig(StrictModel):
    """``evaluation.guard``: stop a stage whose retention probe drops too far (``engine.guard``)."""

    probe: str  # a retention probe's name
    max_drop: float = Field(gt=0)  # largest drop from the entering model's score that is tolerated
    every_steps: int = Field(default=50, ge=1)  # optimizer steps between checks
    items: int | None = Field(default=None, ge=1)  # score the probe's first N items only (None: all)


class CurveSteps(StrictModel):
    """``evaluation.every: {steps: [25, 50, 100]}``: curve points after these optimizer steps."""

    steps: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)


class EvaluationConfig(StrictModel):
    """What 'gain' and 'forgetting' mean for this recipe: target probes and retention probes."""

    target: list[EvalTaskConfig] = Field(default_factory=list)
    retention: list[EvalTaskConfig] = Field(default_factory=list)
    batch_size: int = Field(default=16, ge=1)  # sequences decoded (or scored) per batch
    max_length: int = Field(default=512, ge=8)
    after_each_stage: bool = True
    # stage: score after each stage; epoch: also at each epoch's end (a gain/retention curve); log: also after
    # 1/8, 1/4 and 1/2 of the first epoch, then every epoch (dense where fine-tuning changes most);
    # {steps: [...]}: also after these optimizer steps of every stage
    every: Literal["stage", "epoch", "log"] | CurveSteps = "stage"
    guard: GuardConfig | None = None  # stop a stage when a retention probe drops more than max_drop
    kl_prompts: int = Field(default=64, ge=0)  # forgetting predictor: KL(tuned || entering) on this many of each
    kl_tokens: int = Field(default=32, ge=1)  # stage's prompts, tuned model's samples of this length (0: off)


class StageConfig(StrictModel):
    """One training stage. The model entering it is the previous stage's output."""

    name: SafeName
    data: list[str]
    trainable: Any = "full"
    loss: Any = "ce"
    regularizer: Any = "none"  # a penalty added to the loss: none, l2sp or ewc (anchored to the entering model)
    lr_rule: Any = "uniform"
    optimizer: Any = Field(
        default_factory=lambda: PluginConfig(kind="hf")
    )  # hf: the Trainer's, named by `optim`; or mofo
    transforms: list[Any] = Field(default_factory=list)  # model-in-the-loop data steps (distill, select)
    trainer: Any = "hf"  # what runs the optimisation: hf (transformers Trainer) or a registered one (dpo)
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


# ---------------------------------------------------------------- YAML with lines
class _LineLoader(yaml.SafeLoader):
    """SafeLoader (a recipe is data, never code) that records each key's line and builds JSON
    values only: a date, timestamp, set, binary or ordered-pairs value is one line naming its line."""


def _refuse(what: str) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        raise yaml.constructor.ConstructorError(
            None, None, f"{what} is not a recipe value (quote it to keep it as text)", node.start_mark
        )

    return construct


def _checked(construct: Any) -> Any:
    """A scalar constructor whose failure (``!!int abc``) is a YAML error at the value's line."""

    def build(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, TypeError, OverflowError):
            kind = node.tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value!r} is not a valid {kind}", node.start_mark
            ) from None

    return build


for _tag, _what in (
    ("timestamp", "a date or time"),
    ("set", "a set"),
    ("binary", "binary data"),
    ("omap", "an ordered map"),
    ("pairs", "a list of pairs"),
):
    _LineLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse(_what))
for _tag in ("int", "float", "bool"):
    _LineLoader.add_constructor(
        f"tag:yaml.org,2002:{_tag}", _checked(yaml.SafeLoader.yaml_constructors[f"tag:yaml.org,2002:{_tag}"])
    )


MAX_RECIPE_BYTES = 16 * 2**20
MAX_YAML_VALUES = 200_000  # values after expanding aliases: a recipe is small, an alias bomb is not


def _compose_lines(node: yaml.Node, path: tuple, lines: dict[tuple, int], budget: list[int], source: str) -> None:
    """Record each key's line; refuse duplicate keys and alias expansions past the budget."""
    budget[0] -= 1
    if budget[0] < 0:
        raise RecipeError(f"{source}: the YAML expands to more than {MAX_YAML_VALUES} values (nested aliases?)")
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                dotted = ".".join(map(str, path + (key,)))
                raise RecipeError(f"{source} line {line}: {dotted}: duplicate key (first given on line {seen[key]})")
            seen[key] = line
            _compose_lines(value_node, path + (key,), lines, budget, source)
            lines[path + (key,)] = line
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _compose_lines(item, path + (index,), lines, budget, source)


def read_text_file(path: Path, what: str = "file") -> str:
    """UTF-8 text, or one line naming the file and the first undecodable byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(
            f"{path}: {what} is not UTF-8 text (byte {err.start} is 0x{data[err.start]:02x}); save it as UTF-8"
        ) from None


def read_yaml(text: str, source: str) -> tuple[dict[str, Any], dict[tuple, int]]:
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        lines: dict[tuple, int] = {}
        if node is not None:
            _compose_lines(node, (), lines, [MAX_YAML_VALUES], source)
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{source}{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise RecipeError(f"{source}: the YAML is nested too deeply") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: expected a mapping of recipe keys at the top level")
    return data, lines


# ---------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """``stages.0.lr=1e-4`` -> (['stages', '0', 'lr'], 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected key=value, e.g. stages.0.lr=1e-4")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r}: empty key part in {key!r}")
    try:
        value = yaml.load(raw, Loader=_LineLoader) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(data: dict[str, Any], parts: list[str], value: Any, text: str) -> None:
    target: Any = data
    for depth, part in enumerate(parts[:-1]):
        if isinstance(target, list):
            if not part.lstrip("-").isdigit() or not -len(target) <= int(part) < len(target):
                raise RecipeError(f"override {text!r}: {'.'.join(parts[: depth + 1])} is not a valid index")
            target = target[int(part)]
        elif isinstance(target, dict):
            target = target.setdefault(part, {})
        else:
            raise RecipeError(f"override {text!r}: {'.'.join(parts[:depth])} is not a mapping or list")
    last = parts[-1]
    if isinstance(target, list):
        if not last.isdigit() or int(last) >= len(target):
            raise RecipeError(f"override {text!r}: {'.'.join(parts)} is not a valid index")
        target[int(last)] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise RecipeError(f"override {text!r}: {'.'.join(parts[:-1])} is not a mapping or list")


# ---------------------------------------------------------------- validation errors
def line_for(loc: tuple, lines: dict[tuple, int]) -> int | None:
    loc = tuple(int(p) if isinstance(p, str) and p.isdigit() else p for p in loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None


def _fields_at(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Known keys of the model that owns ``loc`` (for 'did you mean' hints)."""
    cls: Any = model_cls
    for part in loc[:-1]:
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            for inner in (candidate, *getattr(candidate, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    cls = inner
                    break
            else:
                continue
            break
        else:
            return []
    return list(getattr(cls, "model_fields", {}))


def _describe(err: dict[str, Any], model_cls: type[BaseModel], prefix: tuple) -> str:
    loc = tuple(err["loc"])
    dotted = ".".join(str(p) for p in prefix + loc)
    if err["type"] == "extra_forbidden":
        known = _fields_at(model_cls, loc)
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        maybe = f"did you mean {hint[0]!r}? " if hint else ""
        return f"{dotted}: unknown key ({maybe}expected one of: {', '.join(known)})"
    if err["type"] == "missing":
        return f"{dotted}: required key is missing"
    got = err.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
    message = err["msg"].removeprefix("Value error, ")  # a validator's own words, without pydantic's label
    return f"{dotted}: {message}{shown}"


def raise_validation_error(
    exc: ValidationError, source: str, lines: dict[tuple, int], model_cls: type[BaseModel], prefix: tuple = ()
) -> None:
    errors = exc.errors()
    first = errors[0]
    loc = prefix + tuple(first["loc"])
    line = line_for(loc, lines)
    where = f"{source} line {line}" if line else source
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise RecipeError(f"{where}: {_describe(first, model_cls, prefix)}{more}") from None


# ---------------------------------------------------------------- loading
def read_yaml_file(path: Path, what: str) -> tuple[dict[str, Any], dict[tuple, int]]:
    """A recipe or study file: present, not oversized, UTF-8, valid YAML (with each key's line)."""
    if not path.is_file():
        raise RecipeError(f"{path}: {what} file not found")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: {what} is larger than {MAX_RECIPE_BYTES // 2**20} MiB (put rows in a data file)")
    return read_yaml(read_text_file(path, what), str(path))


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; every problem is a one-line RecipeError."""
    path = Path(path)
    data, lines = read_yaml_file(path, "recipe")
    return recipe_from_dict(data, source=str(path), lines=lines, overrides=overrides, base_dir=path.parent)


def load_suite(path: str | Path, task: str | None = None) -> Recipe:
    """A probe suite for `stagewise eval`: any recipe or a file of probes alone (its stages are not
    read). ``task`` replaces model.task before the probes' metrics are checked against it."""
    path = Path(path)
    data, lines = read_yaml_file(path, "suite")
    model = Recipe._model_shorthand(data.get("model"))
    if task and isinstance(model, dict):  # anything else is left for validation to name
        data["model"] = {**model, "task": task}
    recipe = recipe_from_dict(data, source=str(path), lines=lines, base_dir=path.parent, evaluation_only=True)
    if recipe.evaluation is None:
        raise RecipeError(f"{path}: the suite has no 'evaluation' section")
    return recipe


def recipe_from_dict(
    data: dict[str, Any],
    source: str = "<recipe>",
    lines: dict[tuple, int] | None = None,
    overrides: list[str] | None = None,
    base_dir: Path | None = None,
    evaluation_only: bool = False,
) -> Recipe:
    """``evaluation_only``: a suite for `stagewise eval`, whose stages are dropped unread (so any
    recipe's probes can score any model, e.g. a reward model from one of its branch stages)."""
    load_plugins()
    lines = dict(lines or {})
    data = json.loads(json.dumps(data))  # deep copy; overrides never touch the caller's dict
    if evaluation_only:
        data["stages"] = []
    for text in overrides or []:
        parts, value = parse_override(text)
        apply_override(data, parts, value, text)
        lines.pop(tuple(int(p) if p.isdigit() else p for p in parts), None)
    try:
        recipe = Recipe.model_validate(data, context={"evaluation_only": evaluation_only})
    except ValidationError as exc:
        raise_validation_error(exc, source, lines, Recipe)
    _resolve_plugins(recipe, source, lines)
    _check_references(recipe, source, lines)
    _check_distributed(recipe, source, lines, base_dir)
    _check_precision(recipe, source, lines)
    if base_dir is not None:
        _resolve_paths(recipe, base_dir)
    return recipe


def _resolve_plugins(recipe: Recipe, source: str, lines: dict[tuple, int]) -> None:
    for index, stage in enumerate(recipe.stages):
        for field, registry in PLUGIN_FIELDS.items():
            setattr(
                stage, field, _parse_plugin(registry, getattr(stage, field), ("stages", index, field), source, lines)
            )
        stage.transforms = [
            _parse_plugin(TRANSFORMS, raw, ("stages", index, "transforms", position), source, lines)
            for position, raw in enumerate(stage.transforms)
        ]


def _parse_plugin(registry: Registry[Any, Any], raw: Any, loc: tuple, source: str, lines: dict[tuple, int]) -> Any:
    try:
        data = registry.normalize(raw)
        config_cls = registry.get(data["kind"]).config_cls
        return config_cls.model_validate(data)
    except ValidationError as exc:
        raise_validation_error(exc, source, lines, config_cls, prefix=loc)
    except RecipeError as err:
        line = line_for(loc, lines)
        where = f"{source} line {line}" if line else source
        raise RecipeError(f"{where}: {'.'.join(map(str, loc))}: {err}") from None


def _check_references(recipe: Recipe, source: str, lines: dict[tuple, int]) -> None:
    def fail(loc: tuple, message: str) -> None:
        line = line_for(loc, lines)
        where = f"{source} line {line}" if line else source
        raise RecipeError(f"{where}: {'.'.join(map(str, loc))}: {message}")

    for name in recipe.datasets:
        if not is_safe_name(name):
            fail(("datasets", name), f"dataset name {name!r}: expected {SAFE_NAME_HINT}")
    seen: set[str] = set()
    for index, stage in enumerate(recipe.stages):
        if stage.name in seen:
            fail(("stages", index, "name"), f"duplicate stage name {stage.name!r}")
        seen.add(stage.name)
        named = [(("data",), stage.data)] + ([(("eval",), stage.eval.data)] if stage.eval else [])
        named += [
            ((*field, key), [getattr(config, key)])
            for field, config in plugin_configs(stage)
            for key in config.dataset_fields
            if getattr(config, key) is not None
        ]
        for field, names in named:
            for name in names:
                if name not in recipe.datasets:
                    known = ", ".join(recipe.datasets) or "none"
                    fail(("stages", index, *field), f"unknown dataset {name!r} (datasets defined: {known})")
        for field, config in plugin_configs(stage):
            for key in config.stage_fields:
                problem = separate_model_problem(recipe, index, getattr(config, key))
                if problem:
                    fail(("stages", index, *field, key), problem)
            for key in config.named_model_fields:
                problem = named_model_problem(recipe, index, getattr(config, key))
                if problem:
                    fail(("stages", index, *field, key), problem)
        for position, transform in enumerate(stage.transforms):
            for name in getattr(transform, "datasets", None) or []:
                if name not in stage.data:
                    fail(
                        ("stages", index, "transforms", position, "datasets"),
                        f"{name!r} is not one of this stage's datasets ({', '.join(stage.data)})",
                    )
            if transform.datasets is None and not transform_targets(recipe, stage, transform):
                earlier = ", ".join(sorted(earlier_data(recipe, stage))) or "none, this is the first stage"
                fail(
                    ("stages", index, "transforms", position),
                    (
                        f"transform {transform.kind!r} replays data an earlier stage trained on, and none of this "
                        f"stage's datasets ({', '.join(stage.data)}) is such (earlier stages' data: {earlier}); add it "
                        "to `data` as a mixture (data: {new: 1.0, old: 0.1}) or name the datasets in `datasets`"
                    ),
                )
        if "fewshot" in {recipe.datasets[name].format for name in stage.data}:
            fail(("stages", index, "data"), "format 'fewshot' is for evaluation probes only, not training")
        formats = stage_formats(recipe, stage)  # after the transforms: a labelled set templated into instructions mixes
        if len({_objective(fmt) for fmt in formats}) > 1:
            fail(
                ("stages", index, "data"),
                f"cannot mix dataset formats {sorted(formats)} in one stage "
                "(template the labelled ones into instructions first)",
            )
        problem = stage_problem(recipe, stage) or merge_problem(recipe, index)
        if problem:
            fail(("stages", index, *problem[0]), problem[1])
    if recipe.evaluation:
        names: set[str] = set()
        for group in ("target", "retention"):
            for index, task in enumerate(getattr(recipe.evaluation, group)):
                if task.name in names:
                    fail(("evaluation", group, index, "name"), f"duplicate probe name {task.name!r}")
                names.add(task.name)
                problem = probe_problem(recipe, task) or recovery_problem(recipe, task, group)
                if problem:
                    fail(("evaluation", group, index, problem[0]), problem[1])
                if task.stage is not None and task.stage not in seen:
                    fail(("evaluation", group, index, "stage"), f"{task.stage!r} is not a stage of this recipe")
                if task.stage is not None and not METRICS.get(task.metric).traits.higher_is_better:
                    fail(
                        ("evaluation", group, index, "stage"),
                        f"a task probe needs an accuracy-like metric, not {task.metric!r} (lower is better)",
                    )
                if task.stage is not None and not recipe.evaluation.after_each_stage:
                    fail(("evaluation", "after_each_stage"), "task probes (stage:) need a score after every stage")
        problem = guard_problem(recipe)
        if problem:
            fail(("evaluation", "guard", problem[0]), problem[1])
    for name, dataset in recipe.datasets.items():
        sources = [
            dataset.path is not None,
            dataset.rows is not None,
            dataset.builtin is not None,
            dataset.hub is not None,
        ]
        if sum(sources) != 1:
            fail(("datasets", name), "expected exactly one of 'path', 'rows', 'builtin' or 'hub'")
        for key in ("subset", "revision", "data_files"):
            if getattr(dataset, key) is not None and dataset.hub is None:
                fail(("datasets", name, key), f"'{key}' applies to a 'hub' dataset only")


def builds_model(stage: StageConfig) -> bool:
    """Does this stage train a separate model (a reward model) rather than the one it hands on?"""
    return TRAINERS.get(stage.trainer.kind).traits.builds_model is not None


def separate_model_problem(recipe: Recipe, index: int, name: str | None) -> str | None:
    """A reference to a separate model (``reward_model: rm``) names an earlier stage that trains one."""
    if name is None:
        return None
    earlier = [stage.name for stage in recipe.stages[:index] if builds_model(stage)]
    if name not in earlier:
        return (
            f"{name!r} is not an earlier stage that trains a separate model such as a reward model "
            f"(earlier ones: {', '.join(earlier) or 'none'})"
        )
    return None


def named_model_problem(recipe: Recipe, index: int, name: str) -> str | None:
    """A whole model a stage names (a teacher) is ``base``, an earlier stage that hands its model on,
    or a local model folder (its vocabulary is compared with the student's when the stage starts)."""
    earlier = [stage.name for stage in recipe.stages[:index] if not builds_model(stage)]
    if name == BASE or name in earlier:
        return None
    if name in [stage.name for stage in recipe.stages]:
        return f"{name!r} is not an earlier stage that hands its model on (earlier: {', '.join(earlier) or 'none'})"
    if not (Path(name).expanduser() / "config.json").is_file():
        return (
            f"{name!r} is neither 'base', an earlier stage ({', '.join(earlier) or 'none'}) nor a local model "
            "folder with a config.json"
        )
    return None


def plugin_configs(stage: StageConfig) -> list[tuple[tuple[Any, ...], PluginConfig]]:
    """(key path in the stage, config) of every registered entry a stage uses."""
    return [((field,), getattr(stage, field)) for field in PLUGIN_FIELDS] + [
        (("transforms", i), t) for i, t in enumerate(stage.transforms)
    ]


def merge_problem(recipe: Recipe, index: int) -> tuple[tuple[Any, ...], str] | None:
    """A merge names the base or earlier stages, and a dev set a registered metric can score."""
    merge = recipe.stages[index].merge
    if merge is None:
        return None
    earlier = [stage.name for stage in recipe.stages[:index]]
    for key, name in [(("merge", "with"), merge.with_model)] + [
        (("merge", "add", i), n) for i, n in enumerate(merge.add)
    ]:
        if name != BASE and name not in earlier:
            return key, f"{name!r} is neither 'base' nor an earlier stage (earlier: {', '.join(earlier) or 'none'})"
    for name in merge.select.data if merge.select else []:
        if name not in recipe.datasets:
            return ("merge", "select", "data"), f"unknown dataset {name!r}"
        problem = probe_problem(recipe, EvalTaskConfig(name="merge-dev", data=name, metric=merge.select.metric))
        if problem:
            return ("merge", "select", problem[0]), problem[1]
    return None


def probe_problem(recipe: Recipe, task: EvalTaskConfig) -> tuple[str, str] | None:
    """(field, message) when a probe's metric is unknown or cannot score its data or model."""
    try:
        entry = METRICS.get(task.metric)
    except RecipeError as err:
        return "metric", str(err)
    if entry.traits.needs_data:
        if task.data is None:
            return "data", "required key 'data' is missing (the dataset to score)"
        if task.data not in recipe.datasets:
            return "data", f"unknown dataset {task.data!r}"
    problem = entry.traits.check(task) if entry.traits.check else None
    if problem:
        return problem
    if entry.traits.needs_data:
        data_format = recipe.datasets[task.data].format
        problem_text = entry.requires.problem(_objective(data_format), {data_format}, recipe.model.task)
        if problem_text:
            return "metric", f"metric {task.metric!r} {problem_text} (dataset {task.data!r})"
    return None


def guard_problem(recipe: Recipe) -> tuple[str, str] | None:
    """The guard names a retention probe and checks within every stage that sets max_steps."""
    guard = recipe.evaluation.guard if recipe.evaluation else None
    if guard is None:
        return None
    retention = [task.name for task in recipe.evaluation.retention]
    if guard.probe not in retention:
        return "probe", f"{guard.probe!r} is not a retention probe (retention probes: {', '.join(retention) or 'none'})"
    short = next((stage.name for stage in recipe.stages if 0 < stage.max_steps < guard.every_steps), None)
    if short is not None:
        return (
            "every_steps",
            f"{guard.every_steps} is more than stage {short!r}'s max_steps: the guard would never check",
        )
    return None


def recovery_problem(recipe: Recipe, task: EvalTaskConfig, group: str) -> tuple[str, str] | None:
    """``recovery_shots`` re-scores a retention probe's items as prompt/completion rows with examples."""
    if not task.recovery_shots:
        return None
    if group != "retention":
        return "recovery_shots", "splits a retention drop into format and knowledge loss: set it on retention probes"
    data_format = recipe.datasets[task.data].format if task.data else None
    if data_format not in ("instruction", "prompt_completion") or METRICS.get(task.metric).requires.problem(
        "lm", {"prompt_completion"}, recipe.model.task
    ):
        return "recovery_shots", (
            f"needs an instruction or prompt_completion probe scored by a generation or "
            f"likelihood metric (not {task.metric!r} on {data_format} data)"
        )
    return None


def stage_problem(recipe: Recipe, stage: StageConfig) -> tuple[tuple[Any, ...], str] | None:
    """(key path in the stage, message) when the stage's data does not fit its model, or one of its registered
    entries (selector, loss, LR rule, trainer, transforms) does not serve its data and model."""
    objective = stage_objective(recipe, stage)
    if objective == "classification" and recipe.model.task != "sequence_classification":
        return ("data",), "classification data needs model.task: sequence_classification"
    if objective != "classification" and recipe.model.task != "causal_lm":
        return ("data",), f"{recipe.datasets[stage.data[0]].format} data needs model.task: causal_lm"
    chain = format_chain(recipe, stage)  # each transform sees the rows the previous one returned
    formats = set(chain[-1].values())
    trainer_traits = TRAINERS.get(stage.trainer.kind).traits
    if stage.data_weights and not trainer_traits.samples_examples:
        return ("data",), (
            f"trainer {stage.trainer.kind!r} builds its own batches from the rows, so data weights "
            "(a mixture) do not apply; list the datasets without weights"
        )
    problem = trainer_traits.check(stage.trainer, formats, stage) if trainer_traits.check else None
    if problem:
        return ("trainer", problem[0]), problem[1]
    if stage.optim and stage.optimizer.kind != "hf":
        return ("optim",), (
            f"names a transformers optimizer, but `optimizer: {stage.optimizer.kind}` builds the "
            "stage's optimizer; remove one of them"
        )
    takes_loss = trainer_traits.takes_loss
    if not takes_loss and stage.loss.kind != "ce":
        return ("loss",), f"trainer {stage.trainer.kind!r} defines its own objective; remove `loss: {stage.loss.kind}`"
    used = [
        (
            ("transforms", i),
            TRANSFORMS,
            transform,
            {chain[i][name] for name in transform_targets(recipe, stage, transform)},
        )
        for i, transform in enumerate(stage.transforms)
        if transform_targets(recipe, stage, transform)
    ]
    used += [
        ((field,), registry, getattr(stage, field), formats)
        for field, registry in PLUGIN_FIELDS.items()
        if takes_loss or field != "loss"
    ]
    for field, registry, config, seen_formats in used:
        seen_objective = sorted({_objective(f) for f in seen_formats})[0]
        requires = registry.get(config.kind).requires
        problem = requires.problem(seen_objective, seen_formats, recipe.model.task)
        if not requires.sharded and recipe.distributed.fsdp:
            return field, (
                f"{registry.what} {config.kind!r} does not run on FSDP2 shards; drop distributed.fsdp "
                "(an add-on or preference stage of a 7-8B model fits one GPU) or choose another entry"
            )
        if requires.plain_weights and recipe.model.quantization is not None:
            return field, (
                f"{registry.what} {config.kind!r} trains or reads the base's weight matrices, which "
                "model.quantization holds in 4/8 bits; on a quantized base train an add-on (lora, prompt)"
            )
        if problem:
            others = [
                name
                for name in registry.serving(seen_objective, seen_formats, recipe.model.task)
                if name != config.kind
            ]
            hint = f" (this stage can use: {', '.join(others)})" if others else ""
            return field, f"{registry.what} {config.kind!r} {problem}{hint}"
    return None


def _check_precision(recipe: Recipe, source: str, lines: dict[tuple, int]) -> None:
    """Precision that this machine can run and ``model.dtype`` agrees with; what a 4/8-bit base cannot do."""
    from .precision import precision_problem

    def fail(loc: tuple, message: str) -> None:
        line = line_for(loc, lines)
        raise RecipeError(f"{source}{f' line {line}' if line else ''}: {'.'.join(map(str, loc))}: {message}")

    problem = precision_problem(recipe.performance.precision, recipe.model.dtype)
    if problem:
        fail(("performance", "precision"), problem)
    if recipe.model.quantization is None:
        return
    if recipe.distributed.fsdp or recipe.distributed.deepspeed:
        fail(
            ("model", "quantization"),
            "a 4/8-bit base is not sharded by FSDP or DeepSpeed here; drop "
            "distributed or train it on one device (QLoRA fits 8B models on one GPU)",
        )
    for index, stage in enumerate(recipe.stages):
        if stage.merge is not None:
            fail(
                ("stages", index, "merge"),
                "merges interpolate full weights, which model.quantization holds in "
                "4/8 bits; use lora with merge_on_save (the base is dequantized first)",
            )


def _check_distributed(recipe: Recipe, source: str, lines: dict[tuple, int], base_dir: Path | None) -> None:
    """FSDP2 or a DeepSpeed ZeRO-2 file (checked, and the package); ZeRO-3 and what cannot run
    sharded are refused here, each with one line."""
    import importlib.util

    dist = recipe.distributed

    def fail(field: str, message: str) -> NoReturn:
        line = line_for(("distributed", field), lines)
        raise RecipeError(f"{source}{f' line {line}' if line else ''}: distributed.{field}: {message}")

    if dist.fsdp and dist.deepspeed:
        fail("deepspeed", "choose one sharding engine: fsdp or deepspeed, not both")
    if dist.fsdp and recipe.evaluation and recipe.evaluation.guard:
        fail(
            "fsdp",
            "evaluation.guard scores the model in the middle of sharded training; drop the guard or distributed.fsdp",
        )
    if dist.fsdp and recipe.evaluation and recipe.evaluation.every != "stage":
        every = recipe.evaluation.every if isinstance(recipe.evaluation.every, str) else "{steps}"
        fail(
            "fsdp",
            f"evaluation.every: {every} scores the model in the middle of sharded training; score each "
            "stage (every: stage) instead",
        )
    if dist.deepspeed:
        found, config = _deepspeed_config(dist.deepspeed, base_dir, fail)
        dist.deepspeed = str(found)
        stage = (config.get("zero_optimization") or {}).get("stage") if isinstance(config, dict) else None
        if stage == 3:
            fail(
                "deepspeed",
                "ZeRO-3 shards the weights where stagewise's selectors, regularizers, LR rules and "
                "merges cannot see them; use distributed: {fsdp: true} (FSDP2), or ZeRO-2",
            )
        if importlib.util.find_spec("deepspeed") is None:
            fail("deepspeed", "the deepspeed package is not installed (pip install deepspeed)")


def _deepspeed_config(value: str, base_dir: Path | None, fail: Callable[[str, str], NoReturn]) -> tuple[Path, Any]:
    """The DeepSpeed JSON's path (a relative one is looked up beside the recipe too) and content."""
    candidates = [Path(value)] + ([base_dir / value] if base_dir and not Path(value).is_absolute() else [])
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        fail("deepspeed", f"file {value!r} not found")
    try:
        config = json.loads(read_text_file(found, "config"))
    except json.JSONDecodeError as err:
        fail("deepspeed", f"{found} line {err.lineno}: invalid JSON ({err.msg})")
    return found, config


def _objective(data_format: str) -> str:
    return {"classification": "classification", "preference": "preference", "feedback": "feedback"}.get(
        data_format, "lm"
    )


def transform_targets(recipe: Recipe, stage: StageConfig, transform: Any) -> list[str]:
    """The stage datasets a transform rewrites (:meth:`TransformConfig.targets`)."""
    return transform.targets(list(stage.data), earlier_data(recipe, stage))


def earlier_data(recipe: Recipe, stage: StageConfig) -> set[str]:
    """The datasets the stages before ``stage`` trained on."""
    names = [other.name for other in recipe.stages]
    index = names.index(stage.name) if stage.name in names else len(names)
    return {name for other in recipe.stages[:index] for name in other.data}


def format_chain(recipe: Recipe, stage: StageConfig) -> list[dict[str, str]]:
    """Each dataset's format as it enters each of the stage's transforms, then as the stage trains
    on it (a transform may return another format: labelled rows templated into instructions)."""
    chain = [{name: recipe.datasets[name].format for name in stage.data}]
    for transform in stage.transforms:
        output = TRANSFORMS.get(transform.kind).traits.output_format
        chain.append(
            {
                name: output if output and name in transform_targets(recipe, stage, transform) else fmt
                for name, fmt in chain[-1].items()
            }
        )
    return chain


def stage_formats(recipe: Recipe, stage: StageConfig) -> set[str]:
    """The formats of the rows the stage trains on."""
    return set(format_chain(recipe, stage)[-1].values())


def stage_objective(recipe: Recipe, stage: StageConfig) -> str:
    """'lm' (next-token), 'classification', 'preference' or 'feedback', from the format of the
    rows the stage trains on."""
    return _objective(sorted(stage_formats(recipe, stage))[0])


def _resolve_paths(recipe: Recipe, base_dir: Path) -> None:
    """Dataset paths are relative to the recipe file unless they exist as given."""
    import glob

    for dataset in recipe.datasets.values():
        if dataset.path and not Path(dataset.path).is_absolute() and not glob.glob(dataset.path):
            candidate = base_dir / dataset.path
            if glob.glob(str(candidate)):
                dataset.path = str(candidate)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    return json.loads(recipe.model_dump_json())


def config_hash(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (stage config, inputs, parent hash)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
