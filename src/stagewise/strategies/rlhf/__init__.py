"""Reward models and on-policy RL (RLHF), through TRL.

- ``trainer: {kind: reward}`` — a reward model (Ouyang et al. 2022, §3.5; Bradley–Terry loss
  ``−log σ(r(x, y_w) − r(x, y_l))``) trained with TRL's ``RewardTrainer`` on ``preference`` rows.
  The model is a one-output sequence-classification head on the backbone of the model entering
  the stage; the stage *branches*: the reward model is saved in its folder (a plain
  ``save_pretrained`` folder, ``AutoModelForSequenceClassification.from_pretrained``), and the
  next stage starts from the model that entered it.
- ``trainer: {kind: grpo}`` — GRPO (Shao et al. 2024, DeepSeekMath §4.1: group-normalised
  advantages over ``num_generations`` samples per prompt) and ``rloo`` — RLOO (Ahmadian et al.
  2024: leave-one-out baseline), TRL's ``GRPOTrainer`` / ``RLOOTrainer``. The reward is an earlier
  reward stage's model (``reward_model: <stage name>``) or a rule on the gold answer
  (``reward_rule: last_integer | exact_match | contains | regex``), so math can be tuned with RL
  without a reward model. The KL term (``beta``) is taken against the model *entering the stage*
  (TRL would reload the hub checkpoint named in the config). PPO: TRL 1.16 ships no PPO trainer
  (neither ``trl.PPOTrainer`` nor ``trl.experimental.ppo``), so there is none here.

Every selector and LR rule reaches these trainers through the trainer slot (HFT redraws its half
for the RL stage, as the HFT paper does for its alignment stage).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from pydantic import Field
from transformers import AutoModelForSequenceClassification, PreTrainedModel, Trainer, TrainingArguments

from ...addons import is_peft_model
from ...config import DatasetConfig, EvalTaskConfig, EvaluationConfig
from ...errors import DataError, ModelError
from ...eval.suite import answer_correct, item_ids
from ...precision import record_storage_dtype, storage_dtype
from ...protocols import TrainerInputs
from ...registry import METRICS, TRAINERS, PluginConfig, Requires, TrainerTraits
from ...rewards import RewardSource, load_reward_model, reward_scores
from ...trainers import frozen_reference, stage_trainer_class

HEADS = ("score.", "classifier.")  # decoder-style and encoder-style classification heads


def reward_model_from(model: PreTrainedModel, seed: int) -> PreTrainedModel:
    """A one-output sequence-classification model on ``model``'s backbone (its weights copied; the
    new head drawn from ``seed``): the reward model's starting point."""
    if is_peft_model(model):
        raise ModelError(
            "trainer 'reward' starts from a full model: merge the earlier stage's adapter first "
            "(merge: ...) or train the reward model from the base"
        )
    config = copy.deepcopy(model.config)
    config.num_labels, config.id2label, config.label2id = 1, {0: "reward"}, {"reward": 0}
    config.architectures = None
    torch.manual_seed(seed)
    reward = AutoModelForSequenceClassification.from_config(config, dtype=storage_dtype(model))
    record_storage_dtype(reward, storage_dtype(model))
    missing, _ = reward.load_state_dict(model.state_dict(), strict=False)
    uncopied = [name for name in missing if not name.startswith(HEADS)]
    if uncopied:
        raise ModelError(
            f"trainer 'reward': {type(model).__name__}'s weights do not map onto "
            f"{type(reward).__name__} ({len(uncopied)} tensors missing, e.g. {uncopied[0]})"
        )
    return reward.to(next(model.parameters()).device)


class RewardConfig(PluginConfig):
    center_rewards: float | None = Field(
        default=None, ge=0
    )  # TRL's center_rewards_coefficient (Eisenstein et al. 2023: 0.01)


