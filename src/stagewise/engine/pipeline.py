"""Run a recipe: load and check all data first, then train stage after stage.

Finished stages are skipped by config hash (the hash chains the previous stage's, so
a changed stage invalidates itself and every later one); an interrupted stage resumes
from its last checkpoint.
"""
from __future__ import annotations

import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from .. import __version__
from ..bundled import cache_dir
from ..config import Recipe, StageConfig, config_hash, recipe_to_dict, stage_objective
from ..data import LoadedDataset, load_dataset_config
from ..distributed import barrier, broadcast_from_main, init_from_launcher, is_main_process
from ..errors import RecipeError, StagewiseError
from ..eval import evaluate_suite
from ..io import atomic_write_json, read_json
from ..models import load_model_and_tokenizer, load_stage_output
from ..report import build_report, write_report
from .manifest import Manifest
from .stage import ModelIdentity, class_labels, run_stage


@dataclass
class RunResult:
    output_dir: Path
    manifest: dict[str, Any]
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def stage_dir_name(index: int, name: str) -> str:
    return f"{index}-{name}"


def stage_inputs(stage: StageConfig) -> list[str]:
    """The datasets a stage reads: its training data, then its held-out data."""
    return stage.data + (stage.eval.data if stage.eval else [])


def seed_model_key(recipe: Recipe) -> str:
    """Identity of the run's starting model: its recipe entry and, for a local folder, its weights."""
    return config_hash(recipe_to_dict(recipe)["model"], model_fingerprint(recipe.model.model_name_or_path))


def stage_hashes(recipe: Recipe, datasets: dict[str, LoadedDataset]) -> list[str]:
    """Per-stage hash over the starting model, the stage config, its data content, and the previous hash."""
    hashes: list[str] = []
    parent = seed_model_key(recipe)
    for stage in recipe.stages:
        parent = config_hash(parent, stage.model_dump(mode="json"),
                             {n: datasets[n].fingerprint for n in stage_inputs(stage)})
        hashes.append(parent)
    return hashes


def base_labels(recipe: Recipe, datasets: dict[str, LoadedDataset]) -> list[str] | None:
    for stage in recipe.stages:
        if stage_objective(recipe, stage) == "classification":
            return class_labels(recipe, stage, datasets)
    return None


def check_model_task(recipe: Recipe) -> None:
    for index, stage in enumerate(recipe.stages):
        objective = stage_objective(recipe, stage)
        if objective == "classification" and recipe.model.task != "sequence_classification":
            raise RecipeError(
                f"stages.{index}.data: classification data needs model.task: sequence_classification"
            )
        if objective == "lm" and recipe.model.task != "causal_lm":
            raise RecipeError(f"stages.{index}.data: language-modelling data needs model.task: causal_lm")
        if (objective == "preference") != (stage.loss.kind == "dpo"):
            raise RecipeError(f"stages.{index}.loss: preference data trains with loss: dpo, and dpo needs preference data")


def model_fingerprint(name: str) -> Any:
    """A local folder's weights can change under the same path: include their sizes and mtimes."""
    folder = Path(name)
    if not folder.is_dir():
        return name
    return [name, sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.glob("*.safetensors"))]


def evaluation_hash(recipe: Recipe, datasets: dict[str, LoadedDataset]) -> str:
    assert recipe.evaluation is not None
    used = {task.data for group in ("target", "retention") for task in getattr(recipe.evaluation, group)}
    return config_hash(seed_model_key(recipe), recipe.evaluation.model_dump(mode="json"),
                       {name: datasets[name].fingerprint for name in sorted(used)})


