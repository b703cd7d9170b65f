"""Log-likelihood probes: one teacher-forced forward pass per item instead of a greedy generation.

- ``perplexity``: corpus perplexity of the trained tokens (general language modelling).

- ``answer_logprob``: the mean log-probability per token of the gold answer after the prompt,
  rendered exactly as training and the generation metrics render it (same template, special
  tokens). A continuous score per item: it moves before a 0/1 generation check flips, so the
  same items can show a smaller difference between arms.
- ``choice``: the gold answer ranked by log-likelihood among ``choices - 1`` distractors, the
  other items' gold answers (drawn per item with a seed derived from the item's id, so every run
  and arm sees the same candidates); accuracy as lm-evaluation-harness's multiple choice
  (``acc``: highest summed log-likelihood; ``acc_norm``, by characters, is reported beside it).
"""

from __future__ import annotations

import copy
import math
import random
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from ..config import DatasetConfig, EvalTaskConfig, EvaluationConfig
from ..data.formats import answer_field
from ..data.tokenize import IGNORE_INDEX, encode_lm_rows, encode_segments, row_segments
from ..errors import DataError
from ..generation import cache_keyword, forward_parameters, supports_shared_prefill
from ..registry import METRICS, MetricTraits, Requires
from .metrics import normalize_answer
from .suite import Result, item_ids


def answer_example(row: dict[str, Any], cfg: DatasetConfig, tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """The row encoded as training encodes it, labels on the answer only (no end-of-sequence token
    of our own), clipped from the left so the answer always fits ``max_length``."""
    segments, add_special = row_segments(row, cfg.format, tokenizer, cfg.template)
    example = encode_segments(tokenizer, segments, add_special, False, 10**9, add_eos=False)
    return {key: values[-max_length:] for key, values in example.items()}


def first_label(example: dict[str, list[int]]) -> int:
    return next((i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX), len(example["labels"]))


def shared_prefix_length(examples: list[dict[str, list[int]]]) -> int:
    """Tokens every example starts with (a chat template's system prompt), short of the token
    before each example's first label, whose logits must come from the batched pass."""
    first = examples[0]["input_ids"]
    length = min(first_label(example) for example in examples) - 1
    for example in examples[1:]:
        ids = example["input_ids"]
        length = next((i for i in range(min(length, len(ids))) if ids[i] != first[i]), min(length, len(ids)))
    return max(length, 0)


def majority_prefix(examples: list[dict[str, list[int]]]) -> tuple[int, ...]:
    """The longest prompt prefix at least half the examples start with (a probe's fixed examples,
    a chat template's system prompt). In sorted order a window of half the prompts shares the
    prefix its two ends share, so the longest such window prefix is the answer."""
    prompts = sorted(tuple(example["input_ids"][: max(first_label(example) - 1, 0)]) for example in examples)
    half = (len(prompts) + 1) // 2
    best: tuple[int, ...] = ()
    for low, high in zip(prompts, prompts[half - 1 :]):
        length = next((i for i, (a, b) in enumerate(zip(low, high)) if a != b), min(len(low), len(high)))
        best = low[:length] if length > len(best) else best
    return best


def batches(examples: list[dict[str, list[int]]], batch_size: int, among: list[int] | None = None) -> list[list[int]]:
    """Indices in batches: those that start with the majority prefix first, by length (less
    padding), then the others batched the same way. Each batch then shares a long prefix (run once,
    its cache reused); sorting all by length spread the few that differ (recovery items whose fixed
    examples include themselves) over the batches and cost each such batch its shared prefix."""
    among = list(range(len(examples))) if among is None else among
    if not among:
        return []
    prefix = majority_prefix([examples[i] for i in among])
    shares = [i for i in among if tuple(examples[i]["input_ids"][: len(prefix)]) == prefix]
    order = sorted(shares, key=lambda i: len(examples[i]["input_ids"]))
    rest = sorted(set(among) - set(shares))  # at most half: the majority prefix has at least half
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)] + batches(
        examples, batch_size, rest
    )


