"""``stagewise audit``: did this fine-tune break the model, and where? Any base/tuned pair, from any
tool, scored on the same items, compared pair by pair with 95% intervals (see :mod:`.paired`),
each generative drop split into format and knowledge loss, with the items that flipped and the
KL from base to tuned on general prompts (RL's Razor's forgetting predictor, :mod:`~stagewise.eval.kl`).
"""

from __future__ import annotations

import gc
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config import EvalTaskConfig, Recipe, load_suite
from ..config.schema import DatasetConfig
from ..data import load_dataset_config
from ..errors import StagewiseError
from ..eval import evaluate_suite
from ..eval.flips import flipped, is_binary, order_by_gold_logprob
from ..eval.kl import forward_kl, stage_prompts
from ..precision import autocast
from .checkpoints import Checkpoint, check_checkpoint, load_checkpoint, same_vocabulary, same_weights
from .paired import compare_results, regressions

DEFAULT_SUITE = Path(__file__).resolve().parents[3] / "suites" / "audit.yaml"
DEFAULT_PROMPTS = "chat:test"  # everyday questions and remarks (chatterbot corpus): general prompts


@dataclass
class AuditRequest:
    base: str
    tuned: list[str]
    suites: list[str] = field(default_factory=lambda: [str(DEFAULT_SUITE)])
    prompts: str = DEFAULT_PROMPTS
    n_boot: int = 2000
    lm_eval: list[str] = field(default_factory=list)  # lm-eval task names or local task YAML files
    lm_eval_limit: int | None = None  # first N documents per lm-eval task


@dataclass
class Probes:
    """The merged suites: one evaluation section, its datasets and their rows."""

    recipe: Recipe
    rows: dict[str, list[dict[str, Any]]]


def lm_eval_probe(spec: str, limit: int | None) -> EvalTaskConfig:
    """An lm-eval task (by name, or a local task YAML file: its folder becomes the include path) as
    a probe whose items are lm-eval's per-document scores (``log_samples``)."""
    from ..eval.lm_eval_probe import check_probe

    path = Path(spec).expanduser()
    name, include = spec, None
    if path.is_file():
        try:
            name = str((yaml.safe_load(path.read_text(encoding="utf-8")) or {})["task"])
        except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError) as err:
            raise StagewiseError(f"--lm-eval {spec}: not an lm-eval task YAML with a 'task' name ({err})") from None
        include = str(path.parent)
    probe_name = "lm_eval_" + re.sub(r"[^A-Za-z0-9_.+-]", "_", name)[:100]
    task = EvalTaskConfig(name=probe_name, metric="lm_eval", tasks=[name], include_path=include, limit=limit)
    problem = check_probe(task)
    if problem is not None:
        raise StagewiseError(f"--lm-eval {spec}: {problem[1]}")
    return task


def load_probes(suites: list[str], lm_eval: list[EvalTaskConfig] | None = None) -> Probes:
    """Every suite's probes in one evaluation (names must not repeat across suites), and the lm-eval
    tasks; with no suite, the default suite gives only the model and evaluation settings."""
    loaded = [load_suite(path) for path in suites]
    settings = loaded[0] if loaded else load_suite(DEFAULT_SUITE)
    retention, datasets = [], {}
    for suite in loaded:
        assert suite.evaluation is not None  # a suite is an evaluation section
        retention += [*suite.evaluation.retention, *suite.evaluation.target]
        datasets.update(suite.datasets)
    retention += lm_eval or []
    names = [task.name for task in retention]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise StagewiseError(f"--suite: probe names {repeated} appear in more than one suite; rename them")
    if not retention:
        raise StagewiseError(
            f"--suite {suites[0] if suites else ''}: the suite has no probes (evaluation.retention / target)"
        )
    assert settings.evaluation is not None
    evaluation = settings.evaluation.model_copy(update={"retention": retention, "target": []})
    recipe = settings.model_copy(update={"evaluation": evaluation, "datasets": datasets})
    used = {task.data for task in retention if task.data}
    return Probes(recipe, {name: load_dataset_config(name, datasets[name]).rows for name in sorted(used)})


def kl_prompts(spec: str, tokenizer: Any, count: int) -> list[list[int]]:
    """``count`` prompts from a built-in split (``name:split``) or an instruction-format file."""
    path = Path(spec).expanduser()
    cfg = (
        DatasetConfig(format="instruction", path=str(path))
        if path.exists()
        else DatasetConfig(format="instruction", builtin=spec)
    )
    rows = load_dataset_config("prompts", cfg).rows
    return stage_prompts(rows, "instruction", tokenizer, cfg.template, count, seed=0)


def score(checkpoint: Checkpoint, probes: Probes, log: Callable[[str], None]) -> dict[str, Any]:
    log(f"[audit] scoring {checkpoint.spec}")
    evaluation = probes.recipe.evaluation
    assert evaluation is not None
    with autocast(probes.recipe.performance.precision):
        return evaluate_suite(checkpoint.model, checkpoint.tokenizer, evaluation, probes.recipe.datasets, probes.rows)


