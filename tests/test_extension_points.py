"""Merge methods and data formats extend like every other point: one registration, and a recipe
can name the new entry (validated, loaded, trained, merged) with no other code touched."""
from __future__ import annotations

import pytest
import torch
from conftest import make_recipe, run

from stagewise.config import ModelConfig
from stagewise.data.tokenize import encode_lm_rows
from stagewise.errors import RecipeError
from stagewise.models import load_model_and_tokenizer
from stagewise.registry import DATA_FORMATS, MERGE_METHODS, FormatTraits

QA_ROWS = [{"question": f"Who is person {i}?", "answer": f"Name{i}"} for i in range(6)]


@pytest.fixture
def qa_format():
    traits = FormatTraits(fields=("question", "answer"), answer_field="answer", has_prompt=True, generative=True)

    @DATA_FORMATS.register("qa", traits=traits)
    def qa_segments(row, tokenizer, template):
        return [(f"Q: {row['question']}\nA: ", False), (row["answer"], True)], True

    yield
    DATA_FORMATS._entries.pop("qa")


@pytest.fixture
def midpoint_method():
    @MERGE_METHODS.register("midpoint")
    def midpoint(alpha, tuned, anchor):
        return (anchor + tuned[0]) / 2  # alpha ignored: always halfway

    yield
    MERGE_METHODS._entries.pop("midpoint")


def test_a_registered_data_format_loads_encodes_and_trains(tmp_path, qa_format):
    _, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    example = encode_lm_rows(QA_ROWS[:1], "qa", tokenizer, "auto", False, 128)[0]
    trained = [token for token, label in zip(example["input_ids"], example["labels"]) if label != -100]
    answer = tokenizer("Name0", add_special_tokens=False)["input_ids"]
    assert trained[: len(answer)] == answer  # only the answer (and the end of sequence) is trained
    recipe = make_recipe(tmp_path, [{"name": "sft", "data": "qa", "lr": 1e-3}],
                         datasets={"qa": {"format": "qa", "rows": QA_ROWS}})
    result = run(recipe)
    assert result.manifest["stages"][0]["train_rows"] == 6


def test_a_registered_format_with_traits_is_probed_recovered_kl_measured_and_replayed(tmp_path, qa_format):
    """Its traits alone (answer field, prompt, generative) let the generation and likelihood probes,
    the knowledge-vs-format split, the KL predictor and on-policy replay take it: no other edit."""
    datasets = {"qa": {"format": "qa", "rows": QA_ROWS}, "more": {"format": "qa", "rows": QA_ROWS[:4]}}
    evaluation = {"target": [{"name": "said", "data": "qa", "metric": "contains", "max_new_tokens": 4}],
                  "retention": [{"name": "lp", "data": "qa", "metric": "answer_logprob", "recovery_shots": 2}],
                  "kl_prompts": 4, "kl_tokens": 4}
    stages = [{"name": "sft", "data": "qa", "lr": 1e-3, "max_steps": 2, "batch_size": 2},
              {"name": "replay", "data": {"more": 1.0, "qa": 0.5}, "lr": 1e-3, "max_steps": 2, "batch_size": 2,
               "transforms": [{"kind": "on_policy_replay", "reward_rule": "contains", "max_new_tokens": 4}]}]
    result = run(make_recipe(tmp_path, stages, datasets=datasets, evaluation=evaluation))
    first, second = result.manifest["stages"]
    assert first["evaluation"]["target"]["said"]["n"] == 6
    assert "lp@2shot" in first["evaluation"]["recovery"]
    assert first["kl_to_entering"]["prompts"] == 4
    replayed = second["transforms"][0]
    assert replayed["rows"] == 6 and replayed["kept"] + replayed["rejected"] == 6


def test_an_unknown_format_is_one_line(tmp_path):
    with pytest.raises(RecipeError, match=r"datasets.qa.format: unknown data format 'qa'; expected one of: chat"):
        make_recipe(tmp_path, [{"name": "sft", "data": "qa"}], datasets={"qa": {"format": "qa", "rows": QA_ROWS}})


def test_a_registered_merge_method_merges(tmp_path, midpoint_method):
    stages = [{"name": "sft", "data": "sft", "lr": 1e-2, "epochs": 1},
              {"name": "mid", "data": "sft", "trainable": "none", "merge": {"method": "midpoint", "alpha": 0.9}}]
    result = run(make_recipe(tmp_path, stages))
    from safetensors.torch import load_file

    base, _ = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    tuned = load_file(str(tmp_path / "run/0-sft/model.safetensors"))
    merged = load_file(str(tmp_path / "run/1-mid/model.safetensors"))
    name = next(n for n in merged if n.endswith("q_proj.weight"))
    expected = (base.state_dict()[name] + tuned[name]) / 2
    assert not torch.equal(tuned[name], base.state_dict()[name])
    assert torch.allclose(merged[name], expected, atol=1e-6)
    assert result.manifest["stages"][1]["merge"]["method"] == "midpoint"
