"""Score a model on a recipe's evaluation probes; the built-in metrics register here.

Generation probes render each prompt exactly as training does (same template and
special tokens) and decode greedily in batches; few-shot probes use their own plain
format (the point is to see whether in-context ability survives fine-tuning).

Every result carries ``items``: one record per row with a stable ``id`` (the row's own
``id`` field, else a hash of its content), the item's ``score`` and the model's prediction,
so two runs on the same probe can be compared item by item (``stagewise study``).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..addons import model_for_probe
from ..config import DatasetConfig, EvalTaskConfig, EvaluationConfig
from ..data.formats import gold_answer
from ..data.tokenize import encode_classification_rows, encode_prompt
from ..errors import DataError
from ..generation import SamplingConfig, generate
from ..registry import METRICS, MetricTraits, Requires
from . import metrics
from .recovery import recovery_name, with_examples

Result = dict[str, Any]


def item_ids(rows: list[dict[str, Any]]) -> list[str]:
    """Stable ids, unique in the probe: the row's ``id``, else the first 12 hex digits of its
    content's SHA-1, a repeated row taking ``#2``, ``#3``, ... in order of appearance (the next
    free one). Two rows giving the same ``id`` are refused: their per-item scores would merge."""
    given = [str(row["id"]) for row in rows if "id" in row]
    repeated = next((item for item, count in Counter(given).items() if count > 1), None)
    if repeated is not None:
        rows_with = [number for number, row in enumerate(rows, start=1) if str(row.get("id")) == repeated]
        raise DataError(
            f"probe rows {rows_with[0]} and {rows_with[1]} have the same id {repeated[:60]!r}: "
            "item ids must be unique (per-item scores are paired by id)"
        )
    taken, ids = set(given), []
    for row in rows:
        if "id" in row:
            ids.append(str(row["id"]))
            continue
        base = hashlib.sha1(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]
        item, copy = base, 1
        while item in taken:
            copy += 1
            item = f"{base}#{copy}"
        taken.add(item)
        ids.append(item)
    return ids


def _golds(row: dict[str, Any]) -> list[str]:
    return [gold_answer(row), *row.get("aliases", [])]


def clip_prompts(prompts: list[list[int]], max_length: int, max_new_tokens: int) -> tuple[list[list[int]], int]:
    """Keep each prompt's last tokens so prompt + answer fit ``max_length`` (the question and the
    answer cue sit at the end); returns the prompts and how many were clipped."""
    limit = max(max_length - max_new_tokens, 1)
    clipped = sum(len(prompt) > limit for prompt in prompts)
    return [prompt[-limit:] for prompt in prompts], clipped


def answer_correct(metric: str, output: str, row: dict[str, Any], pattern: str | None = None) -> bool:
    """Is ``output`` right about ``row``'s gold answer by ``metric`` (exact_match, contains,
    last_integer: the row's ``answer`` or the gold's last number, regex: ``pattern``'s capture)?"""
    golds = _golds(row)
    if metric == "exact_match":
        return metrics.exact_match(output, golds)
    if metric == "contains":
        return metrics.contains_match(output, golds)
    if metric == "last_integer":
        gold = int(row["answer"]) if "answer" in row else metrics.last_integer(golds[0])
        return metrics.last_integer(output) == gold
    if metric == "regex":
        return metrics.regex_match(output, pattern or "", golds)
    raise ValueError(f"no answer check named {metric!r}")


GENERATIVE = Requires(format_traits=("generative",), model_tasks=("causal_lm",))  # every format with that trait


def generation_task(
    model, tokenizer, task: EvalTaskConfig, cfg: DatasetConfig, rows, evaluation: EvaluationConfig
) -> Result:
    """Greedy answers scored by ``task.metric``; ``scores`` also holds exact_match and contains."""
    prompts, clipped = clip_prompts(
        [encode_prompt(row, cfg.format, tokenizer, cfg.template) for row in rows],
        evaluation.max_length,
        task.max_new_tokens,
    )
    short_answer = task.metric in ("exact_match", "contains")  # these compare the first line only
    sampling = SamplingConfig(max_new_tokens=task.max_new_tokens, first_line=short_answer)
    outputs = [
        texts[0]
        for texts in generate(
            model, tokenizer, prompts, sampling, batch_size=evaluation.batch_size, desc=f"eval {task.name}"
        )
    ]
    names = dict.fromkeys(("exact_match", "contains", task.metric))
    checks = {
        name: [answer_correct(name, output, row, task.pattern) for row, output in zip(rows, outputs)] for name in names
    }
    scores = {name: sum(values) / len(values) for name, values in checks.items()}
    examples = [{"gold": _golds(r)[0], "prediction": o.strip()[:120]} for r, o in zip(rows[:3], outputs[:3])]
    items = [
        {"id": i, "score": float(ok), "prediction": o.strip()[:200]}
        for i, ok, o in zip(item_ids(rows), checks[task.metric], outputs)
    ]
    return {"score": scores[task.metric], "scores": scores, "examples": examples, "truncated": clipped, "items": items}


for _name in ("exact_match", "contains", "last_integer"):
    METRICS.register(_name, requires=GENERATIVE)(generation_task)
METRICS.register(
    "regex",
    requires=GENERATIVE,
    traits=MetricTraits(check=lambda task: None if task.pattern else ("metric", "metric 'regex' needs a 'pattern'")),
)(generation_task)


