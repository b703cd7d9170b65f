"""The one place strategies register, and what each entry declares.

Extension points: trainable **selectors**, **losses**, **regularizers**, **LR rules**, **optimizers**,
data **transforms**, **trainers**, evaluation **metrics**, model **add-ons** (an adapter or soft prompt attached to
the model) and CLI **commands**. A strategy is a folder under ``stagewise/strategies`` whose
``__init__`` registers into some of them with a pydantic config class, what the entry
*requires* of the stage (data objective and format, model task) and the point's *traits*
(e.g. a selector that wraps the model), like a PEFT tuner registering its config and model.
The engine asks the entry instead of naming it: ``config`` checks every stage's entries
against its data and model at validation time, and the shared test matrix runs every entry.
Each point's call shape is a typed protocol beside its context in ``protocols.py`` (``Selector``,
``LossBuilder``, ``Regularizer``, ``LrRule``, ``OptimizerBuilder``, ``Transform``, ``TrainerFactory``,
``Metric``, ``AddOn``), the bottom of the package: this module and every implementation import it,
it imports nothing of stagewise (``tests/test_layout.py`` keeps the import graph free of circles).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Generic, TypeVar

from pydantic import ConfigDict

from .errors import RecipeError
from .schema import StrictModel

if TYPE_CHECKING:
    import argparse

    from .protocols import (
        AddOn,
        LossBuilder,
        LrRule,
        Metric,
        OptimizerBuilder,
        Regularizer,
        Selector,
        TrainerFactory,
        Transform,
    )

Impl = TypeVar("Impl")
Traits = TypeVar("Traits")


class PluginConfig(StrictModel):
    """Base of every registered entry's options; ``kind`` names the entry. Fields listed in
    ``dataset_fields`` name recipe datasets: validation checks them and the stage hash covers
    their content."""

    model_config = ConfigDict(frozen=True, validate_assignment=False)
    dataset_fields: ClassVar[tuple[str, ...]] = ()
    stage_fields: ClassVar[
        tuple[str, ...]
    ] = ()  # fields naming an earlier stage whose separate model (e.g. a reward model) this entry uses
    named_model_fields: ClassVar[
        tuple[str, ...]
    ] = ()  # fields naming a whole model: base, an earlier stage or a local folder
    kind: str

    def datasets_named(self) -> list[str]:
        return [getattr(self, name) for name in self.dataset_fields if getattr(self, name) is not None]


class TransformConfig(PluginConfig):
    """Options every data transform takes. ``datasets`` limits it to some of the stage's datasets
    (template one labelled set among ready-made instruction sets); unset, it rewrites them all."""

    datasets: list[str] | None = None

    def targets(self, stage_data: list[str], earlier_data: set[str]) -> list[str]:
        """The stage datasets it rewrites: those ``datasets`` lists, else all of them (a transform that
        replays earlier stages' data narrows the default to those)."""
        return list(stage_data) if self.datasets is None else [name for name in stage_data if name in self.datasets]


@dataclass(frozen=True)
class Requires:
    """What an entry needs from the stage (or probe) it is used in; ``None`` = anything."""

    objectives: tuple[str, ...] | None = None  # data objectives: lm, classification, preference
    formats: tuple[str, ...] | None = None  # data formats (finer: instruction, text, ...)
    # or: the FormatTraits every format of the data must have (e.g. ("generative",)): a format
    # registered later with that trait is served with no edit here
    format_traits: tuple[str, ...] = ()
    model_tasks: tuple[str, ...] | None = None  # causal_lm, sequence_classification
    plain_weights: bool = (
        False  # trains or reads the base's weight matrices: not on a 4/8-bit base (model.quantization)
    )
    sharded: bool = True  # runs on FSDP2 shards (distributed.fsdp); False: refused at validate
    # why it cannot run under DeepSpeed ZeRO (distributed.deepspeed), refused at validate: a reason,
    # or a function of the entry's config giving one (None: it runs there)
    deepspeed_problem: str | Callable[[Any], str | None] | None = None

    def under_deepspeed(self, config: Any) -> str | None:
        problem = self.deepspeed_problem
        return problem(config) if callable(problem) else problem

    def problem(self, objective: str, formats: set[str], model_task: str) -> str | None:
        """Why this entry cannot serve a stage with this data and model, or None."""
        if self.objectives is not None and objective not in self.objectives:
            return f"takes {' or '.join(self.objectives)} data, not {objective}"
        allowed = self.allowed_formats()
        if allowed is not None and not formats <= set(allowed):
            return f"takes data of format {' or '.join(allowed)}, not {', '.join(sorted(formats))}"
        if self.model_tasks is not None and model_task not in self.model_tasks:
            return f"needs model.task {' or '.join(self.model_tasks)}, not {model_task}"
        return None

    def allowed_formats(self) -> tuple[str, ...] | None:
        """The data formats served (None: any): ``formats``, narrowed to those with ``format_traits``."""
        if self.formats is None and not self.format_traits:
            return None
        names = self.formats if self.formats is not None else tuple(DATA_FORMATS.names())
        return tuple(name for name in names if all(format_has(name, trait) for trait in self.format_traits))


@dataclass(frozen=True)
class NoTraits:
    """Points whose entries declare nothing beyond their requirements."""


@dataclass(frozen=True)
class SelectorTraits:
    wraps_model: bool = False  # attaches (or trains) an add-on: gets the wrapped model, trains only the add-on


@dataclass(frozen=True)
class TransformTraits:
    stage_wide: bool = False  # one pass over all of its datasets together (not one per dataset)
    output_format: str | None = None  # the data format of the rows it returns (None: the format it received)


@dataclass(frozen=True)
class TrainerTraits:
    takes_loss: bool = True  # trains with the stage's `loss` (False: the trainer defines its own objective)
    samples_examples: bool = True  # batches the engine's encoded examples (so a data mixture's sampler applies)
    # builds_model(model, seed) -> the model this trainer trains instead (a reward model on the entering
    # model's backbone). Such a stage branches: its model is saved in its folder for later stages to name,
    # and the next stage starts from the model that entered it.
    builds_model: Callable[[Any, int], Any] | None = None
    # (config, data formats, the stage or None) -> (key under trainer, problem) or None
    check: Callable[[Any, set[str], Any], tuple[str, str] | None] | None = None


@dataclass(frozen=True)
class MetricTraits:
    higher_is_better: bool = True
    needs_data: bool = True  # scores one of the recipe's datasets (False: loads its own, e.g. lm-eval)
    check: Callable[[Any], tuple[str, str] | None] | None = None  # probe validation: (key, problem) or None


@dataclass(frozen=True)
class FormatTraits:
    fields: tuple[str, ...] = ()  # required in every row
    optional: tuple[str, ...] = ()
    objective: str = "lm"  # lm, classification, preference or feedback: which trainers and losses take it
    trainable: bool = True  # False: evaluation probes only
    # more row checks: (row, where) -> None, raising DataError with ``where`` (a file and line)
    check: Callable[[dict[str, Any], str], None] | None = None
    answer_field: str | None = None  # the field holding a row's one gold answer: likelihood probes score it,
    # recovery probes show it as an example, on-policy replay regenerates it
    has_prompt: bool = False  # rows hold a prompt a model answers: the KL predictor samples answers to it
    generative: bool = False  # a greedy answer to the row's prompt is checked against its gold (generation metrics)
    gold: Callable[[dict[str, Any]], str] | None = None  # the row's gold answer text, where it is not one
    # answer_field (a chat's last assistant turn)


@dataclass(frozen=True)
class MergeTraits:
    interpolates: bool = False  # between two models: alpha in [0, 1], no `add` (else task-vector scales >= 0)
    whole_checkpoints: bool = False  # merges whole checkpoints (on disk), not tensor by tensor
    package: str | None = None  # the module it runs through, checked at validate


@dataclass(frozen=True)
class Entry(Generic[Impl, Traits]):
    name: str
    config_cls: type[PluginConfig]
    impl: Impl
    requires: Requires
    traits: Traits
    example: dict[str, Any] = field(default_factory=dict)  # a minimal valid config (docs, shared tests)
    # plan(config, PlanContext) -> {part: bytes per device} this entry holds beyond the model's own
    # training state (an anchor copy, a reference model, a KV cache): `stagewise plan` counts it
    plan: Callable[[Any, Any], dict[str, float]] | None = None


class Registry(Generic[Impl, Traits]):
    """Name -> entry for one extension point."""

    def __init__(self, what: str, traits_cls: type[Traits]) -> None:
        self.what = what
        self.traits_cls = traits_cls
        self._entries: dict[str, Entry[Impl, Traits]] = {}

    def register(
        self,
        name: str,
        config_cls: type[PluginConfig] | None = None,
        *,
        requires: Requires | None = None,
        traits: Traits | None = None,
        example: dict[str, Any] | None = None,
        plan: Callable[[Any, Any], dict[str, float]] | None = None,
    ) -> Callable[[Impl], Impl]:
        """Decorator: ``@SELECTORS.register("hft", HFTConfig)`` on the implementation.

        ``example`` is the entry's smallest valid recipe value beyond ``kind`` (required keys);
        the shared test matrix builds every entry from it."""

        def decorate(impl: Impl) -> Impl:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._entries[name] = Entry(
                name,
                config_cls or PluginConfig,
                impl,
                requires or Requires(),
                traits if traits is not None else self.traits_cls(),
                dict(example or {}),
                plan,
            )
            return impl

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[Impl, Traits]]:
        return [self._entries[name] for name in self.names()]

    def get(self, name: str) -> Entry[Impl, Traits]:
        try:
            return self._entries[name]
        except KeyError:
            hint = difflib.get_close_matches(name, self._entries, n=1)
            maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise RecipeError(
                f"unknown {self.what} {name!r}{maybe}; expected one of: {', '.join(self.names())}"
            ) from None

    def normalize(self, raw: Any) -> dict[str, Any]:
        """Accept ``"name"`` or ``{kind: name, ...}`` and return the dict form."""
        if isinstance(raw, PluginConfig):
            return raw.model_dump()
        if isinstance(raw, str):
            return {"kind": raw}
        if isinstance(raw, dict) and isinstance(raw.get("kind"), str):
            return dict(raw)
        raise RecipeError(f"expected a {self.what} name or a mapping with 'kind', got {raw!r}")

    def impl(self, config: PluginConfig) -> Impl:
        return self.get(config.kind).impl

    def serving(self, objective: str, formats: set[str], model_task: str) -> list[str]:
        """Entries that accept this data and model (for 'use X instead' hints)."""
        return [e.name for e in self.entries() if e.requires.problem(objective, formats, model_task) is None]


