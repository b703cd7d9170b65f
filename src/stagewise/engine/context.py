"""What the engine hands a stage and gets back: the stage's context (recipe, place, folder, data,
who the entering model is) and its result (counts, times, metrics, what its transforms did)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from ..config import Recipe, StageConfig
from ..data import LoadedDataset
from ..merging import WeightSource

ADAPTER_DIR = "adapter"


@dataclass
class StageResult:
    trainable_params: int
    total_params: int
    train_rows: int
    train_tokens: int
    wall_time_s: float
    tokens_per_s: float
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: str | None = None
    transforms: list[dict[str, Any]] = field(default_factory=list)
    merge: dict[str, Any] | None = None  # the merge's chosen coefficient and the dev score of each
    mixture: dict[str, Any] | None = None  # a weighted data mixture's realised rows per epoch


@dataclass(frozen=True)
class ModelIdentity:
    """Who the model entering a stage is, for caches of model-generated data."""

    key: str  # hash chain of the stages that produced it
    seed_key: str  # the run's starting model
    load_seed: Callable[[], tuple[Any, Any]]  # reload the starting model when needed
    weights_of: Callable[[str], WeightSource]  # the starting model's ("base") or a finished stage's weights
    folder_of: Callable[[str], Path]  # a finished stage's saved folder, by name (a reward model's)
    model_of: Callable[[str], Any]  # base, a finished stage or a folder as a whole frozen model (a teacher)


@dataclass(frozen=True)
class StageContext:
    """What training one stage needs besides the model and tokenizer: the recipe and the stage's
    place in it, its folder, the loaded datasets, who the entering model is, callbacks and the log."""

    recipe: Recipe
    index: int
    datasets: dict[str, LoadedDataset]
    stage_dir: Path
    identity: ModelIdentity
    callbacks: list[TrainerCallback] = field(default_factory=list)
    log: Callable[[str], None] = print

    @property
    def stage(self) -> StageConfig:
        return self.recipe.stages[self.index]
