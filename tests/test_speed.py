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
