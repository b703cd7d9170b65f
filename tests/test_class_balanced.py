"""LP-FT with class-balanced LDAM: formula values, the loss against the reference formula,
and which tensors each stage moves."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import Snapshot, make_recipe, run

from stagewise.protocols import LossContext
from stagewise.strategies.class_balanced import LDAMConfig, effective_number_weights, focal_loss, ldam, ldam_margins


def test_weights_and_margins_for_100_vs_20():
    assert effective_number_weights([100, 20], 0.9999).tolist() == pytest.approx([0.3344, 1.6656], abs=1e-4)
    assert ldam_margins([100, 20], 0.5).tolist() == pytest.approx([0.3344, 0.5], abs=1e-4)
    assert float(effective_number_weights([5, 7, 9], 0.99).sum()) == pytest.approx(3.0)


@pytest.mark.parametrize("scale", [1.0, 30.0])  # the two-stage reference's s = 1, the LDAM paper's s = 30
def test_ldam_loss_equals_the_reference_formula(scale):
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 0, 1])
    compute = ldam(LDAMConfig(kind="ldam", scale=scale),
                   LossContext(objective="classification", class_counts=[100, 20]))
    weights, margins = torch.tensor([0.33444, 1.66556]), torch.tensor([0.33437, 0.5])
    # CE(s*(z - m_y * onehot(y)), y, weight=w), written out by hand:
    adjusted = logits.clone()
    for row, label in enumerate(labels):
        adjusted[row, label] -= margins[label]
    nll = -F.log_softmax(scale * adjusted, dim=-1)[torch.arange(6), labels]
    expected = (weights[labels] * nll).sum() / weights[labels].sum()
    assert float(compute({"logits": logits}, labels)) == pytest.approx(float(expected), rel=1e-4)
    if scale == 30.0:  # at s = 30 the margins dominate: the loss differs from the unscaled one
        unscaled = ldam(LDAMConfig(kind="ldam"), LossContext(objective="classification", class_counts=[100, 20]))
        assert float(compute({"logits": logits}, labels)) > 2 * float(unscaled({"logits": logits}, labels))


def test_focal_loss_reduces_to_ce_at_gamma_zero():
    torch.manual_seed(1)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    assert float(focal_loss(logits, labels, 0.0, None)) == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-6)
    assert float(focal_loss(logits, labels, 2.0, None)) < float(F.cross_entropy(logits, labels))


IMBALANCED = [{"text": f"good thing {i}", "label": "pos"} for i in range(10)] + \
             [{"text": f"bad thing {i}", "label": "neg"} for i in range(2)]


def test_two_stage_changes_head_pooler_top_layer_then_everything(tmp_path):
    snapshot = Snapshot()
    recipe = make_recipe(
        tmp_path,
        [{"name": "stage1", "data": "cls", "lr": 1e-2, "max_steps": 3, "batch_size": 4, "optim": "adamw_torch",
          "trainable": {"kind": "head", "top_layers": 1, "pooler": True}, "loss": "ldam", "weight_decay": 0.1},
         {"name": "stage2", "data": "cls", "lr": 1e-2, "max_steps": 3, "batch_size": 4, "trainable": "full", "loss": "ce"}],
        model={"model_name_or_path": "tiny-bert", "task": "sequence_classification", "head_layers": 2},
        datasets={"cls": {"format": "classification", "rows": IMBALANCED, "labels": ["neg", "pos"]}},
    )
    result = run(recipe, [snapshot])
    entering1, entering2 = snapshot.states
    stage1_moves = ("classifier.", "bert.pooler.", "bert.encoder.layer.1.")
    for name, before in entering1.items():
        moved = not torch.equal(before, entering2[name])
        assert moved == name.startswith(stage1_moves), name
    after = dict(result.model.named_parameters())
    unchanged = [n for n, before in entering2.items() if torch.equal(before, after[n])]
    assert unchanged == []  # stage 2 moves every tensor
    assert any(n.startswith("classifier.3.") for n in after)  # the 2-layer MLP head


def test_mlp_head_reloads_from_the_stage_folder(tmp_path):
    from stagewise.config import ModelConfig
    from stagewise.models import load_pretrained

    recipe = make_recipe(
        tmp_path, [{"name": "s", "data": "cls", "max_steps": 1, "batch_size": 4}],
        model={"model_name_or_path": "tiny-bert", "task": "sequence_classification", "head_layers": 2},
        datasets={"cls": {"format": "classification", "rows": IMBALANCED}},
    )
    result = run(recipe)
    reloaded, _ = load_pretrained(tmp_path / "run/0-s", ModelConfig(model_name_or_path="x", task="sequence_classification"))
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name


def test_class_balanced_loss_on_lm_stage_is_a_recipe_error(tmp_path):
    from stagewise.errors import RecipeError

    with pytest.raises(RecipeError, match=r"stages.0.loss: loss 'ldam' takes classification data, not lm "
                                          r"\(this stage can use: ce, eaft\)"):
        make_recipe(tmp_path, [{"name": "s", "data": "sft", "loss": "ldam", "max_steps": 1}])
