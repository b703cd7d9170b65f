"""Reward models (TRL RewardTrainer), GRPO / RLOO stages (reward model or rule reward) and the
reward_accuracy metric, on tiny models: formulas, hand-on of branch stages, bad inputs."""
from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import make_recipe, run
from transformers import AutoModelForSequenceClassification, TrainerCallback

from stagewise.cli import main
from stagewise.config import EvalTaskConfig, EvaluationConfig, ModelConfig
from stagewise.errors import RecipeError
from stagewise.models import load_model_and_tokenizer
from stagewise.strategies.rlhf import OnPolicyConfig, reward_accuracy, reward_model_from, rule_reward

PREFERENCES = [{"prompt": f"Q{i}: pick", "chosen": " good answer", "rejected": " bad reply"} for i in range(8)]
SUMS = [{"instruction": f"{a} + {b} =", "output": str(a + b)} for a, b in [(1, 2), (3, 4), (2, 2), (5, 1)]]
DATASETS = {"sft": {"format": "instruction", "template": "alpaca", "rows": SUMS},
            "pref": {"format": "preference", "rows": PREFERENCES}}


def test_reward_model_copies_the_backbone_and_draws_its_head_from_the_seed():
    policy, _ = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    reward = reward_model_from(policy, seed=3)
    assert reward.config.num_labels == 1 and reward.score.out_features == 1
    backbone = {k: v for k, v in policy.state_dict().items() if not k.startswith("lm_head")}
    for name, tensor in backbone.items():
        assert torch.equal(reward.state_dict()[name], tensor), name
    assert torch.equal(reward_model_from(policy, seed=3).score.weight, reward.score.weight)
    assert not torch.equal(reward_model_from(policy, seed=4).score.weight, reward.score.weight)


def test_rule_reward_scores_each_completion_against_its_own_row():
    reward = rule_reward(OnPolicyConfig(kind="grpo", reward_rule="last_integer"), SUMS)
    assert reward(["p"] * 4, [" 3", "it is 7", " 5", "6!"], row_index=[0, 1, 2, 0]) == [1.0, 1.0, 0.0, 0.0]
    contains = rule_reward(OnPolicyConfig(kind="grpo", reward_rule="contains"), [{"output": "Paris"}])
    assert contains(["p", "p"], ["It is Paris.", "Lyon"], row_index=[0, 0]) == [1.0, 0.0]


class LengthReward(torch.nn.Module):
    """A stand-in reward model: the reward is the number of tokens."""

    config = SimpleNamespace(num_labels=1)

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=attention_mask.sum(dim=1, keepdim=True).float())


def test_reward_accuracy_counts_pairs_with_chosen_above_rejected():
    _, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    rows = [{"prompt": "q", "chosen": " long answer", "rejected": " no"},
            {"prompt": "q", "chosen": " a", "rejected": " much longer"},
            {"prompt": "q", "chosen": " yes!", "rejected": " ok"}]
    result = reward_accuracy(LengthReward(), tokenizer, EvalTaskConfig(name="rm", data="d", metric="reward_accuracy"),
                             None, rows, EvaluationConfig(batch_size=2))
    assert [item["score"] for item in result["items"]] == [1.0, 0.0, 1.0]
    assert result["score"] == pytest.approx(2 / 3)
    assert [item["margin"] for item in result["items"]] == [9.0, -10.0, 2.0]  # byte tokens: 12 - 3, 2 - 12, 5 - 3


