"""The study file: arms (a recipe plus overrides, optionally a sweep of one key), seeds, a
baseline arm; every run it implies, validated before anything runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, NoReturn

from pydantic import Field, ValidationError, field_validator, model_validator

from ..config import Recipe, line_for, load_recipe, raise_validation_error, read_yaml_file
from ..config.schema import check_path_text
from ..errors import RecipeError, StagewiseError
from ..schema import SAFE_NAME_HINT, StrictModel, is_safe_name


class SweepConfig(StrictModel):
    """Recipe keys and their values. ``{key: K, values: [...]}`` sweeps one key, each value a run
    (per seed), in this order along the curve; ``{K1: [...], K2: [...]}`` is a grid: every
    combination is a run (the first key varies slowest)."""

    grid: dict[str, list[Any]]  # dotted override path (e.g. stages.0.lr) -> its values

    @model_validator(mode="before")
    @classmethod
    def _one_key_or_grid(cls, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"key", "values"}:
            value = {value["key"]: value["values"]}
        if not isinstance(value, dict) or not value:
            raise ValueError(
                "give a key and its values ({key: stages.0.lr, values: [...]}) or a grid of keys "
                "({stages.0.lr: [...], stages.0.epochs: [...]})"
            )
        empty = [key for key, values in value.items() if isinstance(values, list) and not values]
        if empty:
            raise ValueError(f"{empty[0]!r} has no values")
        return {"grid": value}

    def points(self) -> list[Any]:
        """Each run's sweep value: the value of a one-key sweep, else a {key: value} per grid point."""
        if len(self.grid) == 1:
            return list(next(iter(self.grid.values())))
        return [dict(zip(self.grid, combination)) for combination in itertools.product(*self.grid.values())]

    def overrides(self, value: Any) -> list[str]:
        pairs = value.items() if isinstance(value, dict) else [(next(iter(self.grid)), value)]
        return [f"{key}={item}" for key, item in pairs]

    def label(self, value: Any) -> str:
        """The run folder's name for a sweep value (``lr=0.0001``, ``lr=0.0001+epochs=2``)."""
        pairs = value.items() if isinstance(value, dict) else [(next(iter(self.grid)), value)]
        text = "+".join(f"{key.split('.')[-1]}={item}" for key, item in pairs)
        return "".join(c if c.isalnum() or c in "._+=-" else "_" for c in text)


class ArmConfig(StrictModel):
    recipe: str  # a recipe file (relative to the study file) or bundled name
    overrides: list[str] = Field(default_factory=list)
    sweep: SweepConfig | None = None


class LocoConfig(StrictModel):
    """Leave-one-cluster-out: the recipe's stage ``stage`` trains on datasets labelled with a
    ``cluster``; the study runs it on every cluster (arm ``all``, the upper reference) and, per
    cluster, on all the others (arm ``without-<cluster>``), scoring each held-out cluster on the
    probes whose dataset carries that cluster (FLAN's evaluation, Wei et al. ICLR 2022 §2.2)."""

    recipe: str
    stage: int = Field(default=0, ge=0)  # the stage whose data is split by cluster
    overrides: list[str] = Field(default_factory=list)


class ClaimTest(StrictModel):
    """One comparison a paper's claim predicts: ``arm`` against the study's baseline (or ``versus``)
    on ``probe``. ``expect``: ``better`` / ``worse`` (in the probe's own direction: a higher score, or
    a lower perplexity, is better) or ``comparable`` (the difference stays within ``margin``)."""

    arm: str
    versus: str | None = None  # another arm to pair with instead of the baseline (a claim over several
    # datasets compares its arms within each dataset's setting)
    probe: str
    expect: Literal["better", "worse", "comparable"]
    margin: float = Field(default=0.05, gt=0)  # comparable: |difference| at most this, on the probe's scale


class ClaimConfig(StrictModel):
    """The published claim a study puts on trial (docs/claims.md is generated from it and the results)."""

    paper: str  # authors, venue, year
    claim: str  # the claim in one sentence, with the paper's number
    setting: str  # ours: model, data, sizes (the study file's comments say why)
    tests: list[ClaimTest] = Field(min_length=1)


