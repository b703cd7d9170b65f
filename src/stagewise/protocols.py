"""The call shape of every extension point, at the bottom of the package.

One typed protocol per point, beside the context its entries receive: selectors, add-ons, LR
rules, regularizers, losses, data transforms, optimizers, trainers and metrics. The registry
(``registry.py``) types its entries with them and every implementation imports them from here;
this module imports nothing of stagewise, so no import circle can run through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar, cast

import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments


@dataclass
class Selection:
    """What a selector may hand back besides ``requires_grad`` flags."""

    model: torch.nn.Module | None = None  # a replacement: the model wrapped with an adapter or prompt
    callbacks: list[Any] = field(default_factory=list)


class Selector(Protocol):
    """Sets ``requires_grad`` on ``model``'s parameters; may return a :class:`Selection`."""

    def __call__(self, model: torch.nn.Module, config: Any, context: SelectionContext) -> Selection | None: ...


@dataclass(frozen=True)
class SelectionContext:
    """What a selector may depend on besides the model: the stage's seed and position, and the
    encoded examples of any recipe dataset (a data-aware initialisation such as CorDA's)."""

    seed: int = 42
    stage_index: int = 0
    examples_of: Callable[[str], list[dict[str, Any]]] | None = None
    collator: Any = None


class AddOn(Protocol):
    marker: str  # substring of the add-on's parameter names (and of nothing else)

    def attached(self, model: torch.nn.Module) -> bool:
        """Does ``model`` carry this add-on?"""

    def for_saving(self, model: torch.nn.Module, selector: Any) -> torch.nn.Module:
        """The model to save and hand to the next stage (e.g. the adapter merged in)."""

    def for_probe(self, model: torch.nn.Module, probe: Any, group: str) -> torch.nn.Module:
        """The model that scores ``probe`` of ``group`` (target/retention): with or without the add-on."""


GroupSplitter = Callable[[torch.nn.Module, list[dict[str, Any]]], list[dict[str, Any]]]


@dataclass(frozen=True)
class LrRuleContext:
    base_lr: float


@dataclass
class LrPlan:
    split_groups: GroupSplitter | None = None
    callbacks: list[TrainerCallback] = field(default_factory=list)


class LrRule(Protocol):
    """Plans the stage's optimizer groups and LR callbacks for ``model`` (already selected)."""

    def __call__(self, config: Any, model: torch.nn.Module, context: LrRuleContext) -> LrPlan: ...


class Penalty(Protocol):
    def value(self) -> float:
        """The penalty at the current weights (for the logs)."""

    def add_gradients(self, scale: float) -> None:
        """Add ``scale`` × the penalty's gradient to each trainable tensor's ``.grad``."""

    def follow(self, model: torch.nn.Module) -> None:
        """Act on ``model``'s parameters from now on: sharding (FSDP2) replaced the tensors the
        penalty was built on by shards of the same names."""


@dataclass(frozen=True)
class RegularizerContext:
    """What a regularizer may use besides the model: the encoded examples of any recipe dataset
    (EWC's Fisher data), the collator, the entering model's identity (for caches), a log."""

    examples_of: Callable[[str], list[dict[str, Any]]]
    collator: Any
    model_key: str
    stage_dir: Path
    log: Callable[[str], None]


class Regularizer(Protocol):
    def __call__(self, config: Any, model: torch.nn.Module, context: RegularizerContext) -> Penalty | None: ...


LossFn = Callable[..., object]  # (outputs, labels, num_items_in_batch) -> loss tensor


@dataclass(frozen=True)
class LossContext:
    """What a loss may depend on: the stage objective and, for classification, class counts."""

    objective: str
    class_counts: list[int] = field(default_factory=list)


class LossBuilder(Protocol):
    """Builds the stage's loss function; ``None`` = the model's own loss."""

    def __call__(self, config: Any, context: LossContext) -> LossFn | None: ...


