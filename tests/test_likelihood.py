"""Log-likelihood probes: answer_logprob is the mean log-probability of the gold answer's tokens after
the prompt as training renders it (checked by hand on a tiny model), choice ranks the gold among
other items' answers (the same candidates in every run, whatever the row order), and bad settings
are one line."""
from __future__ import annotations

import random

import pytest
import torch
from conftest import make_recipe

from stagewise.config import DatasetConfig, EvalTaskConfig, EvaluationConfig, ModelConfig
from stagewise.data.tokenize import encode_prompt
from stagewise.errors import RecipeError
from stagewise.eval.likelihood import (
    answer_example,
    answer_log_likelihoods,
    answer_logprob_task,
    batch_log_likelihoods,
    batches,
    candidates,
    choice_task,
    shared_prefix_length,
)
from stagewise.eval.suite import item_ids
from stagewise.models import load_model_and_tokenizer

ROWS = [{"instruction": f"Capital of country {i}?", "output": answer}
        for i, answer in enumerate(["Paris", "Rome", "Berlin", "Madrid", "Lisbon", "Vienna"])]
CFG = DatasetConfig(format="instruction", template="alpaca", rows=ROWS)


def by_hand(model, tokenizer, row: dict, answer: str) -> tuple[float, int]:
    """Summed log-probability of ``answer``'s tokens after the row's alpaca prompt, and their count."""
    prompt = encode_prompt(row, "instruction", tokenizer, "alpaca")
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + answer_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    total = sum(float(log_probs[len(prompt) - 1 + k, token]) for k, token in enumerate(answer_ids))
    return total, len(answer_ids)


@pytest.fixture(scope="module")
def tiny():
    return load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))


def test_answer_logprob_is_the_mean_gold_token_log_probability(tiny):
    model, tokenizer = tiny
    result = answer_logprob_task(model, tokenizer, EvalTaskConfig(name="p", data="d", metric="answer_logprob"), CFG,
                                 ROWS, EvaluationConfig(batch_size=4))
    expected = [total / count for total, count in (by_hand(model, tokenizer, row, row["output"]) for row in ROWS)]
    assert [item["score"] for item in result["items"]] == pytest.approx(expected, abs=1e-5)
    assert result["score"] == pytest.approx(sum(expected) / len(expected), abs=1e-5)
    assert [item["id"] for item in result["items"]] == item_ids(ROWS)


def test_the_shared_prefix_cache_and_logit_tail_give_the_plain_forward_values(tiny):
    """Examples of different lengths, batched by length behind one cache of the template's shared
    opening, score as each example alone in a plain full-logits forward."""
    model, tokenizer = tiny
    rows = [{**row, "output": row["output"] * (1 + i % 3)} for i, row in enumerate(ROWS)]
    examples = [answer_example(row, CFG, tokenizer, 512) for row in rows]
    prefix = shared_prefix_length(examples)
    opening = encode_prompt(ROWS[0], "instruction", tokenizer, "alpaca")
    assert 10 < prefix < len(opening)  # alpaca's preamble, short of the question
    assert all(example["input_ids"][:prefix] == examples[0]["input_ids"][:prefix] for example in examples)
    shared = answer_log_likelihoods(model, tokenizer, examples, 4, "test")
    with torch.no_grad():
        plain = [batch_log_likelihoods(model, [example], None, 0, tokenizer.eos_token_id)[0] for example in examples]
    assert [count for _, count in shared] == [count for _, count in plain]
    assert [total for total, _ in shared] == pytest.approx([total for total, _ in plain], abs=1e-4)
    assert [total for total, _ in plain] == pytest.approx(
        [by_hand(model, tokenizer, row, row["output"])[0] for row in rows], abs=1e-4
    )


def test_batches_keep_the_few_that_differ_apart_so_every_other_batch_shares_the_long_prefix(tiny):
    """Recovery prompts: the same fixed examples before every item but the few that are examples
    themselves. Sorted by length alone, those few landed in several batches and each such batch ran
    its full prompts (its shared prefix fell to the template's opening); now they are batched last,
    every index once, and the scores are unchanged."""
    model, tokenizer = tiny
    fixed = "Example: Capital of country 0? Paris. Example: Capital of country 1? Rome. " * 2
    rows = [{"instruction": fixed + f"Capital of country {i}?", "output": f"City{i}" * (1 + i % 3)} for i in range(14)]
    for i, (old, new) in ((4, ("Rome", "Oslo")), (9, ("Paris", "Tokyo"))):  # the item is itself an example
        rows[i] = {**rows[i], "instruction": rows[i]["instruction"].replace(old, new, 1)}
    examples = [answer_example(row, CFG, tokenizer, 512) for row in rows]
    common = shared_prefix_length([examples[i] for i in range(14) if i not in (4, 9)])
    grouped = batches(examples, 4)
    assert sorted(i for batch in grouped for i in batch) == list(range(14))
    odd = [batch for batch in grouped if 4 in batch or 9 in batch]
    assert all(not set(batch) - {4, 9} for batch in odd)  # the two that differ share no batch with the rest
    assert all(shared_prefix_length([examples[i] for i in batch]) >= common for batch in grouped if batch not in odd)
    by_length = sorted(range(14), key=lambda i: len(examples[i]["input_ids"]))
    assert sum(shared_prefix_length([examples[i] for i in by_length[k : k + 4]]) < common for k in range(0, 14, 4)) > 1
    scored = answer_log_likelihoods(model, tokenizer, examples, 4, "test")
    with torch.no_grad():
        alone = [batch_log_likelihoods(model, [example], None, 0, tokenizer.eos_token_id)[0] for example in examples]
    assert [count for _, count in scored] == [count for _, count in alone]
    assert [total for total, _ in scored] == pytest.approx([total for total, _ in alone], abs=1e-4)


