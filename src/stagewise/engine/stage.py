"""Run one stage: transform its data, select trainable tensors, hand everything to the stage's
trainer entry, train, save.

One stage = one trainer (``transformers.Trainer`` or a registered TRL one) with a fresh
optimizer over the trainable tensors only. The model object (and any add-on attached to
it) carries over to the next stage. Outputs follow Hugging Face conventions: the stage folder
is a ``save_pretrained`` folder with ``trainer_state.json`` and ``train_results.json``.
"""

from __future__ import annotations

import math
import pickle
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, cast

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
)

from ..addons import base_without_addon_layers, is_peft_model, model_to_save
from ..config import (
    EvalTaskConfig,
    EvaluationConfig,
    Recipe,
    StageConfig,
    stage_objective,
)
from ..data import ListDataset, LoadedDataset
from ..errors import DiskSpaceError, TrainingError
from ..eval import evaluate_task
from ..merging import BASE, merge_model
from ..models import load_stage_output
from ..precision import (
    COMPUTE_DTYPES,
    autocast,
    hold_trainable_in_fp32,
    resolve_precision,
    return_to_storage_dtype,
    trainer_flags,
)
from ..protocols import (
    ArgsT,
    LossContext,
    LrRuleContext,
    RegularizerContext,
    SelectionContext,
    TrainerInputs,
)
from ..registry import LOSSES, LR_RULES, OPTIMIZERS, REGULARIZERS, TRAINERS
from ..selection import apply_selector, count_parameters
from ..sharding import shard_model, wants_sharding
from ..speed import mfu
from ..written import Written
from .checkpoints import CheckpointSeal, last_complete_checkpoint, remove_checkpoints
from .context import ADAPTER_DIR, StageContext, StageResult
from .stage_data import StageData, encode_stage_data, prepare_data, transform_stage_data


def training_arguments(recipe: Recipe, stage: StageConfig, stage_dir: Path, cls: type[ArgsT], **extra: Any) -> ArgsT:
    """Map a stage's keys onto ``TrainingArguments`` (or a TRL subclass; HF names kept); ``extra``
    adds keys or replaces the mapped ones."""
    kwargs: dict[str, Any] = dict(
        output_dir=str(stage_dir),
        per_device_train_batch_size=stage.batch_size,
        per_device_eval_batch_size=stage.eval.batch_size if stage.eval else stage.batch_size,
        gradient_accumulation_steps=stage.grad_accum,
        ddp_timeout=recipe.distributed.timeout_s,
        learning_rate=stage.lr,
        num_train_epochs=stage.epochs,
        max_steps=stage.max_steps,
        weight_decay=stage.weight_decay,
        lr_scheduler_type=stage.lr_scheduler_type,
        # transformers reads warmup_steps < 1 as a ratio of the total steps and >= 1 as a step
        # count; just under 1 keeps ratio 1.0 a ratio (ceil(n * (1 - 1e-9)) = n for n < 1e9)
        warmup_steps=min(stage.warmup_ratio, 1 - 1e-9),
        max_grad_norm=stage.max_grad_norm,
        seed=stage.seed,
        data_seed=stage.seed,
        logging_steps=stage.logging_steps,
        save_strategy="steps",
        save_steps=stage.save_steps,
        save_total_limit=1,
        report_to=recipe.report_to,
        remove_unused_columns=False,
        include_num_input_tokens_seen=(
            "all" if recipe.performance.padding_free and stage_objective(recipe, stage) == "lm" else "non_padding"
        ),
        disable_tqdm=False,
        use_cpu=not torch.cuda.is_available(),
    )
    kwargs.update(extra)
    if stage.optim:
        kwargs["optim"] = stage.optim
    if recipe.distributed.deepspeed:  # FSDP is applied by the engine (sharding.py), not by the Trainer
        kwargs["deepspeed"] = recipe.distributed.deepspeed
    performance = recipe.performance
    kwargs.update(trainer_flags(performance.precision), torch_compile=performance.torch_compile)
    if performance.gradient_checkpointing:  # transformers 5 calls it activation checkpointing
        kwargs["activation_checkpointing"] = True
    if stage.eval and stage.eval.select_best:  # the stopping epoch is chosen on the dev split, never on test
        kwargs.update(
            eval_strategy="epoch",
            save_strategy="epoch",
            save_total_limit=2,
            load_best_model_at_end=True,
            metric_for_best_model=f"eval_{stage.eval.data[0]}_loss",
            greater_is_better=False,
        )
    return cls(**kwargs)