class StudyConfig(StrictModel):
    description: str = ""
    arms: dict[str, ArmConfig] = Field(default_factory=dict)
    baseline: str | None = None  # the arm every other arm is compared with, item by item
    loco: LocoConfig | None = None  # instead of arms: leave-one-cluster-out arms, baseline `all`
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(min_length=1)  # applied to every stage's seed
    overrides: list[str] = Field(default_factory=list)  # applied to every arm first (e.g. smaller data)
    match_on: str | None = None  # target probe whose gain is matched (default: the first)
    gain_levels: list[float] = Field(default_factory=list)  # more gain levels to read retention at
    frontier_levels: int = Field(default=9, ge=2, le=50)  # gain levels the frontiers are compared at
    frontier_gains: list[float] = Field(default_factory=list)  # also read every frontier at these gains
    # (a verdict table: each arm's retention difference from the frontier baseline's there)
    frontier_baseline: str | None = None  # the arm whose frontier the others are paired with (default: baseline;
    # the baseline arm cannot sweep, so name a sweeping arm here to compare frontiers over hyperparameters)
    frontier_arms: list[str] | None = None  # the arms whose frontiers are compared (default: every arm). The
    # comparison runs over the gain range *every* such arm measured: a fixed-LR baseline that learns little
    # would shrink it to nothing, so leave it out once a sweeping arm of its method is the frontier baseline
    bootstrap: int = Field(default=2000, ge=100, le=100_000)  # bootstrap resamples per interval (each holds
    # resamples x items floats per probe in memory)
    output_dir: str = "runs/study"
    claim: ClaimConfig | None = None  # the paper's claim this study tests (copied into study.json)

    @field_validator("output_dir")
    @classmethod
    def _check_output_dir(cls, value: str) -> str:
        return check_path_text(value)

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
        if self.sweep_value is None:
            return self.arm
        if isinstance(self.sweep_value, dict):
            return f"{self.arm}@" + ",".join(f"{key.split('.')[-1]}={value}" for key, value in self.sweep_value.items())
        return f"{self.arm}@{self.sweep_value}"


@dataclass(frozen=True)
class Study:
    config: StudyConfig
    source: Path
    runs: list[StudyRun]
    match_on: str
    all_arms: tuple[str, ...]  # every arm of the file (``config.arms`` may be a subset)
    all_seeds: tuple[int, ...]  # every seed of the file (``config.seeds`` may be a subset)
    clusters: dict[str, list[str]] | None = None  # loco: held-out cluster -> the probes that test it

    @property
    def report_dir(self) -> Path:
        """Where study.json/md and the plots go: the output folder, or a subfolder named after
        the arms and/or seeds when only some of the file's were chosen (so a subset never
        overwrites the whole study's report; the runs themselves are shared)."""
        out = Path(self.config.output_dir)
        if tuple(self.config.arms) != self.all_arms:
            out = out / subset_folder("arms", self.config.arms)
        if tuple(self.config.seeds) != self.all_seeds:
            out = out / subset_folder("seeds", map(str, self.config.seeds))
        return out


def subset_folder(kind: str, names: Iterable[str]) -> str:
    """``arms-a+b``; past 120 characters (a file name holds 255 bytes) its first 100 and a hash of
    the whole, so many long arm names still make one valid, distinct folder."""
    name = f"{kind}-{'+'.join(names)}"
    if len(name.encode()) <= 120:
        return name
    return f"{name.encode()[:100].decode(errors='ignore')}-{hashlib.sha1(name.encode()).hexdigest()[:12]}"


def select_arms(study: Study, names: list[str]) -> Study:
    """The study restricted to ``names`` (the baseline and the frontier baseline always stay: every arm
    is compared with them)."""
    unknown = [name for name in names if name not in study.config.arms]
    if unknown:
        raise RecipeError(
            f"--arms: {', '.join(map(repr, unknown))} not in {study.source} (arms: {', '.join(study.config.arms)})"
        )
    anchors = (study.config.baseline, study.config.frontier_baseline)
    keep = [name for name in study.config.arms if name in names or name in anchors]
    config = study.config.model_copy(update={"arms": {name: study.config.arms[name] for name in keep}})
    return replace(study, config=config, runs=[run for run in study.runs if run.arm in keep])


def select_seeds(study: Study, seeds: list[int]) -> Study:
    """The study restricted to ``seeds`` (e.g. one seed first when the whole study is too long for
    one sitting; the other seeds' runs join the same folders later)."""
    unknown = [seed for seed in seeds if seed not in study.config.seeds]
    if unknown or not seeds:
        raise RecipeError(
            f"--seeds: {', '.join(map(str, unknown)) or 'none given'} not in {study.source} "
            f"(seeds: {', '.join(map(str, study.config.seeds))})"
        )
    keep = [seed for seed in study.config.seeds if seed in seeds]
    config = study.config.model_copy(update={"seeds": keep})
    return replace(study, config=config, runs=[run for run in study.runs if run.seed in keep])