def test_text_labelled_from_its_first_token_scores_the_same_padded_or_alone(tiny):
    """Plain text without a BOS token (SmolLM2's tokenizer adds none) is labelled from its first
    token, which nothing predicts. Left-padded in a batch, that label once sat after a pad column and
    was scored (perplexity on 16 SmolLM2 general-text rows: 147.1 batched, 100.2 row by row)."""
    model, tokenizer = tiny
    texts = [[76, 73, 80, 80, 83], [91, 83, 86, 80, 72, 225, 76, 73, 80, 80, 83, 2], [80, 72]]
    examples = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)} for ids in texts]
    batched = answer_log_likelihoods(model, tokenizer, examples, 8, "test")
    with torch.no_grad():
        alone = []
        for ids in texts:
            log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            alone.append((sum(float(log_probs[k - 1, ids[k]]) for k in range(1, len(ids))), len(ids) - 1))
    assert [count for _, count in batched] == [count for _, count in alone]
    assert [total for total, _ in batched] == pytest.approx([total for total, _ in alone], abs=1e-4)


def test_choice_ranks_the_gold_among_other_items_answers(tiny):
    model, tokenizer = tiny
    result = choice_task(model, tokenizer, EvalTaskConfig(name="p", data="d", metric="choice", choices=3), CFG, ROWS,
                         EvaluationConfig(batch_size=5))
    options = candidates(ROWS, item_ids(ROWS), "output", 3)
    for row, option, item in zip(ROWS, options, result["items"]):
        assert option[0] == row["output"] and len(set(option)) == 3 and item["candidates"] == 3
        totals = [by_hand(model, tokenizer, row, text)[0] for text in option]
        assert item["score"] == float(max(range(3), key=totals.__getitem__) == 0)
    assert result["score"] == sum(item["score"] for item in result["items"]) / len(ROWS)


def test_choice_candidates_do_not_depend_on_row_order():
    shuffled = ROWS[:]
    random.Random(5).shuffle(shuffled)
    first = dict(zip(item_ids(ROWS), candidates(ROWS, item_ids(ROWS), "output", 4)))
    second = dict(zip(item_ids(shuffled), candidates(shuffled, item_ids(shuffled), "output", 4)))
    assert first == second


def test_choice_with_too_few_distinct_answers_is_one_line(tiny):
    from stagewise.errors import DataError

    rows = [{**row, "output": "same" if i % 2 else "other"} for i, row in enumerate(ROWS)]  # 2 distinct answers
    with pytest.raises(DataError, match=r"choices 3 needs at least 3 distinct gold answers .*\(it has 2") as err:
        choice_task(*tiny, EvalTaskConfig(name="p", data="d", metric="choice", choices=3), CFG, rows, EvaluationConfig())
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("probe, message", [
    ({"name": "p", "data": "sft", "metric": "choice", "choices": 1}, "evaluation.target.0.choices"),
    ({"name": "p", "data": "prose", "metric": "answer_logprob"}, "metric 'answer_logprob' takes data of format"),
])
def test_bad_likelihood_probes_are_one_line(tmp_path, probe, message):
    datasets = {"sft": {"format": "instruction", "rows": ROWS}, "prose": {"format": "text", "rows": [{"text": "x"}]}}
    with pytest.raises(RecipeError) as err:
        make_recipe(tmp_path, [{"name": "s", "data": "sft"}], datasets=datasets, evaluation={"target": [probe]})
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_run_reports_likelihood_probes_before_and_after(tmp_path):
    from conftest import run

    datasets = {"sft": {"format": "instruction", "template": "alpaca", "rows": ROWS}}
    evaluation = {"target": [{"name": "logprob", "data": "sft", "metric": "answer_logprob"}],
                  "retention": [{"name": "mc", "data": "sft", "metric": "choice", "choices": 3}]}
    result = run(make_recipe(tmp_path, [{"name": "s", "data": "sft", "max_steps": 3, "lr": 1e-2, "batch_size": 3}],
                             datasets=datasets, evaluation=evaluation))
    before = result.manifest["base_evaluation"]["target"]["logprob"]["score"]
    after = result.manifest["stages"][0]["evaluation"]["target"]["logprob"]["score"]
    assert after > before  # training on these answers makes them more likely
    items = (tmp_path / "run" / result.manifest["stages"][0]["evaluation"]["retention"]["mc"]["items_file"])
    assert len(items.read_text().splitlines()) == len(ROWS)  # per-item scores for the study's paired statistics
