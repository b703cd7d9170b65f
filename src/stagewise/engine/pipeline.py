"""Run a recipe: check and lock the output folder, load and check all data, then train
stage after stage.

Finished stages are skipped by config hash (the hash chains the previous stage's, so
a changed stage invalidates itself and every later one) once their saved files match the
SHA-256 recorded when they were written; an interrupted stage resumes from its last
complete checkpoint. A stage is ``running`` while it trains, ``trained`` once its weights
are saved and hashed, ``completed`` once evaluated: a run stopped at any instant resumes
without redoing finished work.
"""

from __future__ import annotations

import functools
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import PreTrainedTokenizerBase, TrainerCallback

from .. import __version__
from ..addons import merges_into_weights
from ..config import Recipe, StageConfig, builds_model, config_hash, plugin_configs, recipe_to_dict, stage_objective
from ..data import LoadedDataset, load_dataset_config
from ..distributed import barrier, broadcast_from_main, init_from_launcher, is_main_process
from ..errors import OutputError, StagewiseError
from ..eval import Evaluator
from ..eval.kl import forward_kl, stage_prompts
from ..io import file_sha256, folder_sha256
from ..merging import BASE, HeldWeights, SafetensorsWeights, WeightSource, plain_weights
from ..models import load_model_and_tokenizer, load_pretrained, load_stage_output, on_local_device, seed_weights_folder
from ..precision import load_dtype, resolve_precision
from ..registry import METRICS
from ..report import build_report, write_report
from ..sharding import check_shardable, wants_sharding
from ..written import Written, before_first_write, remove, stage_written
from .guard import RetentionGuard
from .manifest import Manifest
from .run_folder import check_foreign_content, check_no_links, check_writable_folder, read_manifest, run_lock
from .stage import ADAPTER_DIR, ModelIdentity, StageContext, StageResult, class_labels, run_stage

Log = Callable[[str], None]


@dataclass
class RunResult:
    output_dir: Path
    manifest: dict[str, Any]
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase


def stage_dir_name(index: int, name: str) -> str:
    return f"{index}-{name}"


def stage_inputs(stage: StageConfig) -> list[str]:
    """The datasets a stage reads: its training data, its held-out data, and any its entries name
    (e.g. the data a regularizer estimates its weights on)."""
    named = [name for _, config in plugin_configs(stage) for name in config.datasets_named()]
    named += stage.merge.select.data if stage.merge and stage.merge.select else []
    return list(dict.fromkeys(stage.data + (stage.eval.data if stage.eval else []) + named))


def head_seed(recipe: Recipe) -> int:
    """The seed of weights the starting checkpoint lacks (a classification head): the run's first
    stage seed, so a study's seeds vary the head as they vary training."""
    return recipe.stages[0].seed


def seed_model_key(recipe: Recipe) -> str:
    """Identity of the run's starting model and how it computes: its recipe entry (keys at their
    defaults left out, so a new key with a default changes no hash), for a local folder its weights,
    for a classifier the seed of its new head, and the precision it trains in."""
    head = [head_seed(recipe)] if recipe.model.task == "sequence_classification" else []
    return config_hash(
        settings_of(recipe.model),
        model_fingerprint(recipe.model.model_name_or_path),
        resolve_precision(recipe.performance.precision),
        *head,
    )


def settings_of(config: Any) -> Any:
    """A config as a hash sees it: its values that differ from their defaults (HASH_SCHEME marks the rule)."""
    return [HASH_SCHEME, config.model_dump(mode="json", exclude_defaults=True)]


HASH_SCHEME = 2  # 2: settings without their defaults (1, before: whole dumps, so every new key retrained all runs)


def stage_hashes(recipe: Recipe, datasets: dict[str, LoadedDataset]) -> list[str]:
    """Per-stage hash over the starting model, the stage config, its data content, and the previous hash."""
    hashes: list[str] = []
    parent = seed_model_key(recipe)
    for stage in recipe.stages:
        parent = config_hash(parent, settings_of(stage), {n: datasets[n].fingerprint for n in stage_inputs(stage)})
        hashes.append(parent)
    return hashes


