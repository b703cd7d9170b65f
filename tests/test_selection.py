"""Every selector: frozen tensors bit-identical after AdamW with weight decay, trainable ones changed."""
from __future__ import annotations

import pytest
import torch
from conftest import CLASSIFICATION_ROWS, Snapshot, make_recipe, run

from stagewise.errors import RecipeError
from stagewise.selection import transformer_blocks

LM = {"model": "tiny-llama"}
CLS_DATA = {"cls": {"format": "classification", "rows": CLASSIFICATION_ROWS}}

# (model, trainable spec, predicate: parameter name -> should train)
CASES = [
    ("tiny-llama", "full", lambda n: True),
    ("tiny-llama", "head", lambda n: n.startswith("lm_head.")),
    ("tiny-llama", {"kind": "layers", "indices": [-1], "with_head": False}, lambda n: n.startswith("model.layers.1.")),
    ("tiny-llama", {"kind": "layers", "indices": [0]}, lambda n: n.startswith(("model.layers.0.", "lm_head."))),
    ("tiny-llama", {"kind": "modules", "patterns": ["*.mlp.*"]}, lambda n: ".mlp." in n),
    ("tiny-llama", {"kind": "modules", "patterns": ["re:self_attn\\.(q|v)_proj"]},
     lambda n: "q_proj" in n or "v_proj" in n),
    ("tiny-gpt2", "head", lambda n: n == "transformer.wte.weight"),  # lm_head is tied to wte
    ("tiny-gpt2", {"kind": "layers", "indices": [1], "with_head": False}, lambda n: n.startswith("transformer.h.1.")),
    ("tiny-bert", "head", lambda n: n.startswith("classifier.")),
    ("tiny-bert", {"kind": "layers", "indices": [-1]}, lambda n: n.startswith(("bert.encoder.layer.1.", "classifier."))),
]


@pytest.mark.parametrize("model, trainable, should_train", CASES)
def test_selector_freezes_exactly_the_rest(tmp_path, model, trainable, should_train):
    snapshot = Snapshot()
    is_bert = model == "tiny-bert"
    recipe = make_recipe(
        tmp_path,
        [{"name": "s", "data": "cls" if is_bert else "sft", "trainable": trainable, "lr": 1e-2,
          "weight_decay": 0.1, "max_steps": 3, "batch_size": 2, "optim": "adamw_torch"}],
        model={"model_name_or_path": model, "task": "sequence_classification" if is_bert else "causal_lm"},
        **({"datasets": CLS_DATA} if is_bert else {}),
    )
    result = run(recipe, [snapshot])
    before = snapshot.states[0]
    after = dict(result.model.named_parameters())
    trained = [n for n in before if should_train(n)]
    assert trained, "predicate selects nothing"
    for name, old in before.items():
        if should_train(name):
            assert not torch.equal(old, after[name]), f"{name} should have changed"
        else:
            assert torch.equal(old, after[name]), f"{name} should be bit-identical"
            assert not after[name].requires_grad


def test_none_selector_and_layer_errors(tmp_path):
    recipe = make_recipe(tmp_path, [{"name": "s", "data": "sft", "trainable": {"kind": "layers", "indices": [5]}}])
    with pytest.raises(RecipeError, match="layer 5 out of range for 2 blocks"):
        run(recipe)
    recipe = make_recipe(tmp_path, [{"name": "s", "data": "sft", "trainable": {"kind": "modules", "patterns": ["*.nope"]}}])
    with pytest.raises(RecipeError, match=r"'\*\.nope' matches no parameter"):
        run(recipe)


def test_transformer_blocks_found_for_each_architecture():
    from stagewise.config import ModelConfig
    from stagewise.models import load_model_and_tokenizer

    for name, path in (("tiny-llama", "model.layers"), ("tiny-gpt2", "transformer.h"), ("tiny-bert", "bert.encoder.layer")):
        model, _ = load_model_and_tokenizer(ModelConfig(model_name_or_path=name))
        found, blocks = transformer_blocks(model)
        assert (found, len(blocks)) == (path, 2)


def test_none_selector_evaluates_without_changing_weights(tmp_path):
    snapshot = Snapshot()
    recipe = make_recipe(tmp_path, [
        {"name": "s", "data": "sft", "max_steps": 1, "batch_size": 2},
        {"name": "probe", "data": "sft", "trainable": "none", "eval": {"data": ["sft"]}},
    ])
    result = run(recipe, [snapshot])
    assert len(snapshot.states) == 1  # the probe stage never starts a training loop
    entry = result.manifest["stages"][1]
    assert entry["trainable_params"] == 0 and entry["train_tokens"] == 0
    assert entry["metrics"]["eval_sft_loss"] > 0
    assert (tmp_path / "run/1-probe/model.safetensors").is_file()
