"""Cross-checks a schema cannot express: references between datasets, stages and probes, what
each stage's entries support, distribution and precision; each problem is one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, NoReturn

from ..errors import RecipeError
from ..merging import BASE
from ..registry import DATA_FORMATS, METRICS, TRAINERS, TRANSFORMS, format_has, formats_with
from ..schema import SAFE_NAME_HINT, is_safe_name
from .evaluation import EvalTaskConfig
from .schema import PLUGIN_FIELDS, Recipe, StageConfig
from .stages import (
    builds_model,
    earlier_data,
    format_chain,
    format_objective,
    plugin_configs,
    stage_formats,
    stage_objective,
    trainable_formats,
    transform_targets,
)
from .yaml_lines import line_for, read_text_file


def check_references(recipe: Recipe, source: str, lines: dict[tuple, int]) -> None:
    def fail(loc: tuple, message: str) -> None:
        line = line_for(loc, lines)
        where = f"{source} line {line}" if line else source
        raise RecipeError(f"{where}: {'.'.join(map(str, loc))}: {message}")

    for name, dataset in recipe.datasets.items():
        if not is_safe_name(name):
            fail(("datasets", name), f"dataset name {name!r}: expected {SAFE_NAME_HINT}")
        try:
            DATA_FORMATS.get(dataset.format)
        except RecipeError as err:  # the registry's line: closest name, the known ones
            fail(("datasets", name, "format"), str(err))
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
                model_problem = separate_model_problem(recipe, index, getattr(config, key))
                if model_problem:
                    fail(("stages", index, *field, key), model_problem)
            for key in config.named_model_fields:
                model_problem = named_model_problem(recipe, index, getattr(config, key))
                if model_problem:
                    fail(("stages", index, *field, key), model_problem)
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
        probes_only = sorted({recipe.datasets[name].format for name in stage.data} - trainable_formats())
        if probes_only:
            fail(("stages", index, "data"), f"format {probes_only[0]!r} is for evaluation probes only, not training")
        formats = stage_formats(recipe, stage)  # after the transforms: a labelled set templated into instructions mixes
        if len({format_objective(fmt) for fmt in formats}) > 1:
            fail(
                ("stages", index, "data"),
                f"cannot mix dataset formats {sorted(formats)} in one stage "
                "(template the labelled ones into instructions first)",
            )
        problem = stage_problem(recipe, stage) or merge_problem(recipe, index)
        if problem:
            fail(("stages", index, *problem[0]), problem[1])
    if recipe.evaluation:
        probe_names: set[str] = set()
        for group in ("target", "retention"):
            for index, task in enumerate(getattr(recipe.evaluation, group)):
                if task.name in probe_names:
                    fail(("evaluation", group, index, "name"), f"duplicate probe name {task.name!r}")
                probe_names.add(task.name)
                task_problem = probe_problem(recipe, task) or recovery_problem(recipe, task, group)
                if task_problem:
                    fail(("evaluation", group, index, task_problem[0]), task_problem[1])
                if task.stage is not None and task.stage not in seen:
                    fail(("evaluation", group, index, "stage"), f"{task.stage!r} is not a stage of this recipe")
                if task.stage is not None and not METRICS.get(task.metric).traits.higher_is_better:
                    fail(
                        ("evaluation", group, index, "stage"),
                        f"a task probe needs an accuracy-like metric, not {task.metric!r} (lower is better)",
                    )
                if task.stage is not None and not recipe.evaluation.after_each_stage:
                    fail(("evaluation", "after_each_stage"), "task probes (stage:) need a score after every stage")
        guard = guard_problem(recipe)
        if guard:
            fail(("evaluation", "guard", guard[0]), guard[1])
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
    if merge.select is None:
        return None
    for name in merge.select.data:
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
    if entry.traits.needs_data and task.data is not None:
        data_format = recipe.datasets[task.data].format
        problem_text = entry.requires.problem(format_objective(data_format), {data_format}, recipe.model.task)
        if problem_text:
            return "metric", f"metric {task.metric!r} {problem_text} (dataset {task.data!r})"
    return None


def guard_problem(recipe: Recipe) -> tuple[str, str] | None:
    """The guard names a retention probe and checks within every stage that sets max_steps."""
    evaluation = recipe.evaluation
    guard = evaluation.guard if evaluation else None
    if evaluation is None or guard is None:
        return None
    retention = [task.name for task in evaluation.retention]
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
    if not format_has(data_format, "answer_field") or METRICS.get(task.metric).requires.problem(
        "lm", {"prompt_completion"}, recipe.model.task
    ):
        return "recovery_shots", (
            f"needs an {' or '.join(formats_with('answer_field'))} probe scored by a generation or "
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
    used: list[tuple[tuple[Any, ...], Any, Any, set[str]]] = [
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
        seen_objective = sorted({format_objective(f) for f in seen_formats})[0]
        requires = registry.get(config.kind).requires
        unserved = requires.problem(seen_objective, seen_formats, recipe.model.task)
        if not requires.sharded and recipe.distributed.fsdp:
            return field, (
                f"{registry.what} {config.kind!r} does not run on FSDP2 shards; drop distributed.fsdp "
                "(an add-on or preference stage of a 7-8B model fits one GPU) or choose another entry"
            )
        deepspeed_problem = requires.under_deepspeed(config) if recipe.distributed.deepspeed else None
        if deepspeed_problem:
            return field, (
                f"{registry.what} {config.kind!r} would silently do nothing under DeepSpeed ZeRO "
                f"({deepspeed_problem}); use distributed: {{fsdp: true}} (FSDP2) or drop distributed"
            )
        if requires.plain_weights and recipe.model.quantization is not None:
            return field, (
                f"{registry.what} {config.kind!r} trains or reads the base's weight matrices, which "
                "model.quantization holds in 4/8 bits; on a quantized base train an add-on (lora, prompt)"
            )
        if unserved:
            others = [
                name
                for name in registry.serving(seen_objective, seen_formats, recipe.model.task)
                if name != config.kind
            ]
            hint = f" (this stage can use: {', '.join(others)})" if others else ""
            return field, f"{registry.what} {config.kind!r} {unserved}{hint}"
    return None


def check_precision(recipe: Recipe, source: str, lines: dict[tuple, int]) -> None:
    """Precision that this machine can run and ``model.dtype`` agrees with; what a 4/8-bit base cannot do."""
    from ..precision import precision_problem

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


def check_distributed(recipe: Recipe, source: str, lines: dict[tuple, int], base_dir: Path | None) -> str | None:
    """FSDP2 or a DeepSpeed ZeRO-2 file (checked, and the package); ZeRO-3 and what cannot run
    sharded are refused here, each with one line. Returns the DeepSpeed file's path as found (a
    relative one may sit beside the recipe), or None."""
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
    if not dist.deepspeed:
        return None
    found, config = _deepspeed_config(dist.deepspeed, base_dir, fail)
    stage = (config.get("zero_optimization") or {}).get("stage") if isinstance(config, dict) else None
    if stage == 3:
        fail(
            "deepspeed",
            "ZeRO-3 shards the weights where stagewise's selectors, regularizers, LR rules and "
            "merges cannot see them; use distributed: {fsdp: true} (FSDP2), or ZeRO-2",
        )
    if importlib.util.find_spec("deepspeed") is None:
        fail("deepspeed", "the deepspeed package is not installed (pip install deepspeed)")
    return str(found)


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