def base_labels(recipe: Recipe, datasets: dict[str, LoadedDataset]) -> list[str] | None:
    for stage in recipe.stages:
        if stage_objective(recipe, stage) == "classification":
            return class_labels(recipe, stage, datasets)
    return None


def model_fingerprint(name: str) -> Any:
    """A local folder's weights can change under the same path: include their content hashes."""
    folder = Path(name)
    if not folder.is_dir():
        return name
    files = sorted(folder.glob("*.safetensors"))
    return [
        name,
        _weights_sha256(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) for p in files)),
    ]


@functools.lru_cache(maxsize=8)
def _weights_sha256(files: tuple[tuple[str, int, int, int], ...]) -> list[tuple[str, str]]:
    """Hashed once per process for the same files (a run asks for the seed identity several times)."""
    return [(Path(path).name, file_sha256(path)) for path, *_ in files]


LOG_FRACTIONS = (1 / 8, 1 / 4, 1 / 2)  # `every: log`: points inside the first epoch, where most change happens


class CurvePoints(TrainerCallback):
    """``evaluation.every: epoch | log | {steps}``: score the probes during training — at the end
    of every epoch but the last (the stage's own evaluation covers that), after 1/8, 1/4 and 1/2
    of the first epoch too (``log``), or after the listed steps — so each stage traces a (gain,
    retention) curve. Points are recorded in the manifest entry's ``curve`` as they come (one per
    step, so a resumed stage replaces the points it recomputes)."""

    def __init__(
        self, evaluator: Evaluator, entry: dict[str, Any], manifest: Manifest, tokenizer: Any, every: Any
    ) -> None:
        self.evaluator, self.entry, self.manifest, self.tokenizer = evaluator, entry, manifest, tokenizer
        self.every = every
        self.steps: set[int] = set()
        self.off_clock_s = 0.0  # seconds spent evaluating inside train(): the stage runner subtracts them

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.every == "log":
            per_epoch = state.max_steps / max(state.num_train_epochs, 1)
            self.steps = {round(per_epoch * fraction) for fraction in LOG_FRACTIONS} - {0}
        elif not isinstance(self.every, str):
            self.steps = set(self.every.steps)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step in self.steps:
            self.score(args, state, model, f"step-{state.global_step}")

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.every in ("epoch", "log") and state.global_step not in self.steps:
            self.score(args, state, model, f"epoch-{round(state.epoch or 0.0, 3):g}")

    def score(self, args: Any, state: Any, model: Any, name: str) -> None:
        if state.global_step >= state.max_steps:
            return
        Written(Path(args.output_dir)).record()  # the stage is under way: start it before recording a point
        epoch = round(state.epoch or 0.0, 3)
        point = f"{stage_dir_name(self.entry['index'], self.entry['name'])}/{name}"
        self.evaluator.log(f"[eval] {point}")
        summary, seconds = self.evaluator.score(model, self.tokenizer, point)
        self.off_clock_s += seconds
        curve = [p for p in self.entry.get("curve", []) if p["step"] != state.global_step]
        curve.append({"epoch": epoch, "step": state.global_step, "evaluation": summary, "eval_time_s": seconds})
        self.entry["curve"] = sorted(curve, key=lambda p: p["step"])
        self.manifest.set_stage(self.entry["index"], self.entry)