def examples(base: dict[str, Any], tuned: dict[str, Any], probes: Probes, pair: tuple[Checkpoint, Checkpoint]):
    """Per 0/1 probe, the flipped items ordered by their gold log-probability change."""
    evaluation = probes.recipe.evaluation
    assert evaluation is not None
    found = {}
    for task in evaluation.retention:
        ours, theirs = base["retention"][task.name], tuned["retention"][task.name]
        if not task.data or not (is_binary(ours) and is_binary(theirs)):
            continue
        rows, cfg = probes.rows[task.data], probes.recipe.datasets[task.data]
        changed = flipped(ours, theirs, rows)
        with autocast(probes.recipe.performance.precision):
            order_by_gold_logprob(
                changed,
                rows,
                cfg,
                (pair[0].model, pair[1].model),
                pair[1].tokenizer,
                evaluation.batch_size,
                evaluation.max_length,
            )
        found[task.name] = changed
    return found


def token_level_refusal(base: Checkpoint, tuned: Checkpoint) -> str | None:
    if same_vocabulary(base, tuned):
        return None
    return (
        f"{tuned.spec} and {base.spec} have different tokenizers (vocabularies): the KL and per-token "
        "perplexity are not comparable and are left out; answer checks still are"
    )


def measure_kl(base: Checkpoint, tuned: Checkpoint, probes: Probes, request: AuditRequest, log: Callable[[str], None]):
    """KL(tuned || base) on the general prompts (None where the suite turns it off)."""
    evaluation = probes.recipe.evaluation
    assert evaluation is not None
    if not evaluation.kl_prompts:
        return None
    log(f"[audit] KL(tuned || base) on {evaluation.kl_prompts} prompts of {request.prompts}")
    prompts = kl_prompts(request.prompts, base.tokenizer, evaluation.kl_prompts)
    return forward_kl(
        tuned.model, base.model, base.tokenizer, prompts, evaluation.kl_tokens, batch_size=evaluation.batch_size
    )


def audit_one(
    base: Checkpoint,
    base_results: dict[str, Any],
    tuned: Checkpoint,
    probes: Probes,
    request: AuditRequest,
    log: Callable[[str], None],
) -> dict[str, Any]:
    refused = token_level_refusal(base, tuned)
    identical = tuned.spec == base.spec or (refused is None and same_weights(base, tuned))
    clock = Clock()
    results = base_results if identical else clock.time("scoring", lambda: score(tuned, probes, log))
    comparison = compare_results(base_results, results, request.n_boot)
    if refused:
        log(f"[audit] {refused}")
        for row in comparison["probes"].values():
            if row["metric"] == "perplexity":
                row["difference"] = None
    kl = None if refused or identical else clock.time("kl", lambda: measure_kl(base, tuned, probes, request, log))
    flips = clock.time("examples", lambda: examples(base_results, results, probes, (base, tuned)))
    return {
        "model": tuned.spec,
        "adapter_base": tuned.base_of_adapter,
        "identical_to_base": identical,
        "note": refused,
        "scores": {name: r["score"] for name, r in results["retention"].items()},
        **comparison,
        "kl_from_base": kl if not identical else {"per_sequence": 0.0, "per_token": 0.0},
        "flipped": flips,
        "seconds": clock.with_probes(results),
    }


class Clock:
    """Wall seconds per named phase (audit.json's cost record)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def time(self, phase: str, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return work()
        finally:
            self.seconds[phase] = round(time.perf_counter() - started, 1)

    def with_probes(self, results: dict[str, Any]) -> dict[str, Any]:
        """The phases and each probe's own seconds (as ``evaluate_task`` measured them)."""
        return {**self.seconds, "per_probe": {name: r["seconds"] for name, r in results["retention"].items()}}


def run_audit(request: AuditRequest, log: Callable[[str], None]) -> dict[str, Any]:
    """Every tuned checkpoint audited against the base (loaded one at a time beside it)."""
    check_checkpoint(request.base, "--base")
    for spec in request.tuned:
        check_checkpoint(spec, "--tuned")
    probes = load_probes(request.suites, [lm_eval_probe(spec, request.lm_eval_limit) for spec in request.lm_eval])
    model_cfg, precision = probes.recipe.model, probes.recipe.performance.precision
    started = time.perf_counter()
    base = load_checkpoint(request.base, model_cfg, precision)
    clock = Clock()
    base_results = clock.time("scoring", lambda: score(base, probes, log))
    audited = []
    for spec in request.tuned:
        tuned = load_checkpoint(spec, model_cfg, precision)
        audited.append(audit_one(base, base_results, tuned, probes, request, log))
        del tuned
        gc.collect()
    return {
        "base": request.base,
        "suites": request.suites,
        "kl_prompts": request.prompts,
        "base_scores": {name: r["score"] for name, r in base_results["retention"].items()},
        "base_seconds": clock.with_probes(base_results),
        "tuned": audited,
        "wall_s": round(time.perf_counter() - started, 1),
    }


__all__ = ["AuditRequest", "run_audit", "regressions", "DEFAULT_SUITE"]
