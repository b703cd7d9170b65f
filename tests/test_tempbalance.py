"""TempBalance faithfulness: Hill estimator, both LR maps, per-layer groups riding the schedule."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import CrashAfterSave, Snapshot, make_recipe, run
from transformers import TrainerCallback

from stagewise.strategies.tempbalance.esd import (
    block_sigmoid_multipliers,
    eigenvalues,
    hill_alpha,
    linear_multipliers,
    sigmoid_factor,
)


def pareto(alpha: float, n: int, seed: int = 0) -> torch.Tensor:
    """Samples with density ∝ λ^(−alpha) for λ ≥ 1 (Pareto, shape alpha − 1)."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u.pow(-1.0 / (alpha - 1.0))


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_hill_recovers_pareto_exponent(alpha):
    assert hill_alpha(pareto(alpha, 20_000)) == pytest.approx(alpha, abs=0.1)


@pytest.mark.parametrize("alpha", [2.0, 2.5])
def test_hill_recovers_lomax_tail_exponent(alpha):
    """Lomax density ∝ (1 + λ)^(−alpha) is a power law only in its tail, so xmin sits at the
    top 2%. Measured: lighter tails are biased low at N=20k (alpha 3 -> 2.88, alpha 4 -> 3.44),
    which is the Hill estimator's known finite-sample bias, so they are not asserted."""
    lomax = pareto(alpha, 20_000, seed=1) - 1.0 + 1e-12
    assert hill_alpha(lomax, xmin_pos=1.02) == pytest.approx(alpha, abs=0.1)


def test_hill_is_scale_invariant_and_order_free():
    eigs = pareto(3.0, 5_000)
    assert hill_alpha(eigs * 1234.5) == pytest.approx(hill_alpha(eigs), rel=1e-9)
    assert hill_alpha(eigs.flip(0)) == pytest.approx(hill_alpha(eigs), rel=1e-12)


def test_hill_formula_by_hand():
    eigs = torch.tensor([1.0, 2.0, 4.0, 8.0])
    # xmin_pos=2: i=2, n=2, alpha = 1 + 2 / (ln4 + ln8 - 2 ln4) = 1 + 2 / ln 2
    assert hill_alpha(eigs) == pytest.approx(1 + 2 / math.log(2))


def test_eigenvalues_are_squared_singular_values():
    weight = torch.randn(60, 80, generator=torch.Generator().manual_seed(0))
    expected = torch.linalg.eigvalsh(weight @ weight.T)
    assert torch.allclose(eigenvalues(weight), torch.sort(expected).values, rtol=1e-4, atol=1e-3)
    conv = torch.randn(8, 4, 3, 3)
    assert eigenvalues(conv).numel() == 9 * 4


def test_linear_map_extremes():
    multipliers = linear_multipliers({"a": 2.0, "b": 3.0, "c": 6.0})
    assert multipliers == pytest.approx({"a": 0.5, "b": 0.75, "c": 1.5})


def test_block_sigmoid_multipliers_match_the_paper_values():
    values = [10 ** sigmoid_factor(d, s_min=2, s_max=1, temperature=10) for d in (-1, -0.1, 0, 0.1, 1)]
    assert values == pytest.approx([0.100, 0.345, 1.0, 1.702, 3.162], abs=1e-3)
    multipliers = block_sigmoid_multipliers({0: 2.0, 1: 3.0})  # mean 2.5: d = -0.5, +0.5
    assert multipliers[0] == pytest.approx(10 ** (2 * (1 / (1 + math.exp(5)) - 0.5)))
    assert multipliers[1] == pytest.approx(10 ** (1 / (1 + math.exp(-5)) - 0.5))


class GroupLrs(TrainerCallback):
    """Records (η_t from the schedule, {group key: lr}) after every step."""

    def __init__(self, base_lr):
        self.base_lr, self.records = base_lr, []

    def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        scale = lr_scheduler.lr_lambdas[0](lr_scheduler.last_epoch)
        self.records.append((self.base_lr * scale, {g.get("tb_key"): g["lr"] for g in optimizer.param_groups}))


def tb_stage(**rule):
    return {"name": "tb", "data": "sft", "lr": 1e-3, "max_steps": 6, "batch_size": 2, "warmup_ratio": 0.3,
            "lr_rule": {"kind": "tempbalance", **rule}}


