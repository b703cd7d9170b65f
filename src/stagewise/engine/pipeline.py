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
from ..config import Recipe, measures_kl, recipe_to_dict, stage_objective
from ..data import LoadedDataset, load_dataset_config
from ..distributed import barrier, broadcast_from_main, init_from_launcher, is_main_process, main_decides
from ..errors import OutputError, StagewiseError
from ..eval import Evaluator
from ..eval.evaluator import evaluation_problem
from ..internals import installed_versions
from ..io import file_sha256, folder_sha256
from ..models import load_model_and_tokenizer, load_stage_output
from ..precision import resolve_precision
from ..report import build_report, flipped_by_stage, write_report
from ..sharding import check_shardable, wants_sharding
from ..written import before_first_write, remove, stage_written
from .context import ModelIdentity, StageContext, StageResult
from .identity import head_seed, seed_model_key, stage_hashes, stage_inputs
from .manifest import Manifest
from .named import entering_stage, named_folder, named_model, named_weights, stage_dir_name, stage_folder
from .run_folder import check_foreign_content, check_no_links, check_writable_folder, read_manifest, run_lock
from .scoring import drop_stale_points, evaluation_callbacks, stage_kl
from .stage import run_stage
from .stage_data import class_labels

Log = Callable[[str], None]


@dataclass
class RunResult:
    output_dir: Path
    manifest: dict[str, Any]
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase


def base_labels(recipe: Recipe, datasets: dict[str, LoadedDataset]) -> list[str] | None:
    for stage in recipe.stages:
        if stage_objective(recipe, stage) == "classification":
            return class_labels(recipe, stage, datasets)
    return None


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
    init_from_launcher(recipe.distributed.timeout_s)
    output_dir = Path(recipe.output_dir)
    main_decides(lambda: check_output_folder(recipe, output_dir))
    try:
        previous = read_manifest(output_dir)
    except OutputError as err:
        if not force:
            raise
        log(f"[force] {err}: starting afresh")
        previous = {}
    if not force:
        main_decides(lambda: check_foreign_content(output_dir, previous))
    with run_lock(output_dir, log):
        return _run_locked(recipe, recipe_path, callbacks, log, force, previous)


def check_output_folder(recipe: Recipe, output_dir: Path) -> None:
    check_writable_folder(output_dir)
    reports = ["manifest.json", "report.json", "report.md", "report.html", "report.png"]
    check_no_links(output_dir, [stage_dir_name(i, stage.name) for i, stage in enumerate(recipe.stages)] + reports)


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
            "versions": installed_versions(),  # the libraries that decide what the run computes
            "recipe_path": recipe_path,
            "recipe": recipe_to_dict(recipe),
            "model": recipe.model.model_name_or_path,
        },
        previous,
        len(recipe.stages),
    )
    start = reusable_stages(recipe, manifest, hashes, log)
    main_decides(lambda: check_stage_folders(recipe, manifest, hashes, start, force))
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
    manifest.set_base(base_scores)
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
        record = manifest.record()
        report = build_report(record)
        report["flipped"] = flipped_by_stage(output_dir, record, probe_rows(recipe, datasets))
        write_report(output_dir, report)
    return RunResult(output_dir=output_dir, manifest=manifest.data, model=model, tokenizer=tokenizer)


def probe_rows(recipe: Recipe, datasets: dict[str, LoadedDataset]) -> dict[str, list[dict[str, Any]]]:
    """Each target and retention probe's rows (the report shows a flipped item's question and gold)."""
    evaluation = recipe.evaluation
    tasks = [*evaluation.target, *evaluation.retention] if evaluation else []
    return {task.name: datasets[task.data].rows for task in tasks if task.data and task.data in datasets}


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
            problem = problem or curve_problem(Path(recipe.output_dir), previous)
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


def curve_problem(output_dir: Path, entry: dict[str, Any]) -> str | None:
    """Why the per-item files of a stage's curve points (scored during training, so only training
    again recomputes them) cannot be used, else None."""
    for point in entry.get("curve", []):
        problem = evaluation_problem(output_dir, point.get("evaluation"))
        if problem:
            return problem
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
        broken = is_main_process() and evaluation_problem(evaluator.output_dir, entry.get("evaluation"))
        if broken:
            log(f"[verify] stage {index} '{entry['name']}': {broken}: scoring it again")
        unscored = evaluator.wants(index) and broadcast_from_main(
            entry.get("evaluation_key") != evaluator.key or bool(broken)
        )
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
            drop_stale_points(entry, evaluator.key, log)
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
