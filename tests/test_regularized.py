"""L2-SP and EWC: the penalty's value and gradient by hand, λ = 0 equals plain training bit for
bit, the Fisher is computed once per stage on the trainable tensors only (and cached), and the
anchor does pull the weights towards the entering model."""
from __future__ import annotations

import pytest
import torch
from conftest import INSTRUCTION_ROWS, Snapshot, make_recipe, run

from stagewise.config import ModelConfig
from stagewise.models import load_model_and_tokenizer
from stagewise.strategies import regularized
from stagewise.strategies.regularized import Anchor

DATASETS = {"sft": {"format": "instruction", "template": "alpaca", "rows": INSTRUCTION_ROWS},
            "general": {"format": "text", "rows": [{"text": f"general prose number {i}"} for i in range(6)]}}


def stage(**extra):
    return {"name": "s", "data": "sft", "lr": 1e-2, "max_steps": 4, "batch_size": 2, "trainable": "head", **extra}


def test_penalty_value_and_gradient_equal_the_formulas():
    """Value λ/2·Σw(θ−θ₀)², and the gradient it adds equals autograd's gradient of that penalty
    (the loss-side formulation it replaces), scaled, on the trainable tensor only."""
    model, _ = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    for param in model.parameters():
        param.requires_grad_(False)
    head = model.lm_head.weight
    head.requires_grad_(True)
    anchor_l2 = Anchor(model, weight=0.3)
    fisher = torch.rand_like(head)
    anchor_ewc = Anchor(model, weight=0.3, importance=[fisher], offload=True)
    theta0 = head.detach().clone()
    with torch.no_grad():
        head.add_(torch.randn_like(head) * 0.1)
        model.model.embed_tokens.weight.add_(1.0)  # frozen: never part of the penalty
    delta = head.detach() - theta0
    assert anchor_l2.value() == pytest.approx(0.15 * float(delta.pow(2).sum()), rel=1e-5)
    assert anchor_ewc.value() == pytest.approx(0.15 * float((fisher * delta.pow(2)).sum()), rel=1e-5)
    for anchor, importance in ((anchor_l2, torch.ones_like(fisher)), (anchor_ewc, fisher)):
        loss_side = 0.15 * (importance * (head - theta0).pow(2)).sum()
        expected = torch.autograd.grad(loss_side, head)[0]
        assert torch.allclose(expected, 0.3 * importance * delta, atol=1e-6)
        head.grad = torch.full_like(head, 2.0)
        anchor.add_gradients(0.5)
        assert torch.allclose(head.grad, 2.0 + 0.5 * expected, atol=1e-6)
    assert model.model.embed_tokens.weight.grad is None


def test_the_penalty_counts_once_per_optimizer_step_under_gradient_accumulation(tmp_path):
    """Batch 2 × accumulation 1 and batch 1 × accumulation 2 see the same rows per step: with the
    anchor's gradient added per micro-batch at 1/accumulation, they end at the same weights."""
    l2sp = {"kind": "l2sp", "weight": 5.0}
    whole = run(make_recipe(tmp_path / "a", [stage(trainable="full", regularizer=l2sp, logging_steps=1)],
                            datasets=DATASETS))
    split = run(make_recipe(tmp_path / "b", [stage(trainable="full", regularizer=l2sp, batch_size=1, grad_accum=2)],
                            datasets=DATASETS))
    plain = run(make_recipe(tmp_path / "c", [stage(trainable="full")], datasets=DATASETS))
    a, b, c = (dict(r.model.named_parameters()) for r in (whole, split, plain))
    assert max(float((a[n] - b[n]).abs().max()) for n in a) < 1e-5
    assert max(float((a[n] - c[n]).abs().max()) for n in a) > 1e-4  # and the anchor did act
    import json

    history = json.loads((tmp_path / "a/run/0-s/trainer_state.json").read_text())["log_history"]
    penalties = [record["penalty"] for record in history if "penalty" in record]
    assert len(penalties) == 4 and all(value > 0 for value in penalties)  # logged at each step (logging_steps 1)