def load_study(path: str | Path, find_recipe: Any) -> Study:
    """Read, validate and expand a study file; every problem is one line with the file and line."""
    path = Path(path)
    data, lines = read_yaml_file(path, "study")
    try:
        config = StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise_validation_error(exc, str(path), lines, StudyConfig)

    def fail(loc: tuple, message: str) -> NoReturn:
        line = line_for(loc, lines)
        raise RecipeError(f"{path}{f' line {line}' if line else ''}: {'.'.join(map(str, loc))}: {message}")

    if config.loco is not None and (config.arms or config.baseline):
        fail(("loco",), "a loco study makes its own arms (all, without-<cluster>): remove arms and baseline")
    if config.loco is None and len(config.arms) < 2:
        fail(("arms",), "give at least 2 arms (or a loco section)")
    if config.loco is None and config.baseline is None:
        fail(("baseline",), "name the arm every other arm is compared with")
    clusters = None
    if config.loco is not None:
        arms, clusters = loco_arms(config, config.loco, path, find_recipe, fail)
        config = config.model_copy(update={"arms": arms, "baseline": "all"})
    for name in config.arms:
        if not is_safe_name(name):
            fail(("arms", name), f"arm name {name!r}: expected {SAFE_NAME_HINT}")
    baseline = config.baseline
    if baseline is None or baseline not in config.arms:
        fail(("baseline",), f"{baseline!r} is not an arm (arms: {', '.join(config.arms)})")
    if config.frontier_baseline is not None and config.frontier_baseline not in config.arms:
        fail(("frontier_baseline",), f"{config.frontier_baseline!r} is not an arm (arms: {', '.join(config.arms)})")
    for name in config.frontier_arms or []:
        if name not in config.arms:
            fail(("frontier_arms",), f"{name!r} is not an arm (arms: {', '.join(config.arms)})")
    frontier_baseline = config.frontier_baseline or baseline
    if config.frontier_arms is not None and frontier_baseline not in config.frontier_arms:
        fail(("frontier_arms",), f"the frontier baseline {frontier_baseline!r} must be one of the frontier arms")
    if config.arms[baseline].sweep is not None:
        fail(("arms", baseline, "sweep"), "the baseline arm cannot sweep (it is the fixed reference)")

    out = Path(config.output_dir)
    runs: list[StudyRun] = []
    probes: dict[str, Any] = {}
    for arm_name, arm in config.arms.items():
        try:
            recipe_path = find_recipe(
                str(path.parent / arm.recipe) if (path.parent / arm.recipe).is_file() else arm.recipe
            )
        except StagewiseError as err:
            fail(("arms", arm_name, "recipe"), str(err))
        values = arm.sweep.points() if arm.sweep else [None]
        labels = [arm.sweep.label(value) for value in values] if arm.sweep else []
        clash = next((label for label in labels if labels.count(label) > 1), None)
        if clash is not None:
            fail(
                ("arms", arm_name, "sweep"),
                f"two values share the run folder name {clash!r} "
                "(values differing only in characters a folder name cannot "
                "hold); make them distinct",
            )
        for value in values:
            for seed in config.seeds:
                folder = out / "runs" / arm_name
                if arm.sweep is not None and value is not None:
                    folder = folder / arm.sweep.label(value)
                overrides = [*config.overrides, *arm.overrides, *(arm.sweep.overrides(value) if arm.sweep else [])]
                try:
                    recipe = load_recipe(recipe_path, overrides)
                    recipe = load_recipe(
                        recipe_path,
                        [
                            *overrides,
                            *(f"stages.{i}.seed={seed}" for i in range(len(recipe.stages))),
                            f"output_dir={folder / f'seed-{seed}'}",
                        ],
                    )
                except RecipeError as err:
                    swept = [key for key in (arm.sweep.grid if arm.sweep else {}) if key in str(err)]
                    fail(("arms", arm_name, "sweep", swept[0]) if swept else ("arms", arm_name), str(err))
                if recipe.evaluation is None:
                    fail(("arms", arm_name, "recipe"), f"{recipe_path} has no evaluation section: nothing to compare")
                signature = {
                    group: [
                        (t.name, t.metric, t.tasks, recipe.datasets[t.data].model_dump(mode="json") if t.data else None)
                        for t in getattr(recipe.evaluation, group)
                    ]
                    for group in ("target", "retention")
                }
                if probes and signature != next(iter(probes.values())):
                    other = next(iter(probes))
                    fail(
                        ("arms", arm_name),
                        f"its probes differ from arm {other!r}'s: arms are compared on the same "
                        "items, so every arm needs the same evaluation section",
                    )
                probes.setdefault(arm_name, signature)
                runs.append(StudyRun(arm_name, seed, value, recipe, recipe_path))
    target_names = [signature[0] for signature in next(iter(probes.values()))["target"]]
    if not target_names:
        fail(("arms",), "the arms' recipes have no target probe: no gain to match")
    match_on = config.match_on or target_names[0]
    if match_on not in target_names:
        fail(("match_on",), f"{match_on!r} is not a target probe (target probes: {', '.join(target_names)})")
    probe_names = [signature[0] for group in next(iter(probes.values())).values() for signature in group]
    for number, test in enumerate(config.claim.tests if config.claim else []):
        versus = test.versus or config.baseline
        if test.arm.split("@")[0] not in config.arms or test.arm == versus:
            fail(("claim", "tests", number, "arm"), f"{test.arm!r} is not an arm compared with {versus!r}")
        if test.versus is not None and test.versus.split("@")[0] not in config.arms:
            known = ", ".join(config.arms)
            fail(("claim", "tests", number, "versus"), f"{test.versus!r} is not an arm (arms: {known})")
        if test.probe.split("@")[0].split(":")[0] not in probe_names:
            fail(
                ("claim", "tests", number, "probe"), f"{test.probe!r} is not a probe (probes: {', '.join(probe_names)})"
            )
    return Study(config, path, runs, match_on, tuple(config.arms), tuple(config.seeds), clusters)


