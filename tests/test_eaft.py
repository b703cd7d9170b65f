"""EAFT (arXiv 2601.02151): the loss equals the reference formula on hand-built logits, its weights
carry no gradient, α = 0 is the model's own cross-entropy, and bad settings are one line."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import make_recipe

from stagewise.config import ModelConfig
from stagewise.errors import RecipeError
from stagewise.models import load_model_and_tokenizer
from stagewise.strategies.eaft import EAFTConfig, eaft_loss, entropy_weights

LOGITS = [[[2.0, 1.0, 0.0, -1.0, -5.0], [0.1, 0.2, 0.3, 0.4, 0.5], [4.0, -2.0, -2.0, 1.0, 0.0]]]
LABELS = [[-100, 3, 0]]  # position 0 (prompt) predicts label 3, position 1 predicts label 0; the last has none


def by_hand(alpha: float, top_k: int, scale: float, num_items: float | None) -> float:
    """The reference's steps in plain Python: shift, top-k softmax entropy / scale, ^alpha, weighted CE."""
    total, count = 0.0, 0
    for t, row in enumerate(LOGITS[0][:-1]):
        label = LABELS[0][t + 1]
        top = sorted(row, reverse=True)[:top_k]
        norm = math.log(sum(math.exp(v) for v in top))
        entropy = -sum(math.exp(v - norm) * (v - norm) for v in top)
        ce = math.log(sum(math.exp(v) for v in row)) - row[label]
        total += (entropy / scale) ** alpha * ce
        count += 1
    return total / (num_items if num_items is not None else count)


@pytest.mark.parametrize("alpha, top_k, num_items", [(1.0, 3, None), (0.5, 3, 2), (2.0, 5, 7)])
def test_eaft_equals_the_reference_formula(alpha, top_k, num_items):
    config = EAFTConfig(kind="eaft", alpha=alpha, top_k=top_k)
    loss = eaft_loss(torch.tensor(LOGITS), torch.tensor(LABELS), config, num_items)
    assert float(loss) == pytest.approx(by_hand(alpha, top_k, 3.0, num_items), rel=1e-6)


def test_eaft_weights_carry_no_gradient():
    logits = torch.tensor(LOGITS, requires_grad=True)
    eaft_loss(logits, torch.tensor(LABELS), EAFTConfig(kind="eaft"), 2).backward()
    rows = torch.tensor(LOGITS)[0, :2]
    weights = entropy_weights(rows, 20, 3.0, 1.0)
    plain = rows.clone().requires_grad_(True)
    (torch.nn.functional.cross_entropy(plain, torch.tensor([3, 0]), reduction="none") * weights).sum().div(2).backward()
    assert torch.allclose(logits.grad[0, :2], plain.grad, atol=1e-7)
    assert torch.equal(logits.grad[0, 2], torch.zeros(5))  # the last position predicts nothing


def test_eaft_with_alpha_zero_is_the_models_own_loss():
    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    ids = torch.tensor([tokenizer("a short answer to train on")["input_ids"]])
    labels = ids.clone()
    labels[0, :3] = -100  # a masked prompt
    outputs = model(input_ids=ids, labels=labels)
    ours = eaft_loss(outputs.logits, labels, EAFTConfig(kind="eaft", alpha=0.0))
    assert float(ours) == pytest.approx(float(outputs.loss), rel=1e-6)


def test_a_batch_without_answer_tokens_gives_zero_with_a_graph():
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = eaft_loss(logits, torch.full((1, 3), -100), EAFTConfig(kind="eaft"))
    loss.backward()
    assert float(loss) == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("loss, expected", [
    ({"kind": "eaft", "alpha": -1}, r"stages\.0\.loss\.alpha"),
    ({"kind": "eaft", "top_k": 1}, r"stages\.0\.loss\.top_k"),
])
def test_bad_eaft_settings_are_one_line(tmp_path, loss, expected):
    with pytest.raises(RecipeError, match=expected) as err:
        make_recipe(tmp_path, [{"name": "s", "data": "sft", "loss": loss}])
    assert "\n" not in str(err.value)


def test_eaft_on_a_classification_stage_is_one_line(tmp_path):
    from conftest import CLASSIFICATION_ROWS

    with pytest.raises(RecipeError, match=r"loss 'eaft' takes lm data, not classification") as err:
        make_recipe(tmp_path, [{"name": "s", "data": "c", "loss": {"kind": "eaft"}}],
                    model={"model_name_or_path": "tiny-bert", "task": "sequence_classification"},
                    datasets={"c": {"format": "classification", "rows": CLASSIFICATION_ROWS}})
    assert "\n" not in str(err.value)
