"""The study file: arms (a recipe plus overrides, optionally a sweep of one key), seeds, a
baseline arm; every run it implies, validated before anything runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from ..config import Recipe, line_for, load_recipe, raise_validation_error, read_yaml_file
from ..errors import RecipeError, StagewiseError
from ..schema import SAFE_NAME_HINT, StrictModel, is_safe_name


class SweepConfig(StrictModel):
    """One recipe key and its values: each value is a run (per seed), in this order along the curve."""

    key: str                                    # a dotted override path, e.g. stages.0.lr
    values: list[Any] = Field(min_length=1)


class ArmConfig(StrictModel):
    recipe: str                                 # a recipe file (relative to the study file) or bundled name
    overrides: list[str] = Field(default_factory=list)
    sweep: SweepConfig | None = None


class StudyConfig(StrictModel):
    description: str = ""
    arms: dict[str, ArmConfig] = Field(min_length=2)
    baseline: str                               # the arm every other arm is compared with, item by item
    seeds: list[int] = Field(min_length=1)      # applied to every stage's seed
    overrides: list[str] = Field(default_factory=list)  # applied to every arm first (e.g. smaller data)
    match_on: str | None = None                 # target probe whose gain is matched (default: the first)
    gain_levels: list[float] = Field(default_factory=list)  # more gain levels to read retention at
    bootstrap: int = Field(default=2000, ge=100)  # bootstrap resamples per interval
    output_dir: str = "runs/study"

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("seeds must be distinct")
        return value


@dataclass(frozen=True, eq=False)  # hashed by identity: one key per run in the study's maps
class StudyRun:
    arm: str
    seed: int
    sweep_value: Any | None
    recipe: Recipe
    recipe_path: Path

    @property
    def point(self) -> str:
        """The arm's curve point this run belongs to (its sweep value, or the arm itself)."""
        return self.arm if self.sweep_value is None else f"{self.arm}@{self.sweep_value}"


@dataclass(frozen=True)
class Study:
    config: StudyConfig
    source: Path
    runs: list[StudyRun]
    match_on: str
    all_arms: tuple[str, ...]                   # every arm of the file (``config.arms`` may be a subset)

    @property
    def report_dir(self) -> Path:
        """Where study.json/md and the plots go: the output folder, or a subfolder named after
        the arms when only some of the file's arms were chosen (so a subset never overwrites the
        whole study's report; the runs themselves are shared)."""
        out = Path(self.config.output_dir)
        return out if tuple(self.config.arms) == self.all_arms else out / f"arms-{'+'.join(self.config.arms)}"


def select_arms(study: Study, names: list[str]) -> Study:
    """The study restricted to ``names`` (the baseline always stays: every arm is compared with it)."""
    unknown = [name for name in names if name not in study.config.arms]
    if unknown:
        raise RecipeError(f"--arms: {', '.join(map(repr, unknown))} not in {study.source} "
                          f"(arms: {', '.join(study.config.arms)})")
    keep = [name for name in study.config.arms if name in names or name == study.config.baseline]
    config = study.config.model_copy(update={"arms": {name: study.config.arms[name] for name in keep}})
    return Study(config, study.source, [run for run in study.runs if run.arm in keep], study.match_on, study.all_arms)


def _sweep_label(key: str, value: Any) -> str:
    text = f"{key.split('.')[-1]}={value}"
    return "".join(c if c.isalnum() or c in "._+=-" else "_" for c in text)


def load_study(path: str | Path, find_recipe: Any) -> Study:
    """Read, validate and expand a study file; every problem is one line with the file and line."""
    path = Path(path)
    data, lines = read_yaml_file(path, "study")
    try:
        config = StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise_validation_error(exc, str(path), lines, StudyConfig)

    def fail(loc: tuple, message: str) -> None:
        line = line_for(loc, lines)
        raise RecipeError(f"{path}{f' line {line}' if line else ''}: {'.'.join(map(str, loc))}: {message}")

    for name in config.arms:
        if not is_safe_name(name):
            fail(("arms", name), f"arm name {name!r}: expected {SAFE_NAME_HINT}")
    if config.baseline not in config.arms:
        fail(("baseline",), f"{config.baseline!r} is not an arm (arms: {', '.join(config.arms)})")
    if config.arms[config.baseline].sweep is not None:
        fail(("arms", config.baseline, "sweep"), "the baseline arm cannot sweep (it is the fixed reference)")

    out = Path(config.output_dir)
    runs: list[StudyRun] = []
    probes: dict[str, Any] = {}
    for arm_name, arm in config.arms.items():
        try:
            recipe_path = find_recipe(str(path.parent / arm.recipe) if (path.parent / arm.recipe).is_file() else arm.recipe)
        except StagewiseError as err:
            fail(("arms", arm_name, "recipe"), str(err))
        values = arm.sweep.values if arm.sweep else [None]
        for value in values:
            for seed in config.seeds:
                folder = out / "runs" / arm_name
                if value is not None:
                    folder = folder / _sweep_label(arm.sweep.key, value)
                overrides = [*config.overrides, *arm.overrides]
                if arm.sweep:
                    overrides.append(f"{arm.sweep.key}={value}")
                try:
                    recipe = load_recipe(recipe_path, overrides)
                    recipe = load_recipe(recipe_path, [*overrides, *(f"stages.{i}.seed={seed}" for i in range(len(recipe.stages))),
                                                       f"output_dir={folder / f'seed-{seed}'}"])
                except RecipeError as err:
                    loc = ("arms", arm_name, "sweep", "key") if arm.sweep and arm.sweep.key in str(err) else ("arms", arm_name)
                    fail(loc, str(err))
                if recipe.evaluation is None:
                    fail(("arms", arm_name, "recipe"), f"{recipe_path} has no evaluation section: nothing to compare")
                signature = {group: [(t.name, t.metric, t.tasks,
                                      recipe.datasets[t.data].model_dump(mode="json") if t.data else None)
                                     for t in getattr(recipe.evaluation, group)] for group in ("target", "retention")}
                if probes and signature != next(iter(probes.values())):
                    other = next(iter(probes))
                    fail(("arms", arm_name), f"its probes differ from arm {other!r}'s: arms are compared on the same "
                                             "items, so every arm needs the same evaluation section")
                probes.setdefault(arm_name, signature)
                runs.append(StudyRun(arm_name, seed, value, recipe, recipe_path))
    target_names = [signature[0] for signature in next(iter(probes.values()))["target"]]
    if not target_names:
        fail(("arms",), "the arms' recipes have no target probe: no gain to match")
    match_on = config.match_on or target_names[0]
    if match_on not in target_names:
        fail(("match_on",), f"{match_on!r} is not a target probe (target probes: {', '.join(target_names)})")
    return Study(config, path, runs, match_on, tuple(config.arms))