def run_recipe(
    recipe: Recipe,
    recipe_path: str | None = None,
    callbacks: list[TrainerCallback] | None = None,
    log: Log = print,
    force: bool = False,
) -> RunResult:
    """Train every stage of ``recipe`` into ``recipe.output_dir``.

    ``force`` takes over a folder that holds files stagewise did not write, or an unreadable
    manifest; without it such a folder is refused with one line before any work starts.
    """
    init_from_launcher()
    output_dir = Path(recipe.output_dir)
    if is_main_process():
        check_writable_folder(output_dir)
        check_no_links(
            output_dir,
            [stage_dir_name(i, stage.name) for i, stage in enumerate(recipe.stages)]
            + ["manifest.json", "report.json", "report.md", "report.png"],
        )
    barrier()
    try:
        previous = read_manifest(output_dir)
    except OutputError as err:
        if not force:
            raise
        log(f"[force] {err}: starting afresh")
        previous = {}
    if not force:
        check_foreign_content(output_dir, previous)
    with run_lock(output_dir, log):
        return _run_locked(recipe, recipe_path, callbacks, log, force, previous)


def _run_locked(
    recipe: Recipe,
    recipe_path: str | None,
    callbacks: list[TrainerCallback] | None,
    log: Log,
    force: bool,
    previous: dict[str, Any],
) -> RunResult:
    if recipe.distributed.fsdp and not wants_sharding(recipe):
        log("[warning] distributed.fsdp: one process, nothing to shard (launch with torchrun --nproc_per_node=N)")
    check_shardable(recipe)
    if resolve_precision(recipe.performance.precision) == "bf16-pure":
        log(
            "[warning] precision bf16-pure: weights and optimizer state in bf16; updates smaller than bf16's "
            "spacing are lost (bf16-mixed keeps fp32 master weights)"
        )
    datasets = {name: load_dataset_config(name, cfg) for name, cfg in recipe.datasets.items()}
    hashes = stage_hashes(recipe, datasets)
    output_dir = Path(recipe.output_dir)
    manifest = Manifest(
        output_dir,
        {
            "stagewise_version": __version__,
            "recipe_path": recipe_path,
            "recipe": recipe_to_dict(recipe),
            "model": recipe.model.model_name_or_path,
        },
        previous,
        len(recipe.stages),
    )
    start = reusable_stages(recipe, manifest, hashes, log)
    check_stage_folders(recipe, manifest, hashes, start, force)
    evaluator = Evaluator(recipe, datasets, seed_model_key(recipe), log)

    def load_seed() -> tuple[Any, Any]:
        return load_model_and_tokenizer(
            recipe.model, base_labels(recipe, datasets), seed=head_seed(recipe), precision=recipe.performance.precision
        )

    finish_reused_stages(
        recipe, manifest, evaluator, start, datasets, functools.partial(named_model, recipe, load_seed), log
    )

    base_scores = evaluator.cached_base()
    model: Any = None
    tokenizer: Any = None
    if start == 0 or (evaluator.key is not None and base_scores is None):
        model, tokenizer = load_seed()
        if evaluator.key is not None and base_scores is None:
            base_scores, manifest.data["base_eval_time_s"] = evaluator.base(model, tokenizer)
    manifest.data["base_evaluation"] = base_scores
    resumed_from = entering_stage(recipe, start)
    if resumed_from >= 0:
        model, tokenizer = load_stage_output(
            stage_folder(recipe, resumed_from), recipe.model, recipe.performance.precision
        )
    elif model is None:
        model, tokenizer = load_seed()

    seed_key = seed_model_key(recipe)
    for index in range(start, len(recipe.stages)):
        entering = entering_stage(recipe, index)
        identity = ModelIdentity(
            key=hashes[entering] if entering >= 0 else seed_key,
            seed_key=seed_key,
            load_seed=load_seed,
            weights_of=functools.partial(named_weights, recipe, load_seed),
            folder_of=functools.partial(named_folder, recipe),
            model_of=functools.partial(named_model, recipe, load_seed),
        )
        ctx = StageContext(recipe, index, datasets, stage_folder(recipe, index), identity, list(callbacks or []), log)
        model = train_and_record(model, tokenizer, ctx, hashes[index], manifest, evaluator, force)
    if recipe.evaluation and is_main_process():
        write_report(output_dir, build_report(manifest.record()))
    return RunResult(output_dir=output_dir, manifest=manifest.data, model=model, tokenizer=tokenizer)


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