def preference_dataset(rows: list[dict[str, Any]]) -> Any:
    from datasets import Dataset

    return Dataset.from_list([{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows])


@TRAINERS.register(
    "reward",
    RewardConfig,
    requires=Requires(objectives=("preference",), model_tasks=("causal_lm",), plain_weights=True, sharded=False),
    traits=TrainerTraits(takes_loss=False, samples_examples=False, builds_model=reward_model_from),
    plan=lambda config, ctx: {"entering model (kept)": ctx.stored_weights},
)
def reward_trainer(config: RewardConfig, inputs: TrainerInputs) -> Trainer:
    """A Bradley–Terry reward model on prompt/chosen/rejected rows (TRL RewardTrainer)."""
    from trl import RewardConfig as TrlRewardConfig
    from trl import RewardTrainer

    args = inputs.args_for(TrlRewardConfig, center_rewards_coefficient=config.center_rewards)
    return stage_trainer_class(RewardTrainer)(
        model=inputs.pretrained,
        args=args,
        train_dataset=preference_dataset(inputs.rows),
        processing_class=inputs.tokenizer,
        callbacks=inputs.callbacks,
        **inputs.stage_features(),
    )


@METRICS.register(
    "reward_accuracy", requires=Requires(formats=("preference",), model_tasks=("sequence_classification",))
)
@torch.inference_mode()
def reward_accuracy(
    model, tokenizer, task: EvalTaskConfig, dataset: DatasetConfig, rows, evaluation: EvaluationConfig
) -> dict[str, Any]:
    """Held-out pairs on which the reward model scores the chosen answer above the rejected one
    (item score 1/0; ``scores`` also holds the mean reward margin)."""
    if model.config.num_labels != 1:
        raise DataError(
            f"evaluation {task.name!r}: reward_accuracy needs a reward model (one output), "
            f"this model has {model.config.num_labels}"
        )

    def rewards(texts: list[str]) -> list[float]:
        return reward_scores(model, tokenizer, texts, evaluation.batch_size, evaluation.max_length)

    model.eval()
    margins = [
        c - r
        for c, r in zip(
            rewards([row["prompt"] + row["chosen"] for row in rows]),
            rewards([row["prompt"] + row["rejected"] for row in rows]),
        )
    ]
    items: list[dict[str, Any]] = [
        {"id": i, "score": float(m > 0), "margin": m} for i, m in zip(item_ids(rows), margins)
    ]
    accuracy = sum(item["score"] for item in items) / len(items)
    return {
        "score": accuracy,
        "scores": {"reward_accuracy": accuracy, "margin": sum(margins) / len(margins)},
        "items": items,
    }


class OnPolicyConfig(RewardSource):
    """Shared by GRPO and RLOO. ``batch_size`` of the stage counts prompts per step; each is
    sampled ``num_generations`` times; rewarded by a reward stage's model or a rule (``RewardSource``)."""

    num_generations: int = Field(default=4, ge=2)  # samples per prompt (the group)
    max_new_tokens: int = Field(default=64, ge=1)  # completion length
    temperature: float = Field(default=1.0, gt=0)
    beta: float = Field(default=0.04, ge=0)  # KL weight to the entering model (DeepSeekMath GRPO: 0.04)


def rule_reward(config: OnPolicyConfig, rows: list[dict[str, Any]]) -> Any:
    """A TRL reward function: 1.0 where the completion is right about its row's gold answer by
    ``reward_rule``, else 0.0 (TRL passes the dataset's ``row_index`` column along)."""

    rule = config.reward_rule
    assert rule is not None  # called only for a rule reward (a reward model is used otherwise)

    def reward(prompts: list[Any], completions: list[str], row_index: list[int], **_: Any) -> list[float]:
        return [
            float(answer_correct(rule, completion, rows[i], config.pattern))
            for completion, i in zip(completions, row_index)
        ]

    reward.__name__ = f"rule_{rule}"
    return reward


@contextmanager
def entering_model_as_reference(module: Any, model: Any) -> Iterator[None]:
    """TRL builds the KL reference by reloading the checkpoint named in the model's config; make it
    a frozen copy of the model entering the stage instead (after SFT, say)."""
    original = module.create_model_from_path
    module.create_model_from_path = lambda *args, **kwargs: frozen_reference(model)
    try:
        yield
    finally:
        module.create_model_from_path = original


def on_policy_trainer(
    trainer_cls: type[Any],
    config_cls: type[TrainingArguments],
    module: Any,
    config: OnPolicyConfig,
    inputs: TrainerInputs,
) -> Trainer:
    from datasets import Dataset

    assert inputs.prompts is not None and inputs.stage_folder is not None  # the engine gives both
    dataset = Dataset.from_list([{"prompt": p, "row_index": i} for i, p in enumerate(inputs.prompts())])
    if config.reward_model:
        reward_funcs: Any = load_reward_model(
            inputs.stage_folder(config.reward_model), next(inputs.model.parameters()).device
        )
    else:
        reward_funcs = rule_reward(config, inputs.rows)
    args = inputs.args_for(
        config_cls,
        num_generations=config.num_generations,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        beta=config.beta,
        per_device_train_batch_size=inputs.batch_size * config.num_generations,
        include_num_input_tokens_seen=False,
    )  # TRL counts prompt + completion tokens itself; the batches hold no input_ids
    with entering_model_as_reference(module, inputs.model):
        return stage_trainer_class(trainer_cls)(
            model=inputs.pretrained,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=dataset,
            processing_class=inputs.tokenizer,
            callbacks=inputs.callbacks,
            **inputs.stage_features(),
        )


def gold_answers_for_rules(config: OnPolicyConfig, formats: set[str], stage: Any = None) -> tuple[str, str] | None:
    if config.reward_rule and "preference" in formats:
        return "reward_rule", (
            f"{config.reward_rule!r} checks gold answers, which preference rows lack: use "
            "reward_model (an earlier reward stage) for preference prompts"
        )
    return None


ON_POLICY = Requires(
    objectives=("lm", "preference"),
    formats=("instruction", "prompt_completion", "preference"),
    model_tasks=("causal_lm",),
    sharded=False,
)  # TRL trainers
OWN_BATCHES = TrainerTraits(takes_loss=False, samples_examples=False, check=gold_answers_for_rules)


def on_policy_plan(config: OnPolicyConfig, ctx: Any) -> dict[str, float]:
    """`stagewise plan`: the KL reference (a frozen copy unless an adapter stands in or beta is 0) and
    the KV cache of each step's batch × num_generations sampled completions."""
    reference = 0.0 if ctx.has_adapter or config.beta == 0 else ctx.stored_weights
    sequences = ctx.batch_size * config.num_generations
    return {
        "reference model": reference,
        "generation kv cache": sequences * (ctx.seq_len + config.max_new_tokens) * ctx.kv_bytes_per_token,
    }


@TRAINERS.register(
    "grpo",
    OnPolicyConfig,
    requires=ON_POLICY,
    traits=OWN_BATCHES,
    example={"reward_rule": "contains"},
    plan=on_policy_plan,
)
def grpo_trainer(config: OnPolicyConfig, inputs: TrainerInputs) -> Trainer:
    """GRPO on the stage's prompts, rewarded by a reward model or a rule (TRL GRPOTrainer)."""
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer import grpo_trainer as module

    return on_policy_trainer(GRPOTrainer, GRPOConfig, module, config, inputs)


@TRAINERS.register(
    "rloo",
    OnPolicyConfig,
    requires=ON_POLICY,
    traits=OWN_BATCHES,
    example={"reward_rule": "contains"},
    plan=on_policy_plan,
)
def rloo_trainer(config: OnPolicyConfig, inputs: TrainerInputs) -> Trainer:
    """RLOO on the stage's prompts, rewarded by a reward model or a rule (TRL RLOOTrainer)."""
    from trl import RLOOConfig, RLOOTrainer
    from trl.trainer import rloo_trainer as module

    return on_policy_trainer(RLOOTrainer, RLOOConfig, module, config, inputs)
