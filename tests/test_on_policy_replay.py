"""On-policy replay (arXiv 2605.29495): the replayed rows are the entering model's own answers that
pass the filter (a rule on the gold, or an earlier reward stage's model), mixed in by the stage's
data weights; by default it rewrites the stage's datasets an earlier stage trained on; bad input is
one line."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import make_recipe, run

from stagewise.config import DatasetConfig, ModelConfig, transform_targets
from stagewise.data.tokenize import encode_prompt, prompt_text
from stagewise.errors import RecipeError
from stagewise.generation import SamplingConfig, generate
from stagewise.models import load_model_and_tokenizer
from stagewise.rewards import reward_scores
from stagewise.strategies.on_policy_replay import OnPolicyReplayConfig, passing

NEW = [{"instruction": f"new task {i}", "output": f"answer {i}"} for i in range(4)]
OLD_PROMPTS = [{"instruction": f"Tell me about topic {i}"} for i in range(6)]


def base_answers(rows: list[dict], max_new_tokens: int = 5) -> list[str]:
    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    ids = [encode_prompt({**row, "output": ""}, "instruction", tokenizer, "alpaca") for row in rows]
    return [texts[0].strip() for texts in generate(model, tokenizer, ids, SamplingConfig(max_new_tokens=max_new_tokens))]


def test_replayed_rows_are_the_models_own_answers_that_pass_the_rule(tmp_path):
    own = base_answers(OLD_PROMPTS)
    right = [i for i, answer in enumerate(own) if answer][::2]  # gold = the model's own answer on these rows only
    assert right
    old = [{**row, "output": own[i] if i in right else "something else entirely"} for i, row in enumerate(OLD_PROMPTS)]
    datasets = {"new": {"format": "instruction", "template": "alpaca", "rows": NEW},
                "old": {"format": "instruction", "template": "alpaca", "rows": old}}
    replay = {"kind": "on_policy_replay", "reward_rule": "exact_match", "datasets": ["old"], "max_new_tokens": 5}
    stage = {"name": "s", "data": {"new": 1.0, "old": 0.5}, "transforms": [replay], "max_steps": 2, "batch_size": 2}
    result = run(make_recipe(tmp_path, [stage], datasets=datasets))
    [report] = result.manifest["stages"][0]["transforms"]
    assert report == {"kind": "on_policy_replay", "data": "old", "rows": 6, "kept": len(right), "rejected": 6 - len(right)}
    written = [json.loads(line) for line in (tmp_path / "run/0-s/on-policy-replay-old.jsonl").read_text().splitlines()]
    assert [row["instruction"] for row in written] == [OLD_PROMPTS[i]["instruction"] for i in right]
    assert [row["output"] for row in written] == [own[i] for i in right] and all(r["on_policy_replay"] for r in written)
    mixture = result.manifest["stages"][0]["data_mixture"]
    assert mixture["old"]["rows"] == len(right) and mixture["old"]["rows_per_epoch"] == 2  # 0.5 x 4 new rows


def test_every_answer_rejected_leaves_the_replay_out_of_the_mixture(tmp_path):
    datasets = {"new": {"format": "instruction", "template": "alpaca", "rows": NEW},
                "old": {"format": "instruction", "template": "alpaca",
                        "rows": [{**row, "output": "no tiny model says this"} for row in OLD_PROMPTS]}}
    replay = {"kind": "on_policy_replay", "reward_rule": "exact_match", "datasets": ["old"], "max_new_tokens": 3}
    stage = {"name": "s", "data": {"new": 1.0, "old": 0.5}, "transforms": [replay], "max_steps": 2, "batch_size": 2}
    result = run(make_recipe(tmp_path, [stage], datasets=datasets))
    assert result.manifest["stages"][0]["data_mixture"]["old"] == {"rows": 0, "weight": 0.5, "rows_per_epoch": 0}


def test_a_reward_stage_model_filters_at_its_threshold(tmp_path):
    from stagewise.strategies.rlhf import reward_model_from

    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    reward_model_from(model, seed=3).save_pretrained(tmp_path / "reward")
    rows = [{**row, "output": "gold"} for row in OLD_PROMPTS]
    answers = ["yes", "no", "", "maybe so", "certainly", "never"]
    texts = [prompt_text(row, "instruction", tokenizer, "alpaca") + answer for row, answer in zip(rows, answers)]
    scores = reward_scores(reward_model_from(model, seed=3).eval(), tokenizer, texts, 4, 2048)
    threshold = sorted(scores)[3]
    config = OnPolicyReplayConfig(kind="on_policy_replay", reward_model="rm", threshold=threshold)
    context = SimpleNamespace(model=model, tokenizer=tokenizer, stage_folder=lambda name: tmp_path / "reward",
                              dataset=DatasetConfig(format="instruction", template="alpaca", rows=rows))
    kept = passing(rows, answers, config, context)
    assert kept == [bool(answer) and score >= threshold for answer, score in zip(answers, scores)]
    assert 0 < sum(kept) < len(rows)


def test_by_default_it_rewrites_the_data_earlier_stages_trained_on(tmp_path):
    datasets = {"new": {"format": "instruction", "rows": NEW}, "old": {"format": "instruction", "rows": NEW}}
    recipe = make_recipe(tmp_path, [
        {"name": "first", "data": "old"},
        {"name": "second", "data": {"new": 1.0, "old": 0.1}, "transforms": [{"kind": "on_policy_replay",
                                                                              "reward_rule": "contains"}]}],
        datasets=datasets)
    stage = recipe.stages[1]
    assert transform_targets(recipe, stage, stage.transforms[0]) == ["old"]


@pytest.mark.parametrize("stages, message", [
    ([{"name": "s", "data": "new", "transforms": [{"kind": "on_policy_replay", "reward_rule": "contains"}]}],
     "stages.0.transforms.0: transform 'on_policy_replay' replays data an earlier stage trained on"),
    ([{"name": "s", "data": "new", "transforms": [{"kind": "on_policy_replay", "datasets": ["new"]}]}],
     "give exactly one of reward_model (an earlier reward stage) or reward_rule"),
    ([{"name": "s", "data": "new", "transforms": [{"kind": "on_policy_replay", "reward_model": "nope",
                                                    "datasets": ["new"]}]}],
     "stages.0.transforms.0.reward_model: 'nope' is not an earlier stage"),
    ([{"name": "s", "data": "new", "transforms": [{"kind": "on_policy_replay", "reward_rule": "regex",
                                                    "datasets": ["new"]}]}],
     "reward_rule regex needs a 'pattern'"),
])
def test_bad_on_policy_replay_is_one_line(tmp_path, stages, message):
    datasets = {"new": {"format": "instruction", "rows": NEW}}
    with pytest.raises(RecipeError) as error:
        make_recipe(tmp_path, stages, datasets=datasets)
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
