"""The forgetting predictor: KL(tuned || entering) on the stage's prompts is 0 for the same model,
equals the per-position KL computed by hand on the sampled sequence, grows with how far training
moved the model, and is recorded per stage."""
from __future__ import annotations

import pytest
import torch
from conftest import make_recipe, run

from stagewise.config import ModelConfig
from stagewise.eval.kl import forward_kl
from stagewise.models import load_model_and_tokenizer


@pytest.fixture(scope="module")
def pair():
    tuned, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    entering, _ = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    with torch.no_grad():
        for param in tuned.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return tuned, entering, tokenizer


def test_the_same_model_is_at_zero(pair):
    _, entering, tokenizer = pair
    prompts = [tokenizer("hello there")["input_ids"], tokenizer("a longer prompt about things")["input_ids"]]
    result = forward_kl(entering, entering, tokenizer, prompts, max_new_tokens=6)
    assert abs(result["per_sequence"]) < 1e-5 and result["prompts"] == 2


def kl_by_hand(tuned, entering, tokenizer, prompt, max_new_tokens, seed):
    """The tuned model's sample drawn again, and the exact KL summed position by position."""
    torch.manual_seed(seed)
    ids = torch.tensor([prompt])
    out = tuned.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_k=0,
                         top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id)
    new = out[0, len(prompt):].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id) + 1]
    total = 0.0
    with torch.no_grad():
        for step in range(len(new)):
            context = torch.tensor([prompt + new[:step]])
            p = torch.log_softmax(tuned(input_ids=context).logits[0, -1].float(), -1)
            q = torch.log_softmax(entering(input_ids=context).logits[0, -1].float(), -1)
            total += float((p.exp() * (p - q)).sum())
    return total, len(new)


def test_it_is_the_per_position_kl_along_the_tuned_models_sample(pair):
    tuned, entering, tokenizer = pair
    prompt = tokenizer("hello there")["input_ids"]
    result = forward_kl(tuned, entering, tokenizer, [prompt], max_new_tokens=5, seed=3)
    total, tokens = kl_by_hand(tuned, entering, tokenizer, prompt, 5, seed=3)
    assert result["tokens"] == tokens
    assert result["per_sequence"] == pytest.approx(total, rel=1e-4)


def test_a_prompt_tuned_model_is_read_at_its_real_tokens(pair):
    """ProMoT's first stage is a PEFT soft prompt, whose logits start with its virtual tokens'
    (the KL used to fail there on mismatched lengths)."""
    from peft import PromptTuningConfig, get_peft_model

    _, entering, tokenizer = pair
    base, _ = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    torch.manual_seed(0)
    prompted = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with torch.no_grad():
        prompted.prompt_encoder.default.embedding.weight.mul_(50)  # a prompt that moves the outputs
    prompt = tokenizer("hello there")["input_ids"]
    result = forward_kl(prompted, entering, tokenizer, [prompt], max_new_tokens=5, seed=3)
    total, tokens = kl_by_hand(prompted, entering, tokenizer, prompt, 5, seed=3)
    assert result["tokens"] == tokens and total > 1e-3
    assert result["per_sequence"] == pytest.approx(total, rel=1e-4)


def test_a_stage_records_more_kl_the_further_it_moved(tmp_path):
    evaluation = {"target": [{"name": "t", "data": "sft", "metric": "answer_logprob"}], "kl_prompts": 4,
                  "kl_tokens": 8}
    stages = [{"name": "far", "data": "sft", "max_steps": 4, "batch_size": 2, "lr": 1e-2},
              {"name": "near", "data": "sft", "max_steps": 1, "batch_size": 2, "lr": 1e-6}]
    result = run(make_recipe(tmp_path, stages, evaluation=evaluation))
    far, near = (stage["kl_to_entering"] for stage in result.manifest["stages"])
    assert far["per_sequence"] > 100 * abs(near["per_sequence"]) and far["prompts"] == 4
    assert "KL to the entering model" in (tmp_path / "run" / "report.md").read_text()


def test_it_can_be_turned_off(tmp_path):
    evaluation = {"target": [{"name": "t", "data": "sft", "metric": "answer_logprob"}], "kl_prompts": 0}
    result = run(make_recipe(tmp_path, [{"name": "s", "data": "sft", "max_steps": 1}], evaluation=evaluation))
    assert "kl_to_entering" not in result.manifest["stages"][0]