@dataclass
class TransformContext:
    model: Any
    tokenizer: Any
    dataset_name: str
    dataset: Any  # the dataset's config.DatasetConfig (its format and template)
    model_key: str  # identity of the model entering the stage
    seed: int
    stage_dir: Path
    log: Callable[[str], None]
    load_seed_model: Callable[[], tuple[Any, Any]]  # the run's starting model (for "before" categories)
    seed_model_key: str
    rows_of: Callable[[str], list[dict[str, Any]]]  # any recipe dataset's rows (e.g. prompts to answer)
    stage_folder: Callable[[str], Path]  # a finished earlier stage's folder, by name (its reward model)


class Transform(Protocol):
    """Rewrites or selects one dataset's rows (all of the stage's, if stage-wide); returns the
    new rows and a small report for the manifest (counts; shown if no row is left)."""

    def __call__(
        self, rows: list[dict[str, Any]], config: Any, context: TransformContext
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]: ...


ParamGroups = list[dict[str, Any]]  # torch optimizer groups: {"params": [...], "weight_decay": ..., "lr"?: ...}


class OptimizerBuilder(Protocol):
    """Builds the stage's optimizer over ``groups``; ``None`` = the Trainer's own (``optim``)."""

    def __call__(self, config: Any, groups: ParamGroups, args: TrainingArguments) -> torch.optim.Optimizer | None: ...


OptimizerMaker = Callable[[ParamGroups, TrainingArguments], "torch.optim.Optimizer | None"]


ArgsT = TypeVar("ArgsT", bound=TrainingArguments)


class ArgumentsFor(Protocol):
    """The stage's training arguments as ``cls`` (TrainingArguments or a TRL config), plus ``extra``."""

    def __call__(self, cls: type[ArgsT], /, **extra: Any) -> ArgsT: ...


@dataclass
class TrainerInputs:
    model: torch.nn.Module  # a PreTrainedModel, perhaps adapter-wrapped (PeftModel) or sharded in place
    tokenizer: Any
    rows: list[dict[str, Any]]  # the stage's training rows after transforms (raw)
    examples: list[dict[str, Any]]  # the same rows encoded for the model (input_ids, labels)
    dev: Mapping[str, torch.utils.data.Dataset] | None  # held-out sets scored each epoch (select_best)
    collator: Any
    loss: LossFn | None  # the stage's loss (None: the model's own)
    split_groups: GroupSplitter | None  # the LR rule's optimizer-group split
    callbacks: list[TrainerCallback]
    args_for: ArgumentsFor  # args_for(TrainingArguments or a TRL config class, **extra): the stage's arguments
    penalty: Penalty | None = None  # the stage's regularizer: its gradient joins every backward
    sampler: torch.utils.data.Sampler | None = None  # a weighted data mixture's per-epoch draw over ``examples``
    stage_folder: Callable[[str], Path] | None = None  # an earlier stage's saved folder by name (its reward model)
    model_named: Callable[[str], Any] | None = None  # base, an earlier stage or a folder, whole and frozen (a teacher)
    weights_named: Callable[[str], Any] | None = (
        None  # base's or an earlier stage's weights, tensor by tensor (None: a folder)
    )
    prompts: Callable[[], list[str]] | None = None  # each row's prompt as training renders it (on-policy trainers)
    batch_size: int = 8  # the stage's batch_size (rows, or prompts, per device step)
    build_optimizer: OptimizerMaker | None = None  # the stage's optimizer entry over the groups (None: the Trainer's)

    @property
    def pretrained(self) -> PreTrainedModel:
        """``model`` typed as TRL's trainers take it (they also accept the PEFT-wrapped model)."""
        return cast(PreTrainedModel, self.model)

    def stage_features(self) -> dict[str, Any]:
        """Keyword arguments of a :func:`stage_trainer_class` trainer: LR groups, optimizer, penalty, sampler."""
        return {
            "split_groups": self.split_groups,
            "build_optimizer": self.build_optimizer,
            "penalty": self.penalty,
            "train_sampler": self.sampler,
        }


class TrainerFactory(Protocol):
    def __call__(self, config: Any, inputs: TrainerInputs) -> Trainer: ...


class Metric(Protocol):
    """Scores ``rows`` of a probe; returns ``score``, ``scores`` and per-item ``items`` (id, score)."""

    def __call__(
        self, model: Any, tokenizer: Any, task: Any, dataset: Any, rows: list[dict[str, Any]], evaluation: Any, /
    ) -> dict[str, Any]: ...
