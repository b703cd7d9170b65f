"""MoFO (TMLR 2025): fraction 1.0 is torch's AdamW bit for bit, a fraction < 1 follows the reference's
step (YChen-zzz/MoFO ``AdamW_MoFO.step``) and moves exactly ⌊fraction·numel⌋ entries of each matrix,
and bad settings are one line at validate."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import make_recipe, run

from stagewise.errors import RecipeError
from stagewise.strategies.mofo import MoFO, momentum_mask

SHAPES = [(6, 5), (5,), (4, 3, 2)]


def params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]


def set_gradients(tensors: list[torch.nn.Parameter], step: int) -> None:
    generator = torch.Generator().manual_seed(100 + step)
    for tensor in tensors:
        tensor.grad = torch.randn(tensor.shape, generator=generator)


def reference_step(tensors, state, lr, weight_decay, fraction, beta1=0.9, beta2=0.999, eps=1e-8):
    """The reference's AdamW_MoFO.step, retyped: one group per tensor, filtered unless 1-D (the
    reference's 'bias'/'norm' names), decoupled decay on every entry."""
    for index, p in enumerate(tensors):
        s = state.setdefault(index, {"iteration": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
        s["iteration"] += 1
        p.data.mul_(1 - lr * weight_decay)
        s["m"].lerp_(p.grad, 1 - beta1)
        s["v"].mul_(beta2).addcmul_(p.grad, p.grad.conj(), value=1 - beta2)
        stepsize = lr / (1 - beta1 ** s["iteration"])
        h = (s["v"].sqrt() / math.sqrt(1 - beta2 ** s["iteration"])).add_(eps)
        if p.ndim >= 2:
            k = int(p.numel() * fraction)
            threshold = torch.topk(s["m"].abs().view(-1), k)[0].min()
            p.data.addcdiv_(torch.where(s["m"].abs() >= threshold, s["m"], 0), h, value=-stepsize)
        else:
            p.data.addcdiv_(s["m"], h, value=-stepsize)


def test_fraction_one_is_adamw_bit_for_bit():
    ours, theirs = params(), params()
    mofo = MoFO([{"params": ours, "weight_decay": 0.1}], lr=1e-2, fraction=1.0)
    adamw = torch.optim.AdamW([{"params": theirs, "weight_decay": 0.1}], lr=1e-2, foreach=False, fused=False)
    for step in range(6):
        set_gradients(ours, step), set_gradients(theirs, step)
        mofo.step(), adamw.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_a_fraction_follows_the_reference_step():
    ours, theirs = params(), params()
    mofo = MoFO([{"params": ours, "weight_decay": 0.05}], lr=1e-2, fraction=0.3)
    state: dict = {}
    for step in range(6):
        set_gradients(ours, step), set_gradients(theirs, step)
        mofo.step()
        with torch.no_grad():
            reference_step(theirs, state, 1e-2, 0.05, 0.3)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=0, atol=1e-7), (a - b).abs().max()
    for index, p in enumerate(ours):  # the moments are the reference's, entry for entry
        assert torch.equal(mofo.state[p]["exp_avg"], state[index]["m"])


def test_each_step_moves_exactly_the_fraction_of_every_matrix():
    tensors = params()
    mofo = MoFO([{"params": tensors, "weight_decay": 0.0}], lr=1e-2, fraction=0.25)
    for step in range(4):
        before = [t.detach().clone() for t in tensors]
        set_gradients(tensors, step)
        mofo.step()
        for old, new in zip(before, tensors):
            changed = int((old != new).sum())
            expected = max(1, int(new.numel() * 0.25)) if new.ndim >= 2 else new.numel()
            assert changed == expected, (new.shape, changed, expected)
            if new.ndim >= 2:  # and they are the entries of largest momentum
                assert torch.equal(old != new, momentum_mask(mofo.state[new]["exp_avg"], 0.25))


def test_a_tiny_matrix_still_moves_one_entry():
    assert int(momentum_mask(torch.tensor([[0.1, -0.4], [0.2, 0.0]]), 0.01).sum()) == 1


def test_a_mofo_stage_trains_and_resumes_exactly(tmp_path):
    from conftest import CrashAfterSave

    stage = {"name": "s", "data": "sft", "optimizer": {"kind": "mofo", "fraction": 0.1}, "lr": 1e-2,
             "max_steps": 4, "save_steps": 2, "batch_size": 2, "weight_decay": 0.0}
    reference = run(make_recipe(tmp_path / "a", [stage]))
    base = run(make_recipe(tmp_path / "base", [{**stage, "trainable": "none"}]))
    with pytest.raises(KeyboardInterrupt):
        run(make_recipe(tmp_path / "b", [stage]), [CrashAfterSave(step=2)])
    resumed = run(make_recipe(tmp_path / "b", [stage]))
    assert resumed.manifest["stages"][0]["resumed_from"] == "checkpoint-2"
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    weight = "model.layers.0.mlp.up_proj.weight"  # 4 steps of 10% each move at most 40% of a matrix
    moved = (reference.model.state_dict()[weight] != base.model.state_dict()[weight]).float().mean()
    assert 0.1 <= float(moved) <= 0.4


@pytest.mark.parametrize("stage, expected", [
    ({"optimizer": {"kind": "mofo", "fraction": 0}}, r"stages\.0\.optimizer\.fraction"),
    ({"optimizer": {"kind": "mofo", "fraction": 1.5}}, r"stages\.0\.optimizer\.fraction"),
    ({"optimizer": {"kind": "mofo"}, "optim": "adamw_torch"}, r"stages\.0\.optim: names a transformers optimizer"),
    ({"optimizer": "mofa"}, r"unknown optimizer 'mofa' \(did you mean 'mofo'\?\)"),
])
def test_bad_mofo_settings_are_one_line(tmp_path, stage, expected):
    with pytest.raises(RecipeError, match=expected) as err:
        make_recipe(tmp_path, [{"name": "s", "data": "sft", **stage}])
    assert "\n" not in str(err.value)


def test_mofo_on_fsdp_shards_is_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"optimizer 'mofo' does not run on FSDP2 shards") as err:
        make_recipe(tmp_path, [{"name": "s", "data": "sft", "optimizer": "mofo"}], distributed={"fsdp": True})
    assert "\n" not in str(err.value)


def test_mofo_trains_a_qlora_adapter_and_moves_a_fraction_of_each_adapter_matrix(tmp_path):
    pytest.importorskip("bitsandbytes")
    from conftest import Snapshot

    stage = {"name": "s", "data": "sft", "lr": 1e-2, "max_steps": 1, "batch_size": 2,
             "trainable": {"kind": "lora", "lora_rank": 4}, "optimizer": {"kind": "mofo", "fraction": 0.25}}
    snapshot = Snapshot()
    result = run(make_recipe(tmp_path, [stage], model={"model_name_or_path": "tiny-llama",
                                                       "quantization": {"bits": 4}}), [snapshot])
    before = snapshot.states[0]
    after = dict(result.model.named_parameters())
    moved = {name: int((before[name] != after[name].detach()).sum()) for name in before
             if after[name].requires_grad and after[name].ndim == 2}
    assert moved and all(count == max(1, int(before[name].numel() * 0.25)) or count == 0
                         for name, count in moved.items())  # one step: exactly the top quarter (B starts at 0)
    assert any(count > 0 for count in moved.values())
