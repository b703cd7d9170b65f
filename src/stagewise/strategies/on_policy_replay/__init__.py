"""On-policy replay (OPR: "On-Policy Replay: Treating Self-Generated Rollouts as a Replay Source
Mitigates Forgetting in Continual Supervised Fine-Tuning", arXiv 2605.29495; reference:
Yancey2024/OnPolicyReplay, ``tools/generate_opr_ru.py``).

Plain replay mixes earlier tasks' rows, with their gold answers, into a later stage. OPR replays
the same prompts with the *current* model's own answers instead: the model entering the stage
answers every prompt of the replayed data, answers that a rule on the gold answer rejects (OPR-RU,
the reference's default: a task metric) or that an earlier reward stage's model scores below
``threshold`` are dropped, and the kept (prompt, own answer) rows are trained with plain
cross-entropy. Replaying what the model already says, rather than the gold wording, keeps the
replay on-policy ("Retaining by Doing", arXiv 2510.18874: on-policy data is why RL forgets less).

Here the replayed data is listed in the stage's ``data`` as a weighted mixture, exactly as plain
replay is (``data: {math: 1.0, facts: 0.1}``: 10 replay rows per 100 new rows each epoch, the
reference's 1-10% buffer), and this transform rewrites those datasets' rows: by default every
stage dataset an earlier stage trained on (``datasets`` names others). Rows keep their format and
template; answers are greedy (the reference samples at temperature 0.1), cached by (entering
model, rows, settings), and written beside the stage as ``on-policy-replay-<dataset>.jsonl``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ...data.formats import answer_field
from ...data.tokenize import prompt_text
from ...eval.suite import answer_correct
from ...plan.footprint import generation_plan
from ...protocols import TransformContext
from ...registry import TRANSFORMS, Requires, TransformConfig
from ...rewards import RewardSource, load_reward_model, reward_scores
from ...transforms import cached, greedy_answers, rows_fingerprint, write_rows


class OnPolicyReplayConfig(TransformConfig, RewardSource):
    threshold: float = 0.0  # reward_model: keep answers scored at or above this
    max_new_tokens: int = Field(default=64, ge=1)  # answer length (the reference: 512 for long tasks)
    batch_size: int = Field(default=16, ge=1)

    def targets(self, stage_data: list[str], earlier_data: set[str]) -> list[str]:
        """Unless ``datasets`` names them: the stage's datasets an earlier stage trained on."""
        if self.datasets is not None:
            return super().targets(stage_data, earlier_data)
        return [name for name in stage_data if name in earlier_data]


@TRANSFORMS.register(
    "on_policy_replay",
    OnPolicyReplayConfig,
    example={"reward_rule": "contains", "datasets": ["d"]},
    requires=Requires(format_traits=("answer_field",), model_tasks=("causal_lm",)),
    plan=generation_plan,
)
def on_policy_replay(rows: list[dict[str, Any]], config: OnPolicyReplayConfig, context: TransformContext):
    """Each row answered by the entering model; the rows whose own answer passes the filter, with
    that answer in place of the gold one."""
    data_format = context.dataset.format
    answers = cached(
        "on_policy_replay",
        [context.model_key, rows_fingerprint(rows), data_format, context.dataset.template, config.max_new_tokens],
        lambda: own_answers(rows, config, context),
        context.log,
    )
    passed = passing(rows, answers, config, context)
    key = answer_field(data_format)
    replay = [{**row, key: answer, "on_policy_replay": True} for row, answer, ok in zip(rows, answers, passed) if ok]
    write_rows(context.stage_dir / f"on-policy-replay-{context.dataset_name}.jsonl", replay)
    return replay, {"rows": len(rows), "kept": len(replay), "rejected": len(rows) - len(replay)}


def own_answers(rows: list[dict[str, Any]], config: OnPolicyReplayConfig, context: TransformContext) -> list[str]:
    """The entering model's greedy answer to each row's prompt, rendered as the row trains."""
    texts = greedy_answers(
        context, rows, context.dataset.format, config.max_new_tokens, config.batch_size, "on-policy replay"
    )
    if context.dataset.format == "prompt_completion":  # the completion's own leading space is part of it
        return [text.rstrip() for text in texts]
    return [text.strip() for text in texts]


def passing(
    rows: list[dict[str, Any]], answers: list[str], config: OnPolicyReplayConfig, context: TransformContext
) -> list[bool]:
    """Which answers the filter keeps: right by ``reward_rule`` against the row's gold, or scored at
    least ``threshold`` by the reward stage's model. Empty answers never pass."""
    if config.reward_rule is not None:
        return [
            bool(answer) and answer_correct(config.reward_rule, answer, row, config.pattern)
            for row, answer in zip(rows, answers)
        ]
    device = next(context.model.parameters()).device
    assert config.reward_model is not None  # validated: a rule or a reward model
    judge = load_reward_model(context.stage_folder(config.reward_model), device)
    texts = [
        prompt_text(row, context.dataset.format, context.tokenizer, context.dataset.template) + answer
        for row, answer in zip(rows, answers)
    ]
    scores = reward_scores(judge, context.tokenizer, texts, config.batch_size, max_length=2048)
    return [bool(answer) and score >= config.threshold for answer, score in zip(answers, scores)]
