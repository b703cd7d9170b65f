"""The run's evaluator: scores the recipe's probes at named points and records the items."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import PreTrainedTokenizerBase

from ..bundled import cache_dir
from ..config import Recipe, builds_model, config_hash
from ..data import LoadedDataset
from ..distributed import broadcast_from_main, is_main_process
from ..errors import DataError
from ..io import JSONProblem, atomic_write_text, parse_json, read_verified_json, write_verified_json
from ..precision import autocast
from .suite import evaluate_suite, evaluate_task


def evaluation_hash(recipe: Recipe, datasets: dict[str, LoadedDataset], seed_key: str) -> str:
    """Identity of the base model's scores: the model, the probes and the probed data."""
    assert recipe.evaluation is not None
    used = {task.data for group in ("target", "retention") for task in getattr(recipe.evaluation, group) if task.data}
    return config_hash(
        seed_key,
        recipe.evaluation.model_dump(mode="json", exclude_defaults=True),
        {name: datasets[name].fingerprint for name in sorted(used)},
    )  # seed_key holds the precision


def read_items(run_dir: Path, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """A probe's per-item scores as recorded: DataError (one line) when the file is missing, differs
    from the SHA-256 its summary recorded (truncated, edited), or is not one JSON object per line."""
    path = run_dir / summary["items_file"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: per-item scores missing") from None
    if summary.get("items_sha256") not in (None, hashlib.sha256(data).hexdigest()):
        raise DataError(f"{path}: per-item scores differ from what the run wrote (truncated or edited)")
    items = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        try:
            item = parse_json(line)
        except JSONProblem as err:
            raise DataError(f"{path} line {number}: not a per-item score ({err.why})") from None
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise DataError(f"{path} line {number}: not a per-item score (expected an object with an id)")
        items.append(item)
    return items


def evaluation_problem(run_dir: Path, evaluation: dict[str, Any] | None) -> str | None:
    """Why a recorded evaluation's per-item files cannot be used (the first problem), else None."""
    for probes in (evaluation or {}).values():
        for summary in probes.values():
            try:
                read_items(run_dir, summary)
            except DataError as err:
                return str(err)
    return None


class Evaluator:
    """Evaluates the recipe's probes at a named point (``base``, ``0-sft``, ``0-sft/epoch-1``).

    Each probe's per-item scores go to ``eval/<point>/<probe>.jsonl`` in the run folder; the
    manifest keeps the summary and that file's path. The base model's scores are cached in the
    user cache by (model, probes, probe data) hash, so recipes compared on the same probes score
    it once."""

    def __init__(
        self, recipe: Recipe, datasets: dict[str, LoadedDataset], seed_key: str, log: Callable[[str], None]
    ) -> None:
        self.recipe, self.datasets, self.log = recipe, datasets, log
        self.output_dir = Path(recipe.output_dir)
        self.key = evaluation_hash(recipe, datasets, seed_key) if recipe.evaluation else None
        self.base_path = cache_dir() / "eval" / f"base-{self.key}.json"

    def __call__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        assert self.recipe.evaluation is not None
        rows = {name: loaded.rows for name, loaded in self.datasets.items()}
        with autocast(self.recipe.performance.precision):
            return evaluate_suite(model, tokenizer, self.recipe.evaluation, self.recipe.datasets, rows)

    def record(self, point: str, results: dict[str, Any]) -> dict[str, Any]:
        """Write each probe's items to ``eval/<point>/<probe>.jsonl`` (atomically, its SHA-256 kept in
        the summary); return the results without them."""
        summary: dict[str, Any] = {}
        for group, probes in results.items():
            summary[group] = {}
            for name, result in probes.items():
                relative = f"eval/{point}/{name}.jsonl"
                text = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in result.get("items", []))
                if is_main_process():
                    atomic_write_text(self.output_dir / relative, text)
                summary[group][name] = {
                    **{k: v for k, v in result.items() if k != "items"},
                    "items_file": relative,
                    "items_sha256": hashlib.sha256(text.encode()).hexdigest(),
                }
        return summary

    def probe_score(
        self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, name: str, items: int | None
    ) -> float:
        """One retention probe's score on its first ``items`` items, recorded nowhere (the guard's check)."""
        assert self.recipe.evaluation is not None
        task = next(task for task in self.recipe.evaluation.retention if task.name == name)
        rows = self.datasets[task.data].rows[:items] if task.data else []
        cfg = self.recipe.datasets[task.data] if task.data else None
        with autocast(self.recipe.performance.precision):
            return evaluate_task(model, tokenizer, task, cfg, rows, self.recipe.evaluation)["score"]

    def score(
        self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, point: str
    ) -> tuple[dict[str, Any], float]:
        """(summary, wall seconds) of scoring ``model`` at ``point``."""
        started = time.perf_counter()
        summary = self.record(point, self(model, tokenizer))
        return summary, round(time.perf_counter() - started, 3)

    def wants(self, index: int) -> bool:
        """Score after this stage? (every stage, or only the last one; a stage that trains a separate
        model, e.g. a reward model, hands on the model it received: scored again only if last)."""
        evaluation = self.recipe.evaluation
        last = index == len(self.recipe.stages) - 1
        return evaluation is not None and (
            last or (evaluation.after_each_stage and not builds_model(self.recipe.stages[index]))
        )

    def score_stage(
        self, entry: dict[str, Any], model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, point: str
    ) -> None:
        """Score a stage's model into its manifest entry."""
        self.log(f"[eval] after stage {entry['index']} '{entry['name']}'")
        entry["evaluation"], entry["eval_time_s"] = self.score(model, tokenizer, point)
        entry["evaluation_key"] = self.key

    def cached_base(self) -> dict[str, Any] | None:
        """The cached base scores (verified against their hash; rank 0's view, so every rank
        agrees on whether to score the base model), recorded into this run's eval/base/."""
        cached = None
        if self.key is not None and is_main_process():
            payload, why = read_verified_json(self.base_path)
            if isinstance(payload, dict) and payload.get("key") == self.key:
                cached = payload["results"]
            elif why != "missing":
                self.log(f"[cache] {self.base_path}: {why}: scoring the base model again")
        cached = broadcast_from_main(cached)
        return None if cached is None else self.record("base", cached)

    def base(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> tuple[dict[str, Any], float]:
        self.log("[eval] base model")
        started = time.perf_counter()
        results = self(model, tokenizer)
        if is_main_process():
            write_verified_json(self.base_path, {"key": self.key, "results": results})
        return self.record("base", results), round(time.perf_counter() - started, 3)
