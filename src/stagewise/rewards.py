"""How entries judge the model's own answers: a rule on the row's gold answer, or the reward model
an earlier ``trainer: reward`` stage trained. Shared by GRPO/RLOO (``strategies/rlhf``) and on-policy
replay's filter (``strategies/on_policy_replay``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import model_validator
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from .registry import PluginConfig

RewardRule = Literal["last_integer", "exact_match", "contains", "regex"]


class RewardSource(PluginConfig):
    """Exactly one of ``reward_model`` (an earlier reward stage, by name) or ``reward_rule`` (a
    check of the answer against the row's gold: ``eval.suite.answer_correct``)."""

    stage_fields: ClassVar[tuple[str, ...]] = ("reward_model",)
    reward_model: str | None = None  # an earlier `trainer: reward` stage, by name
    reward_rule: RewardRule | None = None  # or a rule on the gold answer
    pattern: str | None = None  # reward_rule regex: the first group is the answer

    @model_validator(mode="after")
    def _one_reward(self) -> "RewardSource":
        if (self.reward_model is None) == (self.reward_rule is None):
            raise ValueError("give exactly one of reward_model (an earlier reward stage) or reward_rule")
        if self.reward_rule == "regex" and not self.pattern:
            raise ValueError("reward_rule regex needs a 'pattern'")
        return self


def load_reward_model(folder: Path, device: torch.device) -> PreTrainedModel:
    """A reward stage's saved model (a one-output sequence classifier), ready to score."""
    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True)
    return model.to(device).eval()


@torch.inference_mode()
def reward_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int, max_length: int
) -> list[float]:
    """The reward model's score of each full text (prompt + answer), in batches."""
    device = next(model.parameters()).device
    found: list[float] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            padding_side="right",
            truncation=True,
            max_length=max_length,
        ).to(device)
        found += model(**batch).logits[:, 0].float().tolist()
    return found
