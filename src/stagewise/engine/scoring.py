"""What a stage measures besides its own evaluation: curve points during training
(``evaluation.every``), the retention guard's hookup and the forgetting predictor (KL to the entering
model)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from ..config import Recipe, builds_model
from ..data import LoadedDataset
from ..eval import Evaluator
from ..eval.kl import forward_kl, stage_prompts
from ..registry import METRICS
from ..written import Written
from .context import StageContext
from .guard import RetentionGuard
from .manifest import Manifest
from .named import entering_stage, stage_dir_name

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
        curve.append(
            {
                "epoch": epoch,
                "step": state.global_step,
                "evaluation": summary,
                "eval_time_s": seconds,
                "evaluation_key": self.evaluator.key,
            }
        )
        self.entry["curve"] = sorted(curve, key=lambda p: p["step"])
        self.manifest.set_stage(self.entry["index"], self.entry)


def drop_stale_points(entry: dict[str, Any], key: str | None, log: Callable[[str], None]) -> None:
    """A reused stage scored again under other evaluation settings keeps only the curve points
    scored under these (a point cannot be rescored without training again; one recorded without a
    key was scored under its stage's recorded key), so no curve mixes probes or settings."""
    recorded = entry.get("evaluation_key")
    kept = [point for point in entry.get("curve", []) if point.get("evaluation_key", recorded) in (key, None)]
    if len(kept) < len(entry.get("curve", [])):
        log(
            f"[eval] stage {entry['index']} '{entry['name']}': {len(entry['curve']) - len(kept)} curve point(s) "
            "were scored under other evaluation settings and are dropped (train the stage again to rescore them)"
        )
        entry["curve"] = kept


def stage_kl(
    model: Any,
    tokenizer: Any,
    recipe: Recipe,
    index: int,
    datasets: dict[str, LoadedDataset],
    model_of: Callable[[str], Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """KL(tuned ‖ entering) on the stage's own prompts (``eval.kl``); the entering model is reloaded.
    ``seconds`` (reload included) is counted in a study's evaluation cost."""
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
    started = time.perf_counter()
    reference = model_of("base" if entering < 0 else recipe.stages[entering].name)
    try:
        kl = forward_kl(model, reference, tokenizer, prompts, evaluation.kl_tokens, evaluation.batch_size, stage.seed)
    finally:
        del reference
    return {**kl, "seconds": round(time.perf_counter() - started, 3)}


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