SELECTORS: Registry[Selector, SelectorTraits] = Registry("trainable selector", SelectorTraits)
LOSSES: Registry[LossBuilder, NoTraits] = Registry("loss", NoTraits)
REGULARIZERS: Registry[Regularizer, NoTraits] = Registry("regularizer", NoTraits)
LR_RULES: Registry[LrRule, NoTraits] = Registry("lr_rule", NoTraits)
OPTIMIZERS: Registry[OptimizerBuilder, NoTraits] = Registry("optimizer", NoTraits)
TRANSFORMS: Registry[Transform, TransformTraits] = Registry("data transform", TransformTraits)
TRAINERS: Registry[TrainerFactory, TrainerTraits] = Registry("trainer", TrainerTraits)
METRICS: Registry[Metric, MetricTraits] = Registry("metric", MetricTraits)
ADDONS: Registry[AddOn, NoTraits] = Registry("add-on", NoTraits)
# (row, tokenizer, template) -> (segments, whether we add special tokens): how an LM format's row is
# split into masked and trained text (data.tokenize); non-LM formats' impl says it is not one
DATA_FORMATS: Registry[Callable[..., Any], FormatTraits] = Registry("data format", FormatTraits)
# per tensor: (alpha, tuned tensors, anchor tensor) -> merged; whole_checkpoints: (config, alpha, model,
# tuned state dicts, anchor state dict, seed) -> merged state dict
MERGE_METHODS: Registry[Callable[..., Any], MergeTraits] = Registry("merge method", MergeTraits)
# (**builder options) -> {split: rows}: the built-in datasets a recipe names as `builtin: name:split` (stagewise.bench)
BENCHMARKS: Registry[Callable[..., dict[str, list[dict[str, Any]]]], NoTraits] = Registry(
    "built-in benchmark", NoTraits
)