def prefix_cache(model: Any, prefix: list[int]) -> DynamicCache | None:
    """The KV cache of ``prefix`` (batch 1), or None where it cannot be shared (no prefix,
    encoder-decoder models, prompt tuning)."""
    if len(prefix) < 2 or not supports_shared_prefill(model):
        return None
    cache = DynamicCache(config=model.config)
    device = next(model.parameters()).device
    model(input_ids=torch.tensor([prefix], device=device), use_cache=True, **{cache_keyword(model): cache})
    return cache


def batch_log_likelihoods(
    model: Any, examples: list[dict[str, list[int]]], cache: DynamicCache | None, prefix: int, pad_id: int
) -> list[tuple[float, int]]:
    """One forward over the examples after their shared ``prefix`` tokens (left-padded behind the
    prefix's cache, so every answer ends in the last column); logits only for the labelled tail."""
    device = next(model.parameters()).device
    start = prefix if cache is not None else 0
    width = max(len(example["input_ids"]) - start for example in examples)
    tail = max(len(example["labels"]) - first_label(example) for example in examples) + 1
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        size = len(example["input_ids"]) - start
        input_ids[row, width - size :] = torch.tensor(example["input_ids"][start:])
        # nothing in this pass predicts an example's first token (text without BOS labels it; the
        # pad column before it would), so its label stays ignored
        labels[row, width - size + 1 :] = torch.tensor(example["labels"][start + 1 :])
        attention[row, width - size :] = 1
    positions = start + (attention.cumsum(-1) - 1).clamp(min=0)
    if cache is not None:
        cache = copy.deepcopy(cache)
        cache.batch_repeat_interleave(len(examples))
        attention = torch.cat([torch.ones((len(examples), start), dtype=torch.long), attention], dim=1)
    keep = min(tail, width)
    logits = model(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        position_ids=positions.to(device),
        use_cache=cache is not None,
        **({cache_keyword(model): cache} if cache is not None else {}),
        **({"logits_to_keep": keep} if "logits_to_keep" in forward_parameters(model) else {}),
    ).logits[:, -keep:]
    targets = labels[:, width - logits.shape[1] + 1 :].to(device)
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    counts = (targets != IGNORE_INDEX).sum(dim=1).tolist()
    return [(-total, count) for total, count in zip(nll.sum(dim=1).tolist(), counts)]


@torch.inference_mode()
def answer_log_likelihoods(
    model: Any, tokenizer: Any, examples: list[dict[str, list[int]]], batch_size: int, desc: str
) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each example's labelled tokens. Batches go in
    ``batches``; the prefix a batch's examples share (a template's system prompt, a
    probe's fixed examples) is run once and its cache reused across the batch."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    found: dict[int, tuple[float, int]] = {}
    for indices in tqdm(batches(examples, batch_size), desc=desc, leave=False):
        batch = [examples[i] for i in indices]
        prefix = shared_prefix_length(batch)
        cache = prefix_cache(model, batch[0]["input_ids"][:prefix]) if prefix else None
        found.update(zip(indices, batch_log_likelihoods(model, batch, cache, prefix, pad_id)))
    return [found[i] for i in range(len(examples))]


@METRICS.register(
    "perplexity",
    requires=Requires(objectives=("lm",), format_traits=("trainable",), model_tasks=("causal_lm",)),  # trained text
    traits=MetricTraits(higher_is_better=False),
)
def perplexity_task(
    model, tokenizer, task: EvalTaskConfig, cfg: DatasetConfig, rows, evaluation: EvaluationConfig
) -> Result:
    """Corpus perplexity over the trained tokens (answer and end of sequence); each item's score is
    its mean token negative log-likelihood."""
    encoded = [
        (item_id, encode_lm_rows([row], cfg.format, tokenizer, cfg.template, False, evaluation.max_length))
        for item_id, row in zip(item_ids(rows), rows)
    ]
    ids = [item_id for item_id, example in encoded if example]
    model.eval()
    scored = answer_log_likelihoods(
        model, tokenizer, [example[0] for _, example in encoded if example], evaluation.batch_size, "eval perplexity"
    )
    mean = sum(-total for total, _ in scored) / max(sum(count for _, count in scored), 1)
    items = [{"id": i, "score": -total / max(count, 1), "tokens": count} for i, (total, count) in zip(ids, scored)]
    return {
        "score": math.exp(min(mean, 50.0)),
        "scores": {"perplexity": math.exp(min(mean, 50.0)), "nll": mean},
        "items": items,
    }


