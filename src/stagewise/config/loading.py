"""From a YAML file (or dict) and overrides to a checked :class:`Recipe`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import RecipeError
from ..registry import (
    load_plugins,
)
from .checks import check_distributed, check_precision, check_references
from .messages import raise_validation_error
from .overrides import apply_override, parse_override
from .schema import Recipe
from .yaml_lines import read_yaml_file


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
    check_references(recipe, source, lines)
    deepspeed = check_distributed(recipe, source, lines, base_dir)
    check_precision(recipe, source, lines)
    return with_found_files(recipe, deepspeed, base_dir)


def with_found_files(recipe: Recipe, deepspeed: str | None, base_dir: Path | None) -> Recipe:
    """The recipe with the files it names as found: the DeepSpeed file, and dataset paths relative
    to the recipe's folder unless they exist as given (a copy: the validated recipe is not changed)."""
    import glob

    datasets = dict(recipe.datasets)
    for name, dataset in recipe.datasets.items():
        if base_dir and dataset.path and not Path(dataset.path).is_absolute() and not glob.glob(dataset.path):
            candidate = base_dir / dataset.path
            if glob.glob(str(candidate)):
                datasets[name] = dataset.model_copy(update={"path": str(candidate)})
    distributed = recipe.distributed.model_copy(update={"deepspeed": deepspeed})
    return recipe.model_copy(update={"datasets": datasets, "distributed": distributed})


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    return json.loads(recipe.model_dump_json())


def config_hash(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (stage config, inputs, parent hash)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
