"""performance.precision: mixed precision keeps fp32 master weights of the trained tensors (frozen ones
stay in the storage dtype) and ends near the fp32 run; bf16-pure loses updates smaller than bf16's
spacing; settings this machine cannot run, or that contradict model.dtype, are one line."""
from __future__ import annotations

import pytest
import torch
from conftest import make_recipe, run
from transformers import TrainerCallback

from stagewise.errors import RecipeError

EVALUATION = {"target": [{"name": "t", "data": "sft", "metric": "contains", "max_new_tokens": 4}],
              "retention": [{"name": "r", "data": "sft", "metric": "perplexity"}]}


class Dtypes(TrainerCallback):
    """The dtypes of trainable and frozen tensors at every optimizer step."""

    def __init__(self) -> None:
        self.trainable: set[torch.dtype] = set()
        self.frozen: set[torch.dtype] = set()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        for param in model.parameters():
            (self.trainable if param.requires_grad else self.frozen).add(param.dtype)


def stage(lr: float = 1e-3, **extra: object) -> list[dict]:
    return [{"name": "s", "data": "sft", "lr": lr, "max_steps": 4, "batch_size": 2, "save_steps": 100, **extra}]


def weights(result) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in result.model.state_dict().items()}


def test_mixed_precision_trains_fp32_master_weights_and_stores_bf16(tmp_path):
    dtypes = Dtypes()
    recipe = make_recipe(tmp_path / "mixed", stage(trainable={"kind": "layers", "indices": [-1], "with_head": False}),
                         model={"model_name_or_path": "tiny-llama", "dtype": "bfloat16"},
                         performance={"precision": "bf16-mixed"}, evaluation=EVALUATION)
    result = run(recipe, callbacks=[dtypes])
    assert dtypes.trainable == {torch.float32} and dtypes.frozen == {torch.bfloat16}
    assert {p.dtype for p in result.model.parameters()} == {torch.bfloat16}  # handed on and saved in storage dtype
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "mixed/run/0-s/model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    assert result.manifest["stages"][0]["evaluation"]["target"]["t"]["n"] == 4  # scored under autocast


def test_mixed_precision_ends_near_the_fp32_run(tmp_path):
    start = weights(run(make_recipe(tmp_path / "s", stage(trainable="none"))))
    fp32 = run(make_recipe(tmp_path / "a", stage(), performance={"precision": "fp32"}))
    mixed = run(make_recipe(tmp_path / "b", stage(), performance={"precision": "bf16-mixed"}))
    assert {p.dtype for p in mixed.model.parameters()} == {torch.float32}  # tiny-llama is stored in fp32
    a, b = weights(fp32), weights(mixed)

    def norm(delta: dict[str, torch.Tensor]) -> float:
        return float(sum(t.float().pow(2).sum() for t in delta.values())) ** 0.5

    update = norm({k: a[k] - start[k] for k in a})
    apart = norm({k: a[k] - b[k] for k in a})
    assert 0 < apart < 0.1 * update  # bf16 compute steers the update a little, no more
    loss_a = fp32.manifest["stages"][0]["metrics"]["train_loss"]
    loss_b = mixed.manifest["stages"][0]["metrics"]["train_loss"]
    assert abs(loss_a - loss_b) < 0.01 * loss_a


def test_bf16_pure_loses_the_small_updates_that_mixed_keeps(tmp_path):
    """At lr 1e-6 an AdamW step moves a weight by ~1e-6, below half of bf16's spacing at any weight
    larger than ~5e-4 (tiny-llama's weights are ~N(0, 0.02)): in pure bf16 almost no weight changes;
    mixed accumulates the steps in fp32, and within 40 steps ten times as many stored bf16 weights
    have changed."""
    model = {"model_name_or_path": "tiny-llama", "dtype": "bfloat16"}
    base = run(make_recipe(tmp_path / "base", stage(lr=1e-6, trainable="none"), model=model,
                           performance={"precision": "bf16-mixed"}))
    pure = run(make_recipe(tmp_path / "pure", stage(lr=1e-6, max_steps=40), performance={"precision": "bf16-pure"}))
    mixed = run(make_recipe(tmp_path / "mixed", stage(lr=1e-6, max_steps=40), model=model,
                            performance={"precision": "bf16-mixed"}))
    start = weights(base)

    def changed(result) -> float:
        after = weights(result)
        total = sum(t.numel() for t in start.values())
        return sum(int((after[k] != start[k]).sum()) for k in start) / total

    assert {p.dtype for p in pure.model.parameters()} == {torch.bfloat16}
    assert changed(pure) < 0.05      # measured 0.017: only weights below ~5e-4 in magnitude moved
    assert changed(mixed) > 0.1      # measured 0.171: the fp32 masters crossed a bf16 rounding boundary
    assert changed(mixed) > 5 * changed(pure)


@pytest.mark.parametrize("performance, model, message", [
    ({"precision": "fp16-mixed"}, "tiny-llama", "fp16-mixed needs a GPU"),
    ({"precision": "fp32"}, {"model_name_or_path": "tiny-llama", "dtype": "bfloat16"}, "model.dtype is bfloat16"),
    ({"bf16": True, "precision": "fp32"}, "tiny-llama", "bf16: true means precision bf16-mixed"),
])
def test_precision_this_machine_cannot_run_is_one_line(tmp_path, performance, model, message):
    if torch.cuda.is_available() and "GPU" in message:
        pytest.skip("this machine has a GPU")
    with pytest.raises(RecipeError, match=message) as err:
        make_recipe(tmp_path, stage(), model=model, performance=performance)
    assert "\n" not in str(err.value) and "performance" in str(err.value)


def test_bf16_true_is_an_alias_of_bf16_mixed(tmp_path):
    recipe = make_recipe(tmp_path, stage(), performance={"bf16": True})
    assert recipe.performance.precision == "bf16-mixed"
