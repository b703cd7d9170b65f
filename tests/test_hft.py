"""HFT faithfulness: exact category counts, exactly 50% of block linear weights, frozen
tensors bit-identical, frozen tensors outside the optimizer, and a fresh mask per draw."""
from __future__ import annotations

import pytest
import torch
from conftest import Snapshot, make_recipe, run
from transformers import TrainerCallback

from stagewise.config import ModelConfig
from stagewise.errors import RecipeError
from stagewise.models import load_model_and_tokenizer
from stagewise.protocols import SelectionContext
from stagewise.selection import transformer_blocks
from stagewise.strategies.hft import HFTConfig, block_parts, draw_mask, mlp_counts, select_hft


def tiny(name: str = "tiny-llama", layers: int | None = None):
    model, _ = load_model_and_tokenizer(ModelConfig(model_name_or_path=name))
    if layers:
        from transformers import AutoModelForCausalLM

        config = model.config
        config.num_hidden_layers = layers
        model = AutoModelForCausalLM.from_config(config)
    return model


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("layers", [2, 4, 6])
def test_category_counts_and_exact_half_of_block_linear_weights(layers):
    model = tiny(layers=layers)
    select_hft(model, HFTConfig(kind="hft"), SelectionContext(seed=3))
    parts = block_parts(model)
    mlp_total, trained_numel, block_numel = 0, 0, 0
    for block in parts:
        attention = [m.weight.requires_grad for _, m in block.attention]
        assert len(attention) == 4 and sum(attention) == 2
        mlp = [m.weight.requires_grad for _, m in block.mlp]
        assert len(mlp) == 3 and sum(mlp) in (1, 2)
        mlp_total += sum(mlp)
        assert sum(m.weight.requires_grad for _, m in block.norms) == 1  # half of 2 RMSNorms
        for _, module in block.attention + block.mlp:
            block_numel += module.weight.numel()
            trained_numel += module.weight.numel() * module.weight.requires_grad
    assert mlp_total == 1.5 * layers
    assert trained_numel * 2 == block_numel  # exactly 50%
    assert model.model.embed_tokens.weight.requires_grad and model.lm_head.weight.requires_grad


def test_mlp_counts_general_ratio():
    import random

    assert sorted(mlp_counts(4, 3, 0.5, random.Random(0))) == [1, 1, 2, 2]
    assert mlp_counts(5, 2, 0.5, random.Random(0)) == [1] * 5
    assert sum(mlp_counts(10, 3, 0.25, random.Random(0))) == round(0.25 * 3 * 10)


def test_redraw_gives_a_different_valid_mask_and_same_seed_the_same():
    model = tiny(layers=6)
    config = HFTConfig(kind="hft")
    first = {id(p) for p in draw_mask(model, config, seed=1)}
    again = {id(p) for p in draw_mask(model, config, seed=1)}
    other = {id(p) for p in draw_mask(model, config, seed=2)}
    assert first == again and first != other
    select_hft(model, config, SelectionContext(seed=42, stage_index=1))
    for block in block_parts(model):
        assert sum(m.weight.requires_grad for _, m in block.attention) == 2


def test_embeddings_and_head_configurable():
    model = tiny()
    select_hft(model, HFTConfig(kind="hft", train_embeddings=False, train_head=False), SelectionContext())
    stack, _ = transformer_blocks(model)
    assert all(n.startswith(stack) for n in trainable_names(model))


@pytest.mark.parametrize("granularity", ["layer", "parameter"])
def test_other_granularities_train_half(granularity):
    model = tiny(layers=4)
    select_hft(model, HFTConfig(kind="hft", granularity=granularity), SelectionContext())
    parts = block_parts(model)
    matrices = [m for b in parts for _, m in b.attention + b.mlp]
    assert sum(m.weight.requires_grad for m in matrices) * 2 == len(matrices)
    if granularity == "layer":
        per_block = [all(m.weight.requires_grad for _, m in b.attention + b.mlp) for b in parts]
        assert sum(per_block) == 2


def test_gpt2_and_bert_blocks():
    gpt2 = tiny("tiny-gpt2")
    select_hft(gpt2, HFTConfig(kind="hft"), SelectionContext())
    for block in block_parts(gpt2):
        assert [n for n, _ in block.attention] == ["attn.c_attn", "attn.c_proj"]
        assert sum(m.weight.requires_grad for _, m in block.attention) == 1
        assert sum(m.weight.requires_grad for _, m in block.mlp) == 1
    bert, _ = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-bert", task="sequence_classification", num_labels=2))
    select_hft(bert, HFTConfig(kind="hft"), SelectionContext())
    for block in block_parts(bert):
        assert len(block.attention) == 4 and sum(m.weight.requires_grad for _, m in block.attention) == 2
        assert len(block.mlp) == 2 and sum(m.weight.requires_grad for _, m in block.mlp) == 1


def test_unknown_architecture_lists_modules():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ff = torch.nn.Linear(4, 4)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])

    with pytest.raises(RecipeError, match=r"HFT cannot find attention and MLP matrices in Block; modules found: \['ff:Linear'\]"):
        block_parts(Net())


class OptimizerSize(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
        self.in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.trainable = {id(p) for p in model.parameters() if p.requires_grad}


def test_frozen_half_bit_identical_after_adamw_and_absent_from_optimizer(tmp_path):
    snapshot, sizes = Snapshot(), OptimizerSize()
    recipe = make_recipe(tmp_path, [{"name": "hft", "data": "sft", "trainable": "hft", "lr": 1e-2, "weight_decay": 0.1,
                                     "max_steps": 3, "batch_size": 2, "optim": "adamw_torch"}])
    result = run(recipe, [snapshot, sizes])
    assert sizes.in_optimizer == sizes.trainable
    after = dict(result.model.named_parameters())
    frozen = [n for n, p in after.items() if not p.requires_grad]
    assert frozen
    for name, old in snapshot.states[0].items():
        changed = not torch.equal(old, after[name])
        assert changed == after[name].requires_grad, name
    entry = result.manifest["stages"][0]
    assert 0.4 < entry["trainable_fraction"] < 1.0


class EpochMasks(TrainerCallback):
    """At each epoch end: parameters frozen during the epoch must equal their epoch-start values."""

    def __init__(self):
        self.masks, self.violations = [], []

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        self.start = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        mask = frozenset(n for n, p in model.named_parameters() if p.requires_grad)
        self.masks.append(mask)
        self.violations += [n for n, p in model.named_parameters() if n not in mask and not torch.equal(p, self.start[n])]


def test_per_epoch_redraw(tmp_path):
    epochs = EpochMasks()
    recipe = make_recipe(tmp_path, [{"name": "hft", "data": "sft", "lr": 1e-2, "weight_decay": 0.1, "epochs": 3,
                                     "batch_size": 2, "optim": "adamw_torch",
                                     "trainable": {"kind": "hft", "redraw": "per_epoch"}}])
    run(recipe, [epochs])
    assert len(epochs.masks) == 3 and len(set(epochs.masks)) > 1
    assert epochs.violations == []


def test_hft_redrawn_per_stage_in_a_two_stage_recipe(tmp_path):
    stages = [{"name": f"s{i}", "data": "sft", "trainable": "hft", "max_steps": 1, "batch_size": 2} for i in range(2)]
    masks = []

    class Mask(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            masks.append({n for n, p in model.named_parameters() if p.requires_grad})

    run(make_recipe(tmp_path, stages), [Mask()])
    assert masks[0] != masks[1]