def fewshot_prompt(row: dict[str, Any], demos: list[dict[str, Any]]) -> str:
    form = row["prompt_format"]
    shots = [f"{form.format(input=d['input'])} {d['output']}" for d in demos]  # checked when the rows loaded
    return "\n\n".join([*shots, form.format(input=row["input"])])


@METRICS.register("fewshot", requires=Requires(formats=("fewshot",), model_tasks=("causal_lm",)))
def fewshot_task(
    model, tokenizer, task: EvalTaskConfig, cfg: DatasetConfig, rows, evaluation: EvaluationConfig
) -> Result:
    """In-context ability: ``shots`` demonstrations from the same task, exact match per task."""
    rng = random.Random(0)
    prompts = []
    for row in rows:
        pool = [other for other in rows if other["task"] == row["task"] and other is not row]
        demos = rng.sample(pool, min(task.shots, len(pool)))
        prompts.append(tokenizer(fewshot_prompt(row, demos))["input_ids"])
    prompts, clipped = clip_prompts(prompts, evaluation.max_length, task.max_new_tokens)
    outputs = generate(
        model,
        tokenizer,
        prompts,
        SamplingConfig(max_new_tokens=task.max_new_tokens, first_line=True),
        batch_size=evaluation.batch_size,
        desc=f"eval {task.name}",
    )
    per_task: dict[str, list[bool]] = {}
    items = []
    for item_id, row, (output,) in zip(item_ids(rows), rows, outputs):
        correct = metrics.exact_match(output, [row["output"]])
        per_task.setdefault(row["task"], []).append(correct)
        items.append({"id": item_id, "score": float(correct), "task": row["task"], "prediction": output.strip()[:200]})
    scores = {f"accuracy_{name}": sum(v) / len(v) for name, v in per_task.items()}
    scores["accuracy"] = sum(scores.values()) / len(scores)  # macro over tasks
    return {"score": scores["accuracy"], "scores": scores, "truncated": clipped, "items": items}


@torch.inference_mode()
def classification_task(
    model, tokenizer, task: EvalTaskConfig, cfg: DatasetConfig, rows, evaluation: EvaluationConfig
) -> Result:
    """The classifier's argmax over its labels; ``scores`` holds accuracy, micro/macro F1 and per-class F1."""
    batch_size, max_length = evaluation.batch_size, evaluation.max_length
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    unknown = sorted({row["label"] for row in rows} - set(labels))
    if unknown:
        raise DataError(f"evaluation {task.name!r}: labels {unknown} unknown to the model (it has {labels})")
    examples = encode_classification_rows(rows, tokenizer, labels, max_length)
    device = next(model.parameters()).device
    model.eval()
    predicted: list[int] = []
    for start in tqdm(range(0, len(examples), batch_size), desc=f"eval {task.name}", leave=False):
        chunk = examples[start : start + batch_size]
        batch = tokenizer.pad([{k: v for k, v in ex.items() if k != "labels"} for ex in chunk], return_tensors="pt")
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        predicted += logits.argmax(-1).tolist()
    gold = [ex["labels"] for ex in examples]
    scores = metrics.classification_scores(predicted, gold, labels)
    items = [
        {"id": i, "score": float(p == g), "prediction": labels[p], "gold": labels[g]}
        for i, p, g in zip(item_ids(rows), predicted, gold)
    ]
    return {"score": scores[task.metric], "scores": scores, "items": items}


CLASSIFICATION = Requires(formats=("classification",), model_tasks=("sequence_classification",))
for _name in ("accuracy", "macro_f1", "micro_f1"):
    METRICS.register(_name, requires=CLASSIFICATION)(classification_task)


def evaluate_task(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: EvalTaskConfig,
    cfg: DatasetConfig | None,  # None: a metric that reads no dataset (lm_eval)
    rows: list[dict[str, Any]],
    evaluation: EvaluationConfig,
) -> Result:
    """One probe's result; ``seconds`` is its wall time, so a study can see which probe costs what."""
    was_training = model.training
    entry = METRICS.get(task.metric)
    started = time.perf_counter()
    try:
        result = entry.impl(model, tokenizer, task, cfg, rows, evaluation)
    finally:
        model.train(was_training)
    seconds = round(time.perf_counter() - started, 3)
    return {
        "metric": task.metric,
        "higher_is_better": entry.traits.higher_is_better,
        "n": len(rows),
        **result,
        "seconds": seconds,
    }


def evaluate_suite(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    evaluation: EvaluationConfig,
    dataset_configs: dict[str, DatasetConfig],
    rows: dict[str, list[dict[str, Any]]],
) -> dict[str, dict[str, Result]]:
    """``{"target": {name: result}, "retention": {name: result}}``, and ``"recovery"`` with each
    retention probe that sets ``recovery_shots`` scored with examples in its prompts."""
    results = {
        group: {
            task.name: evaluate_task(
                model_for_probe(model, task, group),
                tokenizer,
                task,
                dataset_configs.get(task.data) if task.data else None,
                rows.get(task.data, []) if task.data else [],
                evaluation,
            )
            for task in getattr(evaluation, group)
        }
        for group in ("target", "retention")
    }
    recovered = {}
    for task in evaluation.retention:
        if task.recovery_shots and task.data:  # validated: recovery examples come from the probe's data
            cfg, shown = with_examples(
                task, dataset_configs[task.data], rows[task.data], item_ids(rows[task.data]), tokenizer
            )
            recovered[recovery_name(task)] = evaluate_task(
                model_for_probe(model, task, "retention"), tokenizer, task, cfg, shown, evaluation
            )
    return {**results, "recovery": recovered} if recovered else results
