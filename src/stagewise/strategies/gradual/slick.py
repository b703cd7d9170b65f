"""Knowledge probing: SliCK categories (Gekhman et al. 2024, arXiv 2405.05904, §3).

For each QA item, ``n_prompts`` random ``shots``-shot prompts (exemplars of the same ``type``
when the data has one) are answered once greedily and ``samples`` times at ``temperature``:
- HighlyKnown: the greedy answer is correct for every prompt;
- MaybeKnown: the greedy answer is correct for some prompts;
- WeaklyKnown: never greedily, but at least one sample is correct;
- Unknown: never.
P_greedy and P_sampled are the fractions of correct greedy / sampled answers.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from ...eval.metrics import contains_match, exact_match
from ...eval.suite import item_ids
from ...generation import SamplingConfig, generate
from ...registry import METRICS, Requires

CATEGORIES = ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")
CHECKERS = {"exact_match": exact_match, "contains": contains_match}

# answer_fn(prompts, sampling) -> for each prompt, num_return_sequences completions
AnswerFn = Callable[[list[str], SamplingConfig], list[list[str]]]


@dataclass(frozen=True)
class ProbeSettings:
    n_prompts: int = 10  # SliCK: N_ex = 10 random few-shot prompts
    shots: int = 4  # SliCK: 4-shot
    samples: int = 16  # SliCK: 16 samples at T = 0.5
    temperature: float = 0.5
    max_new_tokens: int = 16
    checker: str = "exact_match"
    seed: int = 0


def slick_category(greedy: list[bool], sampled: list[bool]) -> str:
    if greedy and all(greedy):
        return "HighlyKnown"
    if any(greedy):
        return "MaybeKnown"
    if any(sampled):
        return "WeaklyKnown"
    return "Unknown"


def qa_prompt(item: dict[str, Any], exemplars: list[dict[str, Any]]) -> str:
    shots = "".join(f"Q: {e['instruction']}\nA: {e['output']}\n\n" for e in exemplars)
    return f"{shots}Q: {item['instruction']}\nA:"


def exemplars_for(items: list[dict[str, Any]], index: int, shots: int, rng: random.Random) -> list[dict[str, Any]]:
    item = items[index]
    same = [e for i, e in enumerate(items) if i != index and e.get("type") == item.get("type")]
    pool = same if "type" in item and len(same) >= shots else [e for i, e in enumerate(items) if i != index]
    return rng.sample(pool, min(shots, len(pool)))


def categorize(items: list[dict[str, Any]], settings: ProbeSettings, answer: AnswerFn) -> list[dict[str, Any]]:
    """Category and P values for every item (``instruction``/``output``/optional ``aliases``, ``type``)."""
    rng = random.Random(settings.seed)
    prompts = [
        qa_prompt(item, exemplars_for(items, index, settings.shots, rng))
        for index, item in enumerate(items)
        for _ in range(settings.n_prompts)
    ]
    greedy_only = SamplingConfig(max_new_tokens=settings.max_new_tokens, seed=settings.seed, first_line=True)
    # one pass: each prompt's first sequence is greedy, the rest sampled (SliCK's T, full vocabulary)
    sampling = (
        replace(
            greedy_only,
            do_sample=True,
            temperature=settings.temperature,
            greedy_first=True,
            num_return_sequences=1 + settings.samples,
        )
        if settings.samples
        else greedy_only
    )
    outputs = answer(prompts, sampling)
    greedy, sampled = [texts[:1] for texts in outputs], [texts[1:] for texts in outputs]
    check = CHECKERS[settings.checker]
    results = []
    for index, item in enumerate(items):
        golds = [item["output"], *item.get("aliases", [])]
        span = range(index * settings.n_prompts, (index + 1) * settings.n_prompts)
        greedy_ok = [check(greedy[p][0], golds) for p in span]
        sampled_ok = [check(text, golds) for p in span for text in sampled[p]]
        results.append(
            {
                "category": slick_category(greedy_ok, sampled_ok),
                "p_greedy": sum(greedy_ok) / len(greedy_ok),
                "p_sampled": sum(sampled_ok) / len(sampled_ok) if sampled_ok else 0.0,
            }
        )
    return results


def model_answerer(model: Any, tokenizer: Any, batch_size: int = 64) -> AnswerFn:
    """Answers few-shot prompts with batched generation; each answer is its first line."""

    def answer(prompts: list[str], sampling: SamplingConfig) -> list[list[str]]:
        ids = [tokenizer(prompt)["input_ids"] for prompt in prompts]
        return generate(model, tokenizer, ids, sampling, batch_size=batch_size, desc="probe")

    return answer


def summary(results: list[dict[str, Any]]) -> dict[str, int]:
    return {category: sum(r["category"] == category for r in results) for category in CATEGORIES}


def settings_dict(settings: ProbeSettings) -> dict[str, Any]:
    return asdict(settings)


@METRICS.register("highly_known", requires=Requires(formats=("instruction",), model_tasks=("causal_lm",)))
def highly_known(
    model: Any, tokenizer: Any, task: Any, dataset: Any, rows: list[dict[str, Any]], evaluation: Any
) -> dict[str, Any]:
    """Share of items the model knows for sure (SliCK HighlyKnown): Gradual Learning's
    knowledge-acquired measure; the scores hold every category's count."""
    settings = ProbeSettings(
        n_prompts=task.n_prompts, shots=task.shots, samples=task.samples, max_new_tokens=task.max_new_tokens
    )
    results = categorize(rows, settings, model_answerer(model, tokenizer, evaluation.batch_size))
    counts = summary(results)
    items = [{"id": i, "score": float(r["category"] == "HighlyKnown"), **r} for i, r in zip(item_ids(rows), results)]
    return {
        "score": counts["HighlyKnown"] / len(rows),
        "scores": {k: float(v) for k, v in counts.items()},
        "items": items,
    }