class Logs(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def test_sft_reward_model_then_grpo_hands_the_policy_on_and_saves_a_plain_reward_model(tmp_path):
    logs = Logs()
    recipe = make_recipe(tmp_path, [
        {"name": "sft", "data": "sft", "max_steps": 2, "batch_size": 2},
        {"name": "rm", "data": "pref", "trainer": "reward", "lr": 5e-3, "max_steps": 6, "batch_size": 4,
         "logging_steps": 1, "eval": {"data": ["pref"]}},
        {"name": "grpo", "data": "sft", "trainer": {"kind": "grpo", "reward_model": "rm", "num_generations": 2,
                                                    "max_new_tokens": 4},
         "trainable": "hft", "lr": 1e-3, "max_steps": 2, "batch_size": 2, "logging_steps": 1},
    ], datasets=DATASETS)
    result = run(recipe, [logs])
    out = tmp_path / "run"
    reward_model = AutoModelForSequenceClassification.from_pretrained(out / "1-rm")
    assert reward_model.config.num_labels == 1
    rm_logs = [entry for entry in logs.logs if "accuracy" in entry and "margin" in entry]
    assert rm_logs[-1]["margin"] > rm_logs[0]["margin"]  # chosen pulled above rejected
    # the policy stage started from SFT's weights, not from the reward model's
    grpo_logs = [entry for entry in logs.logs if "reward" in entry and "kl" in entry]
    assert grpo_logs and grpo_logs[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # reference = the entering model
    manifest = json.loads((out / "manifest.json").read_text())
    assert [stage["status"] for stage in manifest["stages"]] == ["completed"] * 3
    held_out = manifest["stages"][1]["metrics"]  # the reward trainer's own pairwise accuracy on the eval rows
    assert held_out["eval_pref_accuracy"] == 1.0 and held_out["eval_pref_margin"] > 0 and "eval_pref_loss" in held_out
    assert hasattr(result.model, "lm_head")  # the run ends with the policy, not the reward model
    # `stagewise eval` scores the saved reward model on a suite of probes alone (no stages), the
    # model's task overridden before the probes are checked against it
    suite = tmp_path / "pairs.yaml"
    suite.write_text(yaml.safe_dump({"model": "tiny-llama", "datasets": {"pref": DATASETS["pref"]},
                                     "evaluation": {"target": [{"name": "pairs", "data": "pref",
                                                                "metric": "reward_accuracy"}]}}))
    scores = tmp_path / "pairs.json"
    assert main(["eval", "--model", str(out / "1-rm"), "--task", "sequence_classification", "--suite", str(suite),
                 "--out", str(scores)]) == 0
    pairs = json.loads(scores.read_text())["results"]["target"]["pairs"]
    assert pairs["n"] == 8 and pairs["score"] == held_out["eval_pref_accuracy"]  # two equal eval batches: same mean
    assert main(["eval", "--model", str(out / "1-rm"), "--suite", str(suite)]) == 2  # a causal LM cannot score pairs


def test_a_reward_stage_hands_on_the_model_that_entered_it(tmp_path):
    """SFT -> reward model -> a stage that trains nothing: the final weights are SFT's, bit for bit."""
    from safetensors.torch import load_file

    recipe = make_recipe(tmp_path, [
        {"name": "sft", "data": "sft", "max_steps": 2, "batch_size": 2},
        {"name": "rm", "data": "pref", "trainer": "reward", "max_steps": 2, "batch_size": 4},
        {"name": "keep", "data": "sft", "trainable": "none"},
    ], datasets=DATASETS)
    run(recipe)
    out = tmp_path / "run"
    sft, kept = load_file(str(out / "0-sft/model.safetensors")), load_file(str(out / "2-keep/model.safetensors"))
    assert sft.keys() == kept.keys() and all(torch.equal(sft[k], kept[k]) for k in sft)
    again = run(recipe)  # everything reused: the run's model is the handed-on policy
    assert hasattr(again.model, "lm_head")


def test_grpo_with_a_rule_reward_trains_from_prompts_alone(tmp_path):
    logs = Logs()
    recipe = make_recipe(tmp_path, [
        {"name": "rl", "data": "sft", "trainer": {"kind": "rloo", "reward_rule": "last_integer", "num_generations": 2,
                                                  "max_new_tokens": 3},
         "lr": 1e-3, "max_steps": 2, "batch_size": 2, "logging_steps": 1}], datasets=DATASETS)
    warnings, handler = [], logging.Handler()
    handler.emit = warnings.append  # transformers' logger does not propagate to pytest's capture
    logging.getLogger("transformers").addHandler(handler)
    try:
        run(recipe, [logs])
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    rewards = [entry for entry in logs.logs if "rewards/rule_last_integer/mean" in entry]
    assert len(rewards) == 2 and all(0.0 <= e["rewards/rule_last_integer/mean"] <= 1.0 for e in rewards)
    # TRL counts prompt + completion tokens (transformers' own counter, which warns every step, is off)
    stage = json.loads((tmp_path / "run/manifest.json").read_text())["stages"][0]
    assert stage["train_tokens"] == rewards[-1]["num_tokens"] > 0 and stage["tokens_per_s"] > 0
    assert not [record for record in warnings if "number of tokens seen" in record.getMessage()]


@pytest.mark.parametrize("stages,expected", [
    ([{"name": "rm", "data": "sft", "trainer": "reward"}], "stages.0.trainer: trainer 'reward' takes preference data"),
    ([{"name": "sft", "data": "sft"}, {"name": "rl", "data": "sft", "trainer": {"kind": "grpo", "reward_model": "sft"}}],
     "stages.1.trainer.reward_model: 'sft' is not an earlier stage that trains a separate model"),
    ([{"name": "rl", "data": "sft", "trainer": {"kind": "grpo", "reward_model": "later"}},
      {"name": "later", "data": "pref", "trainer": "reward"}], "'later' is not an earlier stage"),
    ([{"name": "rl", "data": "sft", "trainer": {"kind": "grpo", "reward_rule": "vibes"}}], "stages.0.trainer.reward_rule"),
    ([{"name": "rl", "data": "sft", "trainer": {"kind": "grpo"}}], "give exactly one of reward_model"),
    ([{"name": "rl", "data": "sft", "trainer": {"kind": "grpo", "reward_rule": "regex"}}], "needs a 'pattern'"),
])
def test_bad_reward_and_rl_stages_are_one_line(tmp_path, stages, expected):
    with pytest.raises(RecipeError, match=expected):
        make_recipe(tmp_path, stages, datasets=DATASETS)
