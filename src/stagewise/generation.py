"""Batched generation: left padding, KV cache, greedy or sampled, seeded, with a progress bar.

Shared by evaluation, self-distillation and knowledge probing. Prompts are token ids
(encoded exactly as in training), so what the model sees at evaluation matches SFT.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_return_sequences: int = 1
    seed: int = 0


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    sampling: SamplingConfig = SamplingConfig(),
    batch_size: int = 16,
    desc: str = "generate",
) -> list[list[str]]:
    """Return ``num_return_sequences`` completions (new text only) per prompt, in prompt order.

    Prompts are batched by length (less padding) and left-padded so every row's new
    tokens start at the same position; the KV cache makes each new token O(1) in length.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[str]] = [[] for _ in prompts]
    generator_seed = torch.random.get_rng_state()
    torch.manual_seed(sampling.seed)
    kwargs = dict(max_new_tokens=sampling.max_new_tokens, do_sample=sampling.do_sample,
                  num_return_sequences=sampling.num_return_sequences, pad_token_id=pad_id, use_cache=True)
    if sampling.do_sample:
        kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            batch = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                ids = prompts[index]
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                attention[row, width - len(ids):] = 1
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
            texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
            for row, index in enumerate(batch):
                per = sampling.num_return_sequences
                results[index] = texts[row * per:(row + 1) * per]
    finally:
        torch.random.set_rng_state(generator_seed)
        model.train(was_training)
    return results