@pytest.mark.parametrize("lr_map", ["linear", "block_sigmoid"])
def test_per_layer_lrs_follow_the_schedule(tmp_path, lr_map):
    recorder = GroupLrs(1e-3)
    run(make_recipe(tmp_path, [tb_stage(lr_map=lr_map, esd_interval=2)]), [recorder])
    eta, lrs = recorder.records[2]
    keyed = {k: v for k, v in lrs.items() if k}
    assert len(set(round(v / eta, 9) for v in keyed.values())) > 1  # layers really get different LRs
    assert lrs[None] == pytest.approx(eta)                         # ineligible tensors: the scheduled LR
    if lr_map == "linear":
        ratios = sorted(v / eta for v in keyed.values())
        assert ratios[0] == pytest.approx(0.5) and ratios[-1] == pytest.approx(1.5)
    log = [json.loads(line) for line in (tmp_path / "run/0-tb/tempbalance.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [0, 2, 4, 6]
    assert all(entry["alpha"] for entry in log)


def test_multipliers_survive_schedule_steps(tmp_path):
    """Within an epoch (no recomputation) every group's LR / η_t stays put while η_t moves."""
    recorder = GroupLrs(1e-3)
    run(make_recipe(tmp_path, [tb_stage()]), [recorder])  # 2 steps per epoch; esd at each epoch start
    (eta1, first), (eta2, second) = recorder.records[0], recorder.records[1]
    assert eta1 != pytest.approx(eta2)
    for key in first:
        if key:
            assert second[key] / eta2 == pytest.approx(first[key] / eta1, rel=1e-6)


def test_hft_with_tempbalance_composes(tmp_path):
    snapshot = Snapshot()
    stage = {**tb_stage(), "trainable": "hft", "weight_decay": 0.1, "optim": "adamw_torch"}
    result = run(make_recipe(tmp_path, [stage]), [snapshot])
    for name, param in result.model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(snapshot.states[0][name], param), name


def test_tempbalance_resume_equals_uninterrupted(tmp_path):
    stage = {**tb_stage(esd_interval=2), "save_steps": 3}
    reference = run(make_recipe(tmp_path / "a", [stage]))
    with pytest.raises(KeyboardInterrupt):
        run(make_recipe(tmp_path / "b", [stage]), [CrashAfterSave(step=3)])
    resumed = run(make_recipe(tmp_path / "b", [stage]))
    for name, tensor in reference.model.state_dict().items():
        assert torch.allclose(tensor, resumed.model.state_dict()[name], atol=1e-7), name


def reference_multipliers(model: torch.nn.Module, xmin_pos: float = 2.0, eigs_thresh: int = 50,
                          lr_min_ratio: float = 0.5, lr_max_ratio: float = 1.5) -> dict[str, float]:
    """The reference's rule, written out independently (YefanZhou/TempBalance ``Tempbalance``:
    ``net_esd_estimator`` over every nn.Linear/Conv layer in module order, then
    ``build_optimizer_param_group``: drop the first and the last row, drop layers with fewer
    than ``eigs_thresh`` eigenvalues, ``tb_linear_map`` = np.interp(alpha, [min, max], [0.5, 1.5])).
    GPT-2's Conv1D (a linear layer stored transposed) counts as a linear layer here, as in stagewise."""
    import numpy as np
    from transformers.pytorch_utils import Conv1D

    rows = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, Conv1D)):
            eigs = np.sort(np.square(np.linalg.svd(module.weight.detach().double().numpy(), compute_uv=False)))
            i = int(len(eigs) / xmin_pos)
            with np.errstate(divide="ignore"):  # a 2-class head has one eigenvalue above xmin (dropped below)
                alpha = 1 + (len(eigs) - i) / np.sum(np.log(eigs[i:] / eigs[i]))
            rows.append((name, alpha, len(eigs)))
    rows = [row for row in rows[1:-1] if row[2] >= eigs_thresh]
    alphas = np.array([alpha for _, alpha, _ in rows])
    lrs = np.interp(alphas, [alphas.min(), alphas.max()], [lr_min_ratio, lr_max_ratio])
    return {name: float(lr) for (name, _, _), lr in zip(rows, lrs)}


@pytest.mark.parametrize("model_name, task", [("tiny-llama", "causal_lm"), ("tiny-gpt2", "causal_lm"),
                                              ("tiny-bert", "sequence_classification")])
def test_default_layer_set_and_multipliers_match_the_reference_rule(model_name, task):
    from stagewise.config import ModelConfig
    from stagewise.models import load_model_and_tokenizer
    from stagewise.protocols import LrRuleContext
    from stagewise.strategies.tempbalance import TempBalance, TempBalanceConfig

    model, _ = load_model_and_tokenizer(ModelConfig(model_name_or_path=model_name, task=task, num_labels=2
                                                    if task == "sequence_classification" else None))
    torch.manual_seed(0)
    with torch.no_grad():  # a spread of spectra, so the linear map has a range to interpolate over
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(torch.rand(()) * 3 + 0.1).add_(torch.randn_like(param) * torch.rand(()))
    config = TempBalanceConfig(kind="tempbalance")
    assert config.skip_first_last  # the reference's default
    balance = TempBalance(model, config, LrRuleContext(base_lr=1.0))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = balance.split_groups(model, [{"params": params, "weight_decay": 0.0}])
    ours = {g["tb_key"]: g["lr"] for g in groups if g["tb_key"]}
    expected = reference_multipliers(model)
    assert ours.keys() == expected.keys()
    assert ours == pytest.approx(expected, rel=1e-5)
    names = [name for name, module in model.named_modules() if isinstance(getattr(module, "weight", None), torch.nn.Parameter)
             and module.weight.dim() == 2 and not isinstance(module, torch.nn.Embedding)]
    assert names[0] not in ours and names[-1] not in ours  # the first layer and the head keep the base LR
    if task == "sequence_classification":  # BERT: the last layer is the classifier, the pooler stays in
        assert names[-1] == "classifier" and "bert.pooler.dense" in ours