def reusable_stages(recipe: Recipe, manifest: Manifest, hashes: list[str], log: Log) -> int:
    """How many leading stages are finished with this config and intact on disk (rank 0 decides)."""
    start = 0
    if is_main_process():
        for index, stage in enumerate(recipe.stages):
            previous = manifest.previous(index)
            if not (
                previous
                and previous.get("config_hash") == hashes[index]
                and previous.get("status") in ("trained", "completed")
            ):
                break
            problem = changed_output(stage_folder(recipe, index), previous.get("outputs", {}).get("sha256"))
            if problem:
                log(f"[verify] stage {index} '{stage.name}': {problem}: training it again")
                break
            log(f"[skip] stage {index} '{stage.name}' already {previous['status']} (config {hashes[index]})")
            start = index + 1
    return broadcast_from_main(start)


def changed_output(stage_dir: Path, recorded: dict[str, str] | None) -> str | None:
    """Why a finished stage's folder cannot be reused as written, or None when every file matches."""
    if not recorded:
        return "no content hashes were recorded for its outputs"
    for name, digest in recorded.items():
        path = stage_dir / name
        if not path.is_file():
            return f"{path} is missing"
        if file_sha256(path) != digest:
            return f"{path} differs from what the stage wrote"
    return None


def finish_reused_stages(
    recipe: Recipe,
    manifest: Manifest,
    evaluator: Evaluator,
    start: int,
    datasets: dict[str, LoadedDataset],
    model_of: Callable[[str], Any],
    log: Log,
) -> None:
    """Record the reused stages and score those never scored on these probes (changed probes,
    or a run stopped during evaluation), from their saved weights, with the KL to their entering
    model where it is missing too."""
    for index in range(start):
        entry = dict(manifest.previous(index) or {})
        unscored = evaluator.wants(index) and entry.get("evaluation_key") != evaluator.key
        no_kl = (
            unscored
            and measures_kl(recipe, recipe.stages[index])
            and is_main_process()
            and "kl_to_entering" not in entry
        )  # (a finished stage is reused as it was recorded)
        if unscored:
            stage_model, stage_tokenizer = load_stage_output(
                stage_folder(recipe, index), recipe.model, recipe.performance.precision
            )
        if no_kl:
            entry["kl_to_entering"] = stage_kl(stage_model, stage_tokenizer, recipe, index, datasets, model_of, log)
        if unscored:
            evaluator.score_stage(entry, stage_model, stage_tokenizer, stage_dir_name(index, entry["name"]))
        entry["status"] = "completed"
        manifest.set_stage(index, entry)


def check_stage_folders(recipe: Recipe, manifest: Manifest, hashes: list[str], start: int, force: bool) -> None:
    """Before anything is written: a folder in the way of a stage that will train must be one
    stagewise created, holding only what stagewise wrote (cleared or resumed when that stage
    starts), unless ``force``."""
    for index in range(start, len(recipe.stages)):
        stage_dir = stage_folder(recipe, index)
        if force or not (stage_dir.exists() or stage_dir.is_symlink()):
            continue
        if stage_dir.is_symlink() or not stage_dir.is_dir():
            raise OutputError(f"{stage_dir}: is a link or a file, not a folder stagewise made; move it away")
        if stage_dir.name not in manifest.owned and any(stage_dir.iterdir()):  # (empty: made, then killed)
            raise OutputError(
                f"{stage_dir}: stagewise did not create this folder but stage {index} would write "
                "there; move it away or pass --force"
            )
        stage_written(stage_dir, manifest.previous(index)).check(f"stage {index} would write there")


