"""The models and folders a stage names: the run's starting model (``base``), an earlier stage's
output or a local folder — as plain weights (an anchor, a merge) or a whole frozen model (a
teacher, the KL reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..addons import merges_into_weights
from ..config import Recipe, builds_model
from ..merging import BASE, HeldWeights, SafetensorsWeights, WeightSource, plain_weights
from ..models import load_pretrained, load_stage_output, on_local_device, seed_weights_folder
from ..precision import load_dtype
from .context import ADAPTER_DIR


def stage_dir_name(index: int, name: str) -> str:
    return f"{index}-{name}"


def named_weights(recipe: Recipe, load_seed: Callable[[], tuple[Any, Any]], name: str) -> WeightSource:
    """The plain weights of the run's starting model (``base``) or a finished stage, by name: read
    tensor by tensor from the safetensors of its folder where it has them as plain weights, else
    from the loaded model (a stage with an adapter, a classifier's new head, a hub model not cached)."""
    folder = seed_weights_folder(recipe.model) if name == "base" else named_folder(recipe, name)
    files = sorted(folder.glob("*.safetensors")) if folder is not None else []
    if folder is not None and files and not (folder / ADAPTER_DIR).is_dir():
        return SafetensorsWeights(files)
    if name == "base":
        return HeldWeights(plain_weights(load_seed()[0])[1])
    index = next(i for i, stage in enumerate(recipe.stages) if stage.name == name)
    model = load_stage_output(stage_folder(recipe, index), recipe.model, recipe.performance.precision)[0]
    return HeldWeights(plain_weights(model)[1])


def named_model(recipe: Recipe, load_seed: Callable[[], tuple[Any, Any]], name: str) -> Any:
    """A whole, frozen copy of the run's starting model (``base``), a finished stage's model (its
    adapter merged in) or a local model folder: a distillation teacher."""
    if name == BASE:
        model = load_seed()[0]
    elif name in [stage.name for stage in recipe.stages]:
        model = load_stage_output(named_folder(recipe, name), recipe.model, recipe.performance.precision)[0]
    else:
        folder_config = recipe.model.model_copy(update={"model_name_or_path": name, "revision": None})
        model = load_pretrained(
            Path(name), folder_config, dtype=load_dtype(recipe.performance.precision, recipe.model.dtype)
        )[0]
    if merges_into_weights(model):
        model = model.merge_and_unload()
    for param in model.parameters():
        param.requires_grad_(False)
    return on_local_device(model).eval()


def named_folder(recipe: Recipe, name: str) -> Path:
    """A finished stage's saved folder, by stage name."""
    return stage_folder(recipe, next(i for i, stage in enumerate(recipe.stages) if stage.name == name))


def entering_stage(recipe: Recipe, index: int) -> int:
    """The stage whose model enters stage ``index`` (-1: the starting model): the last earlier
    stage that hands its model on (a stage that builds a separate model, e.g. a reward model, does not)."""
    return next((i for i in range(index - 1, -1, -1) if not builds_model(recipe.stages[i])), -1)


def stage_folder(recipe: Recipe, index: int) -> Path:
    return Path(recipe.output_dir) / stage_dir_name(index, recipe.stages[index].name)