def format_has(data_format: str | None, trait: str) -> bool:
    """Whether a registered data format has ``trait`` (a FormatTraits field set)."""
    return data_format in DATA_FORMATS.names() and bool(getattr(DATA_FORMATS.get(data_format).traits, trait))


def formats_with(trait: str) -> tuple[str, ...]:
    """The registered data formats that have ``trait``."""
    return tuple(name for name in DATA_FORMATS.names() if format_has(name, trait))


COMMANDS: Registry[Callable[[argparse._SubParsersAction], None], NoTraits] = Registry("command", NoTraits)


BUILT_IN = (
    "selection",
    "losses",
    "regularizers",
    "schedules",
    "optimizers",
    "transforms",
    "trainers",
    "eval",
    "merging",
    "data.formats",
)  # each extension point's own module, with its built-in entries (full, ce, none, uniform, hf, linear)


def load_plugins() -> None:
    """Import every module that registers entries: the extension points' own modules, then every
    folder under ``strategies/`` and each module in it (a strategy's CLI command, say), so no list
    is kept anywhere (idempotent; imports are cached)."""
    import importlib
    import pkgutil

    for module in BUILT_IN:
        importlib.import_module(f"{__package__}.{module}")
    strategies = importlib.import_module(f"{__package__}.strategies")
    found = pkgutil.walk_packages(strategies.__path__, prefix=f"{strategies.__name__}.")  # folders and their modules
    for module in sorted(info.name for info in found):
        importlib.import_module(module)