def _source(dataset: Any) -> Any:
    """What a dataset's rows come from (two datasets with the same source hold the same rows)."""
    return (
        dataset.path or dataset.builtin or dataset.hub or json.dumps(dataset.rows, sort_keys=True),
        dataset.split,
        json.dumps([dataset.builtin_options, dataset.subset, dataset.data_files], sort_keys=True),
    )


def loco_arms(
    config: StudyConfig, loco: LocoConfig, path: Path, find_recipe: Any, fail: Any
) -> tuple[dict[str, ArmConfig], dict[str, list[str]]]:
    """Arms ``all`` and ``without-<cluster>`` (the stage's data minus that cluster's datasets, which
    also leave the transforms that name them), and the probes that test each cluster; one line
    for data that cannot support the design."""
    try:
        recipe_path = find_recipe(
            str(path.parent / loco.recipe) if (path.parent / loco.recipe).is_file() else loco.recipe
        )
        recipe = load_recipe(recipe_path, [*config.overrides, *loco.overrides])
    except StagewiseError as err:
        fail(("loco", "recipe"), str(err))
    if loco.stage >= len(recipe.stages):
        fail(("loco", "stage"), f"the recipe has {len(recipe.stages)} stage(s); stage {loco.stage} does not exist")
    stage = recipe.stages[loco.stage]
    for name in stage.data:
        if recipe.datasets[name].cluster is None:
            fail(
                ("loco", "recipe"),
                f"dataset {name!r} of stage {loco.stage} has no 'cluster': label every dataset it trains on",
            )
    by_source: dict[Any, tuple[str, str]] = {}
    for name, dataset in recipe.datasets.items():
        if dataset.cluster is None:
            continue
        other = by_source.setdefault(_source(dataset), (name, dataset.cluster))
        if other[1] != dataset.cluster:
            fail(
                ("loco", "recipe"),
                f"clusters overlap by dataset: {other[0]!r} ({other[1]}) and {name!r} "
                f"({dataset.cluster}) hold the same rows",
            )
    trained = list(dict.fromkeys(str(recipe.datasets[name].cluster) for name in stage.data))  # each has one
    if len(trained) < 2:
        fail(
            ("loco", "recipe"),
            f"stage {loco.stage} trains on {len(trained)} cluster(s); leaving one out needs 2 or more",
        )
    probes = [task for group in ("target", "retention") for task in getattr(recipe.evaluation, group, None) or []]
    clusters = {
        cluster: [t.name for t in probes if t.data and recipe.datasets[t.data].cluster == cluster]
        for cluster in trained
    }
    for cluster, names in clusters.items():
        if not names:
            fail(
                ("loco", "recipe"),
                f"cluster {cluster!r} is held out but has no test data: no probe's dataset has cluster: {cluster}",
            )
    arms = {"all": ArmConfig(recipe=loco.recipe, overrides=loco.overrides)}
    for cluster in trained:
        kept = [name for name in stage.data if recipe.datasets[name].cluster != cluster]
        narrowed = [
            f"stages.{loco.stage}.transforms.{i}.datasets=[{', '.join(n for n in t.datasets or [] if n in kept)}]"
            for i, t in enumerate(stage.transforms)
            if getattr(t, "datasets", None) is not None
        ]
        arms[f"without-{cluster}"] = ArmConfig(
            recipe=loco.recipe, overrides=[*loco.overrides, f"stages.{loco.stage}.data=[{', '.join(kept)}]", *narrowed]
        )
    return arms, clusters