def clear_stale_stage_folder(
    recipe: Recipe, manifest: Manifest, index: int, config_hash_: str, force: bool, log: Log
) -> None:
    """Right before stage ``index`` trains: remove what stagewise wrote in its old folder, unless
    it holds an interrupted run of the same config (resumed from its complete checkpoints)."""
    stage_dir = stage_folder(recipe, index)
    previous = manifest.previous(index)
    holds_files = stage_dir.is_dir() and any(stage_dir.iterdir())  # (the Trainer makes it empty at start)
    if holds_files and not (
        previous and previous.get("config_hash") == config_hash_ and previous.get("status") != "completed"
    ):
        log(f"[invalidate] stage {index} '{recipe.stages[index].name}' changed: clearing {stage_dir}")
        try:
            if force and is_main_process():
                remove(stage_dir)
            else:
                written = stage_written(stage_dir, previous)
                written.check(f"stage {index} must clear it to train again")
                written.clear()
        except PermissionError as err:
            raise OutputError(
                f"{stage_dir}: cannot be cleared for stage {index} to train again ({err.strerror}); make it writable"
            ) from None
    barrier()


def measures_kl(recipe: Recipe, stage: StageConfig) -> bool:
    """The forgetting predictor applies to a causal LM stage that hands its model on (``kl_prompts > 0``)."""
    return bool(
        recipe.evaluation
        and recipe.evaluation.kl_prompts
        and recipe.model.task == "causal_lm"
        and not builds_model(stage)
    )


def stage_kl(
    model: Any,
    tokenizer: Any,
    recipe: Recipe,
    index: int,
    datasets: dict[str, LoadedDataset],
    model_of: Callable[[str], Any],
    log: Log,
) -> dict[str, Any]:
    """KL(tuned ‖ entering) on the stage's own prompts (``eval.kl``); the entering model is reloaded."""
    evaluation, stage = recipe.evaluation, recipe.stages[index]
    assert evaluation is not None  # asked for by the evaluation settings
    prompts = [
        ids
        for name in stage.data
        for ids in stage_prompts(
            datasets[name].rows,
            recipe.datasets[name].format,
            tokenizer,
            recipe.datasets[name].template,
            evaluation.kl_prompts,
            stage.seed,
        )
    ][: evaluation.kl_prompts]
    if not prompts:
        return {"per_sequence": None, "per_token": None, "prompts": 0, "tokens": 0}
    entering = entering_stage(recipe, index)
    log(f"[eval] KL to the model entering stage {index} on {len(prompts)} of its prompts")
    reference = model_of("base" if entering < 0 else recipe.stages[entering].name)
    try:
        return forward_kl(model, reference, tokenizer, prompts, evaluation.kl_tokens, evaluation.batch_size, stage.seed)
    finally:
        del reference


def train_and_record(
    model: Any,
    tokenizer: Any,
    ctx: StageContext,
    config_hash_: str,
    manifest: Manifest,
    evaluator: Evaluator,
    force: bool = False,
) -> Any:
    """Train stage ``ctx.index`` and record it: running -> trained (outputs hashed) -> completed (scored)."""
    recipe, index, stage, stage_dir, log = ctx.recipe, ctx.index, ctx.stage, ctx.stage_dir, ctx.log
    entry = running_entry(recipe, index, ctx.datasets, config_hash_, manifest.previous(index))

    def start() -> None:  # right before the stage first writes into its folder
        clear_stale_stage_folder(recipe, manifest, index, config_hash_, force, log)
        manifest.own(stage_dir.name)
        manifest.set_stage(index, entry)

    log(f"[stage {index}] '{stage.name}': training")
    ctx = replace(ctx, callbacks=[*ctx.callbacks, *evaluation_callbacks(ctx, evaluator, entry, manifest, tokenizer)])
    with before_first_write(stage_dir, start) as started:
        try:
            model, result = run_stage(model, tokenizer, ctx)
        except StagewiseError as err:  # a recipe/data problem found while running: name the stage
            record_failure(manifest, entry, started(), error=str(err))
            raise type(err)(f"stages.{index} '{stage.name}': {err}") from None
        except BaseException as err:
            record_failure(
                manifest,
                entry,
                started(),
                error=f"{type(err).__name__}: {err}".splitlines()[0][:500],
                traceback=traceback.format_exc(limit=3)[-2000:],
            )
            raise
    record_trained(entry, result, stage_dir)
    manifest.set_stage(index, entry)
    if evaluator.wants(index) and measures_kl(recipe, stage) and is_main_process():
        entry["kl_to_entering"] = stage_kl(model, tokenizer, recipe, index, ctx.datasets, ctx.identity.model_of, log)
        manifest.set_stage(index, entry)
    if evaluator.wants(index):
        evaluator.score_stage(entry, model, tokenizer, stage_dir.name)
    entry["status"] = "completed"
    manifest.set_stage(index, entry)
    return model


