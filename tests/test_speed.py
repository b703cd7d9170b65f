"""MFU bookkeeping: the FLOPs-per-token formula and the manifest's per-stage MFU."""
from __future__ import annotations

import json

import pytest
from conftest import make_recipe, run

from stagewise.config import ModelConfig
from stagewise.models import load_model_and_tokenizer
from stagewise.speed import flops_per_token, peak_flops


def test_flops_per_token_is_6n_plus_attention():
    model, _ = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    n = sum(p.numel() for p in model.parameters())
    assert flops_per_token(model, context=100) == 6 * n + 12 * 2 * 64 * 100


def test_peak_is_measured_once_and_cached(tmp_path):
    (tmp_path / "cache/peak.json").unlink(missing_ok=True)  # (the test fixture carries the peak between tests)
    first = peak_flops("float32")
    cached = json.loads((tmp_path / "cache/peak.json").read_text())
    assert list(cached.values()) == [first] and first > 1e8
    assert peak_flops("float32") == first


def test_manifest_records_mfu(tmp_path):
    from conftest import INSTRUCTION_ROWS

    from stagewise.data import encode_dataset

    result = run(make_recipe(tmp_path, [{"name": "s", "data": "sft", "max_steps": 2, "batch_size": 2}]))
    entry = result.manifest["stages"][0]
    metrics = entry["metrics"]
    examples = encode_dataset(INSTRUCTION_ROWS, "instruction", result.tokenizer, template="alpaca")
    context = sum(len(e["input_ids"]) for e in examples) / len(examples)
    expected = entry["tokens_per_s"] * flops_per_token(result.model, context) / metrics["peak_flops"]
    assert metrics["mfu"] == pytest.approx(expected, rel=1e-3)
    assert 0 < metrics["mfu"] < 1.5


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
def test_padding_free_batch_gives_the_padded_loss_and_gradients(model_name, attention):
    """Packed into one row, examples see only themselves: loss and gradients equal the padded batch's,
    with either attention backend (model.attn_implementation)."""
    from conftest import INSTRUCTION_ROWS

    from stagewise.data import encode_dataset
    from stagewise.engine.stage_data import train_collator

    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path=model_name,
                                                            attn_implementation=attention))
    assert model.config._attn_implementation == attention
    model.eval()  # GPT-2's dropout would make the two passes differ
    examples = encode_dataset(INSTRUCTION_ROWS, "instruction", tokenizer, template="alpaca", max_length=64)
    assert len({len(e["input_ids"]) for e in examples}) > 1  # lengths differ, so the padded batch pads
    results = []
    for padding_free in (False, True):
        batch = train_collator("lm", tokenizer, padding_free)(examples)
        assert ("attention_mask" not in batch) == padding_free
        model.zero_grad()
        loss = model(**batch, use_cache=False).loss  # as in the Trainer (TrainingArguments.use_cache=False)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (padded_loss, padded_grads), (packed_loss, packed_grads) = results
    assert packed_loss == pytest.approx(float(padded_loss), rel=1e-5)
    assert max(float((padded_grads[n] - packed_grads[n]).abs().max()) for n in padded_grads) < 1e-5


def test_padding_free_stage_trains_like_the_padded_one(tmp_path):
    stage = {"name": "sft", "data": "sft", "max_steps": 2, "batch_size": 4, "lr": 1e-3}
    padded = run(make_recipe(tmp_path / "a", [stage]))
    packed = run(make_recipe(tmp_path / "b", [stage], performance={"padding_free": True}))
    a, b = dict(padded.model.named_parameters()), dict(packed.model.named_parameters())
    assert max(float((a[n] - b[n]).detach().abs().max()) for n in a) < 1e-4
    assert packed.manifest["stages"][0]["train_tokens"] == padded.manifest["stages"][0]["train_tokens"]
