"""A forgetting predictor: the forward KL from the model entering a stage to the tuned model, on the
stage's own prompts and the tuned model's own samples,

    KL(π_tuned ‖ π_enter) = E_{x ~ stage prompts, y ~ π_tuned(·|x)} [log π_tuned(y|x) − log π_enter(y|x)]

(RL's Razor, Shenfeld et al., arXiv 2509.04259: this KL predicted forgetting across SFT and RL where
weight-change norms did not). By the chain rule the sequence KL is the expected sum, along the
tuned model's own samples, of the exact KL between the two next-token distributions at each
position; that sum is computed on one sample of up to ``kl_tokens`` tokens (temperature 1, seeded)
for each of ``kl_prompts`` prompts (never negative, lower variance than log-ratio samples) and
reported per sequence (the definition) and per token.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from ..data.tokenize import prompt_text
from ..registry import format_has


def stage_prompts(
    rows: list[dict[str, Any]], data_format: str, tokenizer: Any, template: str, count: int, seed: int
) -> list[list[int]]:
    """Up to ``count`` of the rows' prompts (drawn with ``seed``), token ids as training renders them;
    none for data without prompts (plain text, labelled rows a transform templates later)."""
    if not format_has(data_format, "has_prompt"):
        return []
    chosen = rows if len(rows) <= count else random.Random(seed).sample(rows, count)
    texts = [prompt_text(row, data_format, tokenizer, template) for row in chosen]
    return [tokenizer(text, add_special_tokens=True)["input_ids"] for text in texts if text]


@torch.inference_mode()
def next_token_log_probs(model: Any, ids: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
    """(batch, new tokens, vocabulary) next-token log-distributions at the positions from ``start`` on.
    Counted from the end: a prompt-tuned model (ProMoT's stage) prepends virtual tokens' logits."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    new = ids.shape[1] - start
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -new - 1 : -1].float()
    return torch.log_softmax(logits, -1)


@torch.inference_mode()
def forward_kl(
    tuned: Any,
    entering: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, float]:
    """Monte Carlo KL(tuned ‖ entering) on ``prompts`` (see module), one tuned sample per prompt."""
    device = next(tuned.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = tuned.training
    tuned.eval()
    totals, tokens = [], 0
    torch.manual_seed(seed)
    for begin in range(0, len(prompts), batch_size):
        batch = prompts[begin : begin + batch_size]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        out = tuned.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
        )
        new = out[:, width:]
        ended = (new == tokenizer.eos_token_id).int().cumsum(-1)
        keep = (ended - (new == tokenizer.eos_token_id).int()) == 0  # up to and including the first EOS
        full_mask = torch.cat([mask, keep.long()], 1)
        ours, theirs = (
            next_token_log_probs(tuned, out, full_mask, width),
            next_token_log_probs(entering, out, full_mask, width),
        )
        per_position = (ours.exp() * (ours - theirs)).sum(-1)  # exact KL of each next-token distribution
        totals += (per_position * keep).sum(-1).tolist()
        tokens += int(keep.sum())
    tuned.train(was_training)
    return {
        "per_sequence": sum(totals) / max(len(totals), 1),
        "per_token": sum(totals) / max(tokens, 1),
        "prompts": len(totals),
        "tokens": tokens,
    }
