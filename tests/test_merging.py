"""WiSE-FT and task arithmetic as a stage: formulas, the endpoints bit for bit, dev selection
recorded in the manifest, a LoRA stage merged, and one-line errors."""
from __future__ import annotations

import pytest
import torch
from conftest import INSTRUCTION_ROWS, make_recipe, run
from transformers import AutoModelForCausalLM

from stagewise.errors import DataError, RecipeError
from stagewise.merging import MergeConfig, check_same_shapes, merged_weights

DATASETS = {"sft": {"format": "instruction", "template": "alpaca", "rows": INSTRUCTION_ROWS},
            "dev": {"format": "instruction", "template": "alpaca", "rows": INSTRUCTION_ROWS[:2]}}
SFT = {"name": "sft", "data": "sft", "lr": 5e-2, "max_steps": 3, "batch_size": 2}


def test_formulas_by_hand():
    base, tuned, other = ({"w": torch.tensor([1.0, 2.0]), "ids": torch.tensor([7])},
                          {"w": torch.tensor([3.0, 6.0]), "ids": torch.tensor([7])},
                          {"w": torch.tensor([1.0, 4.0]), "ids": torch.tensor([7])})
    wise = merged_weights(MergeConfig(alpha=0.25), 0.25, [tuned], base)
    assert wise["w"].tolist() == [1.5, 3.0] and wise["ids"].tolist() == [7]  # 0.75*base + 0.25*tuned
    arithmetic = merged_weights(MergeConfig(method="task_arithmetic", alpha=2.0), 0.5, [tuned, other], base)
    assert arithmetic["w"].tolist() == [2.0, 5.0]  # base + 0.5 * ((3-1, 6-2) + (1-1, 4-2))


def saved(folder):
    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


@pytest.mark.parametrize("alpha, equals", [(0.0, "base"), (1.0, "sft")])
def test_endpoints_are_the_base_and_the_fine_tuned_model_bit_for_bit(tmp_path, alpha, equals):
    stages = [SFT, {"name": "wise", "data": "sft", "trainable": "none", "merge": {"with": "base", "alpha": alpha}}]
    run(make_recipe(tmp_path, stages, datasets=DATASETS))
    merged = saved(tmp_path / "run/1-wise")
    reference = (AutoModelForCausalLM.from_pretrained(tmp_path / "run/0-sft").state_dict() if equals == "sft" else None)
    if equals == "base":
        from stagewise.config import ModelConfig
        from stagewise.models import load_model_and_tokenizer

        reference = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))[0].state_dict()
    for name, tensor in merged.items():
        assert torch.equal(tensor, reference[name]), name


def test_alpha_chosen_on_dev_and_every_score_recorded(tmp_path):
    merge = {"with": "base", "alpha": [0.0, 0.5, 1.0], "select": {"data": "dev", "metric": "perplexity"}}
    result = run(make_recipe(tmp_path, [SFT, {"name": "wise", "data": "sft", "trainable": "none", "merge": merge}],
                             datasets=DATASETS))
    record = result.manifest["stages"][1]["merge"]
    assert set(record["dev_scores"]) == {"0", "0.5", "1"}
    best = max(record["dev_scores"], key=record["dev_scores"].get)
    assert record["alpha"] == float(best) and record["method"] == "linear" and record["with"] == "base"
    assert result.manifest["stages"][1]["trainable_params"] == 0
    from stagewise.config import ModelConfig
    from stagewise.models import load_model_and_tokenizer

    base = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))[0].state_dict()
    tuned, merged = saved(tmp_path / "run/0-sft"), saved(tmp_path / "run/1-wise")
    alpha = record["alpha"]
    for name, tensor in merged.items():
        assert torch.allclose(tensor, (1 - alpha) * base[name] + alpha * tuned[name], atol=1e-6), name


def test_a_lora_stage_is_merged_into_plain_weights(tmp_path):
    lora = {**SFT, "trainable": {"kind": "lora", "lora_rank": 2}}
    stages = [lora, {"name": "wise", "data": "sft", "trainable": "none", "merge": {"with": "base", "alpha": 1.0}}]
    result = run(make_recipe(tmp_path, stages, datasets=DATASETS))
    assert not (tmp_path / "run/1-wise/adapter").exists()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "run/1-wise")
    batch = result.tokenizer(["hello"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(plain(**batch).logits, result.model(**batch).logits, atol=1e-5)


@pytest.mark.parametrize("merge, message", [
    ({"with": "base", "alpha": 1.5}, "stages.1.merge: alpha: linear interpolates, so every alpha must lie in [0, 1]"),
    ({"with": "base", "alpha": 0.5, "method": "lineer"},
     "stages.1.merge: method: unknown merge method 'lineer' (did you mean 'linear'?); expected one of: dare_linear,"),
    ({"with": "later", "alpha": 0.5}, "stages.1.merge.with: 'later' is neither 'base' nor an earlier stage"),
    ({"with": "base", "alpha": [0.2, 0.8]}, "select: several alpha values need a dev set"),
    ({"with": "base", "alpha": [0.2, 0.8], "select": {"data": "dev", "metric": "accuracy"}},
     "stages.1.merge.select.metric: metric 'accuracy' takes data of format classification"),
    ({"with": "base", "alpha": 0.5, "add": ["sft"]}, "add: linear interpolates two models; several task vectors need"),
])
def test_bad_merge_is_one_line(tmp_path, merge, message):
    stages = [SFT, {"name": "wise", "data": "sft", "trainable": "none", "merge": merge}, {"name": "later", "data": "sft"}]
    with pytest.raises(RecipeError) as error:
        make_recipe(tmp_path, stages, datasets=DATASETS)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_models_of_different_shapes_do_not_merge():
    with pytest.raises(DataError, match=r"merge: with 'base' has parameter 'w' of shape \(3,\), this model \(2,\)"):
        check_same_shapes({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, "with 'base'")
    with pytest.raises(DataError, match="different architecture"):
        check_same_shapes({"w": torch.zeros(2)}, {"v": torch.zeros(2)}, "with 'base'")


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear"])
def test_mergekit_methods_keep_a_density_share_of_the_task_vector(tmp_path, method):
    from stagewise.config import ModelConfig
    from stagewise.models import load_model_and_tokenizer

    merge = {"method": method, "with": "base", "alpha": 1.0, "density": 0.5}
    stages = [SFT, {"name": "merged", "data": "sft", "trainable": "none", "merge": merge}]
    result = run(make_recipe(tmp_path, stages, datasets=DATASETS))
    assert result.manifest["stages"][1]["merge"]["method"] == method
    base = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))[0].state_dict()
    tuned, merged = saved(tmp_path / "run/0-sft"), saved(tmp_path / "run/1-merged")
    name = "model.layers.0.self_attn.q_proj.weight"
    task, kept = tuned[name] - base[name], merged[name] - base[name]
    share = float((kept != 0).float().mean())
    assert 0.35 < share < 0.65  # about half of the task vector's entries survive
    if method == "ties":  # TIES keeps the largest entries as they were (one model: no sign conflict)
        survivors = kept != 0
        assert torch.allclose(kept[survivors], task[survivors], atol=1e-6)
        assert task[survivors].abs().min() >= task[~survivors].abs().max() - 1e-7