def save_stage_model(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """A ``save_pretrained`` folder; with an add-on, the clean base model there and the
    add-on under ``adapter/`` (``PeftModel.from_pretrained(base, folder / "adapter")``)."""
    folder.mkdir(parents=True, exist_ok=True)
    if is_peft_model(model):
        with base_without_addon_layers(model) as base:
            cast(PreTrainedModel, base).save_pretrained(folder)
        model.save_pretrained(str(folder / ADAPTER_DIR))
    else:
        cast(PreTrainedModel, model).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


class FiniteLossGuard(TrainerCallback):
    """Stops a stage whose loss or gradient norm stops being finite (diverged): its weights
    are garbage and must never be marked completed or handed to the next stage."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for key in ("loss", "grad_norm", "train_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise TrainingError(
                    f"{key} became {value} at step {state.global_step}: training diverged "
                    "(lower the lr, or set max_grad_norm)"
                )


def check_finite_weights(model: torch.nn.Module) -> None:
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param).all():
            raise TrainingError(f"parameter {name} holds NaN/inf after training: training diverged (lower the lr)")


def run_stage(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, ctx: StageContext
) -> tuple[torch.nn.Module, StageResult]:
    """Train one stage: data -> transforms -> selector -> objective -> trainer -> train -> save.
    Returns the model to hand over (wrapped if the stage attached an add-on)."""
    recipe, stage, index, stage_dir, log = ctx.recipe, ctx.stage, ctx.index, ctx.stage_dir, ctx.log
    with autocast(recipe.performance.precision):
        datasets, transform_reports = transform_stage_data(model, tokenizer, ctx)
    data = prepare_data(recipe, stage, datasets, tokenizer)
    entering, build = model, TRAINERS.get(stage.trainer.kind).traits.builds_model
    if build is not None:  # the stage trains a model of its own (a reward model) and hands on ``entering``
        model = build(model, stage.seed)
    model, selector_callbacks = apply_selector(
        model,
        stage.trainable,
        SelectionContext(seed=stage.seed, stage_index=index, examples_of=data.encode, collator=data.collator),
    )
    hold_trainable_in_fp32(model, recipe.performance.precision)
    trainable, total = count_parameters(model)
    trainer = build_trainer(
        model, tokenizer, ctx, data, selector_callbacks, [CheckpointSeal(), FiniteLossGuard(), *ctx.callbacks]
    )
    checkpoint = (
        last_complete_checkpoint(stage_dir, log) if recipe.resume_from_checkpoint and stage_dir.is_dir() else None
    )
    started = time.perf_counter()
    metrics = train(trainer, checkpoint) if trainable > 0 else {}  # trainable: none only evaluates and saves
    if getattr(trainer, "sharded", False):
        model = reload_whole(trainer, recipe, stage_dir)
    return_to_storage_dtype(model)
    # evaluation run from inside train() (curve points) is not training time
    wall = time.perf_counter() - started - sum(getattr(cb, "off_clock_s", 0.0) for cb in ctx.callbacks)
    tokens = int(trainer.state.num_input_tokens_seen)
    metrics.update(throughput(recipe, model, data.examples, tokens, wall))
    merge = None
    if stage.merge:
        release_optimizer_state(trainer)
        Written(stage_dir).record("merge-tuned.safetensors")
        model, merge = merge_model(
            model,
            stage.merge,
            ctx.identity.weights_of,
            dev_scorer(recipe, stage, datasets, tokenizer),
            log,
            scratch=stage_dir / "merge-tuned.safetensors",
            seed=stage.seed,
        )
    if stage.eval:
        metrics.update(evaluate_stage(trainer, recipe, stage, datasets, tokenizer, data.labels))
    model = save_stage(trainer, model_to_save(model, stage.trainable), tokenizer, stage_dir, metrics)
    return (model if build is None else entering), StageResult(
        trainable_params=trainable,
        total_params=total,
        train_rows=len(data.examples),
        train_tokens=tokens,
        wall_time_s=wall,
        tokens_per_s=tokens / wall if wall > 0 else 0.0,
        metrics=metrics,
        resumed_from=Path(checkpoint).name if checkpoint else None,
        transforms=transform_reports,
        merge=merge,
        mixture=data.mixture,
    )


def reload_whole(trainer: Trainer, recipe: Recipe, stage_dir: Path) -> torch.nn.Module:
    """After sharded training: the trained weights gathered into the stage folder and loaded back
    whole by every rank, so merges, generation, evaluation and the next stage's selector see plain
    tensors, as without sharding (the stage's final save then overwrites the folder's weights)."""
    release_optimizer_state(trainer)
    written = Written(stage_dir)
    written.begin_library_save()
    trainer.save_model(str(stage_dir))
    written.end_library_save()
    model = load_stage_output(stage_dir, recipe.model, recipe.performance.precision)[0]
    check_finite_weights(model)
    return model


def release_optimizer_state(trainer: Trainer) -> None:
    """Free the optimizer's moments and the gradients before a merge needs the memory (the trainer
    itself still saves the stage's state and scores its held-out data)."""
    import gc

    if trainer.optimizer is not None:
        trainer.optimizer.state.clear()
    if trainer.model is not None:
        trainer.model.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def dev_scorer(
    recipe: Recipe, stage: StageConfig, datasets: dict[str, LoadedDataset], tokenizer: PreTrainedTokenizerBase
) -> Callable[[torch.nn.Module], float] | None:
    """The merge's dev score of a model: the mean over its dev sets (negated for lower-is-better
    metrics), with the recipe's evaluation settings."""
    select = stage.merge.select if stage.merge else None
    if select is None:
        return None
    settings = recipe.evaluation or EvaluationConfig()

    def score(model: torch.nn.Module) -> float:
        scores = []
        for name in select.data:
            probe = EvalTaskConfig(
                name="merge-dev", data=name, metric=select.metric, max_new_tokens=select.max_new_tokens
            )
            with autocast(recipe.performance.precision):
                result = evaluate_task(model, tokenizer, probe, recipe.datasets[name], datasets[name].rows, settings)
            scores.append(result["score"] if result["higher_is_better"] else -result["score"])
        return sum(scores) / len(scores)

    return score


def build_trainer(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    ctx: StageContext,
    data: StageData,
    selector_callbacks: list[TrainerCallback],
    callbacks: list[TrainerCallback],
) -> Trainer:
    """The stage's loss, regularizer and LR plan, handed with the data to the stage's trainer entry."""
    recipe, stage, stage_dir, identity = ctx.recipe, ctx.stage, ctx.stage_dir, ctx.identity
    class_counts = (
        [sum(ex["labels"] == i for ex in data.examples) for i in range(len(data.labels))] if data.labels else []
    )
    loss = LOSSES.impl(stage.loss)(stage.loss, LossContext(objective=data.objective, class_counts=class_counts))
    with autocast(recipe.performance.precision):  # EWC's Fisher is computed in the compute dtype
        penalty = REGULARIZERS.impl(stage.regularizer)(
            stage.regularizer,
            model,
            RegularizerContext(
                examples_of=data.encode,
                collator=data.collator,
                model_key=identity.key,
                stage_dir=stage_dir,
                log=ctx.log,
            ),
        )
    lr_plan = LR_RULES.impl(stage.lr_rule)(stage.lr_rule, model, LrRuleContext(base_lr=stage.lr))
    if wants_sharding(recipe):  # after the selector, the penalty's anchors and the LR rule saw whole tensors
        shard_model(
            model,
            COMPUTE_DTYPES[resolve_precision(recipe.performance.precision)],
            recipe.distributed.reshard_after_forward,
        )
        if penalty is not None:
            penalty.follow(model)
    inputs = TrainerInputs(
        model=model,
        tokenizer=tokenizer,
        rows=data.rows,
        examples=data.examples,
        dev=data.dev,
        collator=data.collator,
        loss=loss,
        split_groups=lr_plan.split_groups,
        callbacks=[*selector_callbacks, *lr_plan.callbacks, *callbacks],
        penalty=penalty,
        sampler=data.sampler,
        stage_folder=identity.folder_of,
        model_named=identity.model_of,
        prompts=data.prompts,
        batch_size=stage.batch_size,
        weights_named=lambda name: (
            identity.weights_of(name) if name in (BASE, *(s.name for s in recipe.stages)) else None
        ),
        build_optimizer=lambda groups, args: OPTIMIZERS.impl(stage.optimizer)(stage.optimizer, groups, args),
        args_for=partial(training_arguments, recipe, stage, stage_dir),
    )
    return TRAINERS.impl(stage.trainer)(stage.trainer, inputs)


def train(trainer: Trainer, checkpoint: str | None) -> dict[str, float]:
    """Run the trainer (from ``checkpoint`` if resuming); the run's final and last-logged metrics."""
    try:
        output = trainer.train(resume_from_checkpoint=checkpoint)
    except pickle.UnpicklingError as err:  # torch.load(weights_only=True) refused a checkpoint file
        if checkpoint is None:
            raise
        first = str(err).strip().splitlines()[0][:120]
        raise TrainingError(
            f"{checkpoint}: a checkpoint file holds objects stagewise never unpickles ({first}); "
            "remove that folder to resume from an earlier checkpoint or the stage start"
        ) from None
    metrics = {key: float(value) for key, value in output.metrics.items() if isinstance(value, (int, float))}
    metrics.update(last_logged(trainer))
    if trainer.model is not None and not getattr(trainer, "sharded", False):  # sharded: checked once reloaded whole
        check_finite_weights(trainer.model)
    best = trainer.args.metric_for_best_model
    if trainer.state.best_model_checkpoint and best:
        metrics["best_epoch"] = float(
            next(r["epoch"] for r in trainer.state.log_history if r.get(best) == trainer.state.best_metric)
        )
    return metrics


def throughput(
    recipe: Recipe, model: torch.nn.Module, examples: list[dict[str, Any]], tokens: int, wall: float
) -> dict[str, float]:
    """MFU and the peak it is measured against (nothing when no token was trained)."""
    if not tokens or wall <= 0:
        return {}
    context = sum(len(ex.get("input_ids", ())) for ex in examples) / max(len(examples), 1)
    dtype = str(COMPUTE_DTYPES[resolve_precision(recipe.performance.precision)]).removeprefix("torch.")
    value, peak = mfu(model, tokens / wall, context, dtype)
    return {"mfu": value, "peak_flops": peak}


def save_stage(
    trainer: Trainer,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    stage_dir: Path,
    metrics: dict[str, float],
) -> torch.nn.Module:
    """Weights (a ``save_pretrained`` folder), trainer_state.json and train_results.json; the
    checkpoints are removed once the stage's own files are written."""
    check_free_space(model, stage_dir)
    written = Written(stage_dir)
    written.begin_library_save()
    if is_peft_model(model) or model is not trainer.model:
        if trainer.is_world_process_zero():
            save_stage_model(model, tokenizer, stage_dir)
    else:
        trainer.save_model(str(stage_dir))  # gathers sharded (FSDP/ZeRO-3) weights; the main process writes
    trainer.save_state()
    trainer.save_metrics("train", metrics)
    written.end_library_save()
    remove_checkpoints(stage_dir)
    return model


def check_free_space(model: torch.nn.Module, folder: Path, margin: float = 1.1) -> None:
    """One line (exit 1) before a save that the disk cannot hold: the weights in their stored size,
    with a margin for the tokenizer and state files."""
    needed = margin * sum({id(p): p.numel() * p.element_size() for p in model.parameters()}.values())
    free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
    if free < needed:
        raise DiskSpaceError(
            f"{folder}: saving the stage needs about {needed / 2**30:.2f} GiB but only "
            f"{free / 2**30:.2f} GiB are free; free space and rerun the same command to resume"
        )


def last_logged(trainer: Trainer) -> dict[str, float]:
    """The last logged value of each namespaced training metric (a TRL trainer's rewards/margins, ...)."""
    latest: dict[str, float] = {}
    for record in trainer.state.log_history:
        for key, value in record.items():
            if "/" in key and isinstance(value, (int, float)):
                latest[f"last_{key}"] = float(value)
    return latest


def evaluate_stage(
    trainer: Trainer,
    recipe: Recipe,
    stage: StageConfig,
    datasets: dict[str, LoadedDataset],
    tokenizer: PreTrainedTokenizerBase,
    labels: list[str] | None,
) -> dict[str, float]:
    """Held-out loss (and perplexity for LM data) on each of the stage's eval datasets; a trainer
    that builds its own batches (TRL's) gets the raw rows and adds its own metrics (a reward
    model's pairwise accuracy and margin)."""
    assert stage.eval is not None
    results: dict[str, float] = {}
    own_batches = not TRAINERS.get(stage.trainer.kind).traits.samples_examples
    for name in stage.eval.data:
        prefix = f"eval_{name}"
        if own_batches:
            from datasets import Dataset

            found = trainer.evaluate(Dataset.from_list(datasets[name].rows), metric_key_prefix=prefix)
            logged = trainer.state.log_history[-1] if trainer.state.log_history else {}
            found.update(
                {
                    prefix + key[4:]: value
                    for key, value in logged.items()  # TRL logs eval_accuracy, ...
                    if key.startswith("eval_") and prefix + key[4:] not in found
                }
            )
            results.update(
                {
                    key: float(value)
                    for key, value in found.items()
                    if key.startswith(prefix)
                    and isinstance(value, (int, float))
                    and not key.endswith(("_runtime", "_per_second"))
                }
            )
            continue
        examples = encode_stage_data(recipe, stage, [name], datasets, tokenizer, labels)
        loss = trainer.evaluate(ListDataset(examples), metric_key_prefix=prefix)[f"{prefix}_loss"]
        results[f"{prefix}_loss"] = float(loss)
        if recipe.datasets[name].format != "classification":
            results[f"{prefix}_perplexity"] = float(math.exp(min(loss, 50.0)))
    return results
