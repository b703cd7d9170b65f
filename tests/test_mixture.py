"""Weighted data mixing: counts per epoch by hand, the sampler's draw, a stage trained on a
mixture (realised counts in the manifest, steps per epoch), resume, and one-line errors."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from conftest import INSTRUCTION_ROWS, CrashAfterSave, make_recipe, run

from stagewise.data.mixture import MixtureSampler, mixture_counts
from stagewise.errors import RecipeError

DATASETS = {"sft": {"format": "instruction", "template": "alpaca", "rows": INSTRUCTION_ROWS},
            "general": {"format": "instruction", "template": "alpaca",
                        "rows": [{"instruction": f"general {i}", "output": f"answer {i}"} for i in range(10)]}}


def test_counts_per_epoch_by_hand():
    assert mixture_counts([120, 500], [1.0, 0.3]) == [120, 36]   # 36 / 156 = 23% replay
    assert mixture_counts([10, 3, 50], [2.0, 2.0, 0.0]) == [10, 10, 0]


def test_sampler_draws_the_first_dataset_whole_and_the_rest_afresh_each_epoch():
    sampler = MixtureSampler(sizes=[4, 10, 3], counts=[4, 5, 7], seed=1)
    assert len(sampler) == 16
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert indices == sampler.epoch_indices(epoch)  # deterministic: a resumed run sees the same rows
        counts = Counter(indices)
        assert sorted(i for i in counts if i < 4) == [0, 1, 2, 3] and all(counts[i] == 1 for i in range(4))
        second = [i for i in indices if 4 <= i < 14]
        assert len(second) == 5 and len(set(second)) == 5          # without replacement within its size
        third = Counter(i for i in indices if i >= 14)
        assert sum(third.values()) == 7 and sorted(third.values()) == [2, 2, 3]  # 2 whole copies + 1 drawn
        epochs.append(sorted(second))
    assert len({tuple(e) for e in epochs}) > 1  # a fresh draw each epoch


def stage(**extra):
    return {"name": "mix", "data": {"sft": 1.0, "general": 0.5}, "lr": 1e-2, "epochs": 2, "batch_size": 2, **extra}


def test_stage_trains_on_the_mixture_and_records_it(tmp_path):
    result = run(make_recipe(tmp_path, [stage()], datasets=DATASETS))
    entry = result.manifest["stages"][0]
    assert entry["data_mixture"] == {"sft": {"rows": 4, "weight": 1.0, "rows_per_epoch": 4},
                                     "general": {"rows": 10, "weight": 0.5, "rows_per_epoch": 2}}
    state = json.loads((tmp_path / "run/0-mix/trainer_state.json").read_text())
    assert state["global_step"] == 6  # 2 epochs x (4 + 2 rows) / batch 2


def test_mixture_resume_equals_uninterrupted(tmp_path):
    reference = run(make_recipe(tmp_path / "a", [stage(save_steps=2)], datasets=DATASETS))
    with pytest.raises(KeyboardInterrupt):
        run(make_recipe(tmp_path / "b", [stage(save_steps=2)], datasets=DATASETS), [CrashAfterSave(step=4)])
    resumed = run(make_recipe(tmp_path / "b", [stage(save_steps=2)], datasets=DATASETS))
    assert resumed.manifest["stages"][0]["resumed_from"] == "checkpoint-4"
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


@pytest.mark.parametrize("data, message", [
    ({"sft": 1.0, "general": -0.2}, "weight of 'general' is negative"),
    ({"sft": 0.0, "general": 0.0}, "the first dataset ('sft') anchors each epoch, so its weight must be > 0"),
    ({"sft": 1.0, "nope": 0.2}, "stages.0.data: unknown dataset 'nope'"),
])
def test_bad_weights_are_one_line(tmp_path, data, message):
    with pytest.raises(RecipeError) as error:
        make_recipe(tmp_path, [stage(data=data)], datasets=DATASETS)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_trainer_that_batches_rows_itself_refuses_weights(tmp_path):
    pref = {name: {"format": "preference", "rows": [{"prompt": "p", "chosen": "a", "rejected": "b"}]} for name in "xy"}
    with pytest.raises(RecipeError, match="trainer 'dpo' builds its own batches"):
        make_recipe(tmp_path, [{"name": "d", "data": {"x": 1.0, "y": 1.0}, "trainer": "dpo"}], datasets=pref)


def test_a_dataset_a_transform_emptied_draws_no_rows():
    assert mixture_counts([10, 0, 4], [1.0, 0.5, 0.5]) == [10, 0, 5]