def evaluation_callbacks(
    ctx: StageContext, evaluator: Evaluator, entry: dict[str, Any], manifest: Manifest, tokenizer: Any
) -> list[TrainerCallback]:
    """Scoring during training: curve points (``evaluation.every``) and the retention guard."""
    evaluation, stage = ctx.recipe.evaluation, ctx.stage
    if evaluation is None or builds_model(stage):
        return []
    found: list[TrainerCallback] = []
    if evaluation.every != "stage":
        found.append(CurvePoints(evaluator, entry, manifest, tokenizer, evaluation.every))
    if evaluation.guard:
        guard = evaluation.guard
        metric = next(task.metric for task in evaluation.retention if task.name == guard.probe)
        found.append(
            RetentionGuard(
                lambda scored: evaluator.probe_score(scored, tokenizer, guard.probe, guard.items),
                guard,
                METRICS.get(metric).traits.higher_is_better,
                entry,
                ctx.log,
            )
        )
    return found


def record_failure(manifest: Manifest, entry: dict[str, Any], started: bool, **details: str) -> None:
    """A stage that failed after it began writing is marked failed; one that failed before leaves the
    earlier run's record (and folder) as they were."""
    if started:
        entry.update(status="failed", **details)
        manifest.set_stage(entry["index"], entry)


def running_entry(
    recipe: Recipe, index: int, datasets: dict[str, LoadedDataset], config_hash_: str, previous: dict[str, Any] | None
) -> dict[str, Any]:
    """The manifest entry of a stage about to train: its inputs, and the curve points and guard record
    a resumed run of the same config already has (points before its checkpoint are not recomputed;
    the guard keeps measuring drops from the score the stage entered with)."""
    stage = recipe.stages[index]
    entry: dict[str, Any] = {
        "index": index,
        "name": stage.name,
        "config_hash": config_hash_,
        "status": "running",
        "inputs": {
            "model": (
                str(stage_folder(recipe, entering_stage(recipe, index)))
                if entering_stage(recipe, index) >= 0
                else recipe.model.model_name_or_path
            ),
            "data": {
                n: {"source": datasets[n].source, "rows": len(datasets[n].rows), "fingerprint": datasets[n].fingerprint}
                for n in stage_inputs(stage)
            },
        },
        "outputs": {"dir": str(stage_folder(recipe, index))},
    }
    if previous and previous.get("config_hash") == config_hash_:
        entry.update({key: previous[key] for key in ("curve", "guard") if previous.get(key)})
    return entry


def record_trained(entry: dict[str, Any], result: StageResult, stage_dir: Path) -> None:
    """The stage's figures and the SHA-256 of every file it wrote (checked before reuse)."""
    entry.update(
        status="trained",
        trainable_params=result.trainable_params,
        total_params=result.total_params,
        trainable_fraction=result.trainable_params / max(result.total_params, 1),
        train_rows=result.train_rows,
        train_tokens=result.train_tokens,
        wall_time_s=round(result.wall_time_s, 3),
        tokens_per_s=round(result.tokens_per_s, 1),
        metrics=result.metrics,
        resumed_from=result.resumed_from,
        transforms=result.transforms,
        **({"merge": result.merge} if result.merge else {}),
        **({"data_mixture": result.mixture} if result.mixture else {}),
    )
    entry["outputs"]["files"] = sorted(p.name for p in stage_dir.iterdir() if p.is_file())
    entry["outputs"]["sha256"] = folder_sha256(stage_dir) if is_main_process() else {}