@pytest.mark.parametrize("regularizer", [{"kind": "l2sp", "weight": 0.0}, {"kind": "ewc", "weight": 0.0, "data": "general"}])
def test_zero_weight_equals_the_plain_stage_bit_for_bit(tmp_path, regularizer):
    plain = run(make_recipe(tmp_path / "plain", [stage()], datasets=DATASETS))
    anchored = run(make_recipe(tmp_path / "reg", [stage(regularizer=regularizer)], datasets=DATASETS))
    for name, tensor in plain.model.state_dict().items():
        assert torch.equal(tensor, anchored.model.state_dict()[name]), name


def test_fisher_once_per_stage_on_trainable_tensors_only_and_cached(tmp_path, monkeypatch):
    calls = []
    original = regularized.empirical_fisher

    def counting(model, *args, **kwargs):
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        fisher = original(model, *args, **kwargs)
        calls.append((len(fisher), len(trainable)))
        return fisher

    monkeypatch.setattr(regularized, "empirical_fisher", counting)
    ewc = {"kind": "ewc", "weight": 10.0, "data": "general", "batches": 3}
    recipe = make_recipe(tmp_path / "a", [stage(regularizer=ewc, epochs=2, max_steps=-1)], datasets=DATASETS)
    result = run(recipe)
    assert calls == [(1, 1)]  # one pass, over the one trainable tensor (the head), for a two-epoch stage
    assert result.manifest["stages"][0]["trainable_params"] == 272 * 64
    run(make_recipe(tmp_path / "b", [stage(regularizer=ewc, epochs=2, max_steps=-1)], datasets=DATASETS))
    assert len(calls) == 1  # same entering model, data and settings: read from the cache


def test_the_fisher_cache_is_read_back_for_many_tensors(tmp_path, monkeypatch):
    """safetensors returns its names sorted, not in module order: the cache must still be found."""
    calls = []
    original = regularized.empirical_fisher
    monkeypatch.setattr(regularized, "empirical_fisher", lambda *a, **k: calls.append(1) or original(*a, **k))
    ewc = {"kind": "ewc", "weight": 10.0, "data": "general", "batches": 2}
    for name in ("a", "b"):
        run(make_recipe(tmp_path / name, [stage(trainable="full", regularizer=ewc)], datasets=DATASETS))
    assert len(calls) == 1


def test_a_strong_anchor_keeps_the_weights_closer_to_the_entering_model(tmp_path):
    snapshot = Snapshot()
    plain = run(make_recipe(tmp_path / "plain", [stage(trainable="full")], datasets=DATASETS), [snapshot])
    anchored = run(make_recipe(tmp_path / "reg", [stage(trainable="full", regularizer={"kind": "l2sp", "weight": 50.0})],
                               datasets=DATASETS))
    start = snapshot.states[0]

    def distance(model):
        return sum(float((p.detach() - start[n]).pow(2).sum()) for n, p in model.named_parameters())

    assert distance(anchored.model) < 0.5 * distance(plain.model)


@pytest.mark.parametrize("regularizer, message", [
    ({"kind": "ewc", "data": "nope"}, "stages.0.regularizer.data: unknown dataset 'nope'"),
    ({"kind": "ewc", "weight": -1, "data": "general"}, "stages.0.regularizer.weight: Input should be greater than"),
    ({"kind": "ewc"}, "stages.0.regularizer.data: required key is missing"),
    ({"kind": "l2p"}, "unknown regularizer 'l2p' (did you mean 'l2sp'?)"),
])
def test_bad_regularizer_is_one_line(tmp_path, regularizer, message):
    from stagewise.errors import RecipeError

    with pytest.raises(RecipeError) as error:
        make_recipe(tmp_path, [stage(regularizer=regularizer)], datasets=DATASETS)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_ewc_on_preference_data_is_one_line(tmp_path):
    from stagewise.errors import DataError

    datasets = {**DATASETS, "pref": {"format": "preference", "rows": [{"prompt": "p", "chosen": "a", "rejected": "b"}]}}
    with pytest.raises(DataError, match="regularizer.data: dataset 'pref' gives no tokenized examples"):
        run(make_recipe(tmp_path, [stage(regularizer={"kind": "ewc", "data": "pref"})], datasets=datasets))