class Evaluator:
    """Evaluates the recipe's probes. The base model's scores are cached in the user cache by
    (model, probes, probe data) hash, so recipes compared on the same probes score it once."""

    def __init__(self, recipe: Recipe, datasets: dict[str, LoadedDataset], log: Any) -> None:
        self.recipe, self.datasets, self.log = recipe, datasets, log
        self.key = evaluation_hash(recipe, datasets) if recipe.evaluation else None
        self.base_path = cache_dir() / "eval" / f"base-{self.key}.json"

    def __call__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        assert self.recipe.evaluation is not None
        rows = {name: loaded.rows for name, loaded in self.datasets.items()}
        return evaluate_suite(model, tokenizer, self.recipe.evaluation, self.recipe.datasets, rows)

    def wants(self, index: int) -> bool:
        """Score after this stage? (every stage, or only the last one)."""
        evaluation = self.recipe.evaluation
        return evaluation is not None and (evaluation.after_each_stage or index == len(self.recipe.stages) - 1)

    def score_stage(self, entry: dict[str, Any], model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.log(f"[eval] after stage {entry['index']} '{entry['name']}'")
        entry["evaluation"] = self(model, tokenizer)
        entry["evaluation_key"] = self.key

    def cached_base(self) -> dict[str, Any] | None:
        """Rank 0's view of the cache, so every rank agrees on whether to score the base model."""
        cached = None
        if self.key is not None and is_main_process() and self.base_path.is_file():
            cached = read_json(self.base_path)
        return broadcast_from_main(cached["results"] if cached and cached.get("key") == self.key else None)

    def base(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        self.log("[eval] base model")
        results = self(model, tokenizer)
        if is_main_process():
            atomic_write_json(self.base_path, {"key": self.key, "results": results})
        return results


def run_recipe(
    recipe: Recipe,
    recipe_path: str | None = None,
    callbacks: list[TrainerCallback] | None = None,
    log: Any = print,
) -> RunResult:
    init_from_launcher()
    check_model_task(recipe)
    if recipe.distributed.fsdp and not torch.cuda.is_available():
        log("[warning] distributed.fsdp: without a GPU, the Trainer (accelerate) runs this as plain DDP, not sharded")
    datasets = {name: load_dataset_config(name, cfg) for name, cfg in recipe.datasets.items()}
    hashes = stage_hashes(recipe, datasets)
    seed_key = seed_model_key(recipe)

    def load_seed() -> tuple[Any, Any]:
        return load_model_and_tokenizer(recipe.model, base_labels(recipe, datasets))

    output_dir = Path(recipe.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(output_dir, {
        "stagewise_version": __version__,
        "recipe_path": recipe_path,
        "recipe": recipe_to_dict(recipe),
        "model": recipe.model.model_name_or_path,
    })

    start = 0
    for index, stage in enumerate(recipe.stages):
        previous = manifest.previous(index)
        done = (previous and previous.get("config_hash") == hashes[index]
                and previous.get("status") == "completed"
                and (output_dir / stage_dir_name(index, stage.name)).is_dir())
        if not done:
            break
        manifest.set_stage(index, previous)
        log(f"[skip] stage {index} '{stage.name}' already completed (config {hashes[index]})")
        start = index + 1

    evaluator = Evaluator(recipe, datasets, log)
    for index in range(start):  # finished stages whose probes changed: re-score their saved weights
        entry = manifest.data["stages"][index]
        if evaluator.wants(index) and entry.get("evaluation_key") != evaluator.key:
            stage_model, stage_tokenizer = load_stage_output(Path(entry["outputs"]["dir"]), recipe.model)
            evaluator.score_stage(entry, stage_model, stage_tokenizer)
            manifest.set_stage(index, entry)

    for index in range(start, len(recipe.stages)):
        stage_dir = output_dir / stage_dir_name(index, recipe.stages[index].name)
        previous = manifest.previous(index)
        if stage_dir.exists() and (previous is None or previous.get("config_hash") != hashes[index]):
            log(f"[invalidate] stage {index} '{recipe.stages[index].name}' changed: removing {stage_dir}")
            if is_main_process():
                shutil.rmtree(stage_dir)
    barrier()

    base_scores = evaluator.cached_base()
    if start == 0 or (evaluator.key is not None and base_scores is None):
        model, tokenizer = load_seed()
        if evaluator.key is not None and base_scores is None:
            base_scores = evaluator.base(model, tokenizer)
    manifest.data["base_evaluation"] = base_scores
    source: Path | None = None
    if start > 0:
        source = output_dir / stage_dir_name(start - 1, recipe.stages[start - 1].name)
        model, tokenizer = load_stage_output(source, recipe.model)

    for index in range(start, len(recipe.stages)):
        stage = recipe.stages[index]
        stage_dir = output_dir / stage_dir_name(index, stage.name)
        entry: dict[str, Any] = {
            "index": index,
            "name": stage.name,
            "config_hash": hashes[index],
            "status": "running",
            "inputs": {
                "model": str(source) if source else recipe.model.model_name_or_path,
                "data": {n: {"source": datasets[n].source, "rows": len(datasets[n].rows),
                             "fingerprint": datasets[n].fingerprint} for n in stage_inputs(stage)},
            },
            "outputs": {"dir": str(stage_dir)},
        }
        manifest.set_stage(index, entry)
        log(f"[stage {index}] '{stage.name}': training")
        try:
            identity = ModelIdentity(key=hashes[index - 1] if index else seed_key, seed_key=seed_key, load_seed=load_seed)
            model, result = run_stage(model, tokenizer, recipe, index, datasets, stage_dir, identity, callbacks, log)
        except StagewiseError as err:  # a recipe/data problem found while running: name the stage
            entry.update(status="failed", error=str(err))
            manifest.set_stage(index, entry)
            raise type(err)(f"stages.{index} '{stage.name}': {err}") from None
        except BaseException as err:
            entry.update(status="failed", error=f"{type(err).__name__}: {err}".splitlines()[0][:500],
                         traceback=traceback.format_exc(limit=3)[-2000:])
            manifest.set_stage(index, entry)
            raise
        entry.update(
            status="completed",
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
        )
        entry["outputs"]["files"] = sorted(p.name for p in stage_dir.iterdir() if p.is_file())
        if evaluator.wants(index):
            evaluator.score_stage(entry, model, tokenizer)
        manifest.set_stage(index, entry)
        source = stage_dir
    if recipe.evaluation and is_main_process():
        write_report(output_dir, build_report(manifest.data))
    return RunResult(output_dir=output_dir, manifest=manifest.data, model=model, tokenizer=tokenizer)