ONE_ANSWER = Requires(format_traits=("answer_field",), model_tasks=("causal_lm",))


@METRICS.register("answer_logprob", requires=ONE_ANSWER)
def answer_logprob_task(
    model, tokenizer, task: EvalTaskConfig, cfg: DatasetConfig, rows, evaluation: EvaluationConfig
) -> Result:
    """Mean log-probability per gold-answer token, per item; the score is the mean over items."""
    model.eval()
    examples = [answer_example(row, cfg, tokenizer, evaluation.max_length) for row in rows]
    scored = answer_log_likelihoods(model, tokenizer, examples, evaluation.batch_size, f"eval {task.name}")
    items: list[dict[str, Any]] = [
        {"id": i, "score": total / max(count, 1), "tokens": count} for i, (total, count) in zip(item_ids(rows), scored)
    ]
    mean = sum(item["score"] for item in items) / len(items)
    return {"score": mean, "scores": {"answer_logprob": mean}, "items": items}


def candidates(rows: list[dict[str, Any]], ids: list[str], key: str, count: int) -> list[list[str]]:
    """Per item: its gold answer first, then up to ``count - 1`` other items' distinct gold answers."""
    pool = sorted({row[key] for row in rows}, key=lambda answer: (normalize_answer(answer), answer))
    chosen = []
    for row, item_id in zip(rows, ids):
        others = [answer for answer in pool if normalize_answer(answer) != normalize_answer(row[key])]
        chosen.append([row[key], *random.Random(item_id).sample(others, min(count - 1, len(others)))])
    return chosen


@METRICS.register("choice", requires=ONE_ANSWER)
def choice_task(
    model, tokenizer, task: EvalTaskConfig, cfg: DatasetConfig, rows, evaluation: EvaluationConfig
) -> Result:
    """Is the gold answer the most likely of the item's candidates (1/0)?"""
    key, ids = answer_field(cfg.format), item_ids(rows)
    distinct = len({normalize_answer(row[key]) for row in rows})
    if distinct < task.choices:
        raise DataError(
            f"evaluation {task.name!r}: metric 'choice' with choices {task.choices} needs at least "
            f"{task.choices} distinct gold answers in dataset {task.data!r} (it has {distinct}; the "
            "distractors are other items' answers): lower choices"
        )
    options = candidates(rows, ids, key, task.choices)
    model.eval()
    examples = [
        answer_example({**row, key: text}, cfg, tokenizer, evaluation.max_length)
        for row, option in zip(rows, options)
        for text in option
    ]
    scored = iter(answer_log_likelihoods(model, tokenizer, examples, evaluation.batch_size, f"eval {task.name}"))
    items: list[dict[str, Any]] = []
    for item_id, option in zip(ids, options):
        totals = [next(scored)[0] for _ in option]
        by_chars = [total / max(len(text), 1) for total, text in zip(totals, option)]
        items.append(
            {
                "id": item_id,
                "score": float(max(range(len(option)), key=totals.__getitem__) == 0),
                "score_norm": float(max(range(len(option)), key=by_chars.__getitem__) == 0),
                "candidates": len(option),
            }
        )
    accuracy = sum(item["score"] for item in items) / len(items)
    normalized = sum(item["score_norm"] for item in items) / len(items)
    return {"score": accuracy, "scores": {"choice": accuracy, "choice_norm": normalized}, "items": items}
