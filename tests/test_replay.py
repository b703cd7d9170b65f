"""Self-replay: the entering model's own greedy answers to general prompts join the stage's data."""
from __future__ import annotations

import json

import pytest
from conftest import INSTRUCTION_ROWS, make_recipe, run

from stagewise.config import ModelConfig
from stagewise.data.tokenize import encode_prompt
from stagewise.errors import RecipeError
from stagewise.generation import SamplingConfig, generate
from stagewise.models import load_model_and_tokenizer

DATASETS = {"sft": {"format": "instruction", "template": "alpaca", "rows": INSTRUCTION_ROWS},
            "general": {"format": "instruction", "template": "alpaca",
                        "rows": [{"instruction": f"Tell me about topic {i}", "output": "unused"} for i in range(6)]}}


def test_replay_rows_are_the_entering_models_own_answers(tmp_path):
    replay = {"kind": "self_replay", "prompts": "general", "ratio": 0.5, "max_new_tokens": 6}
    stage = {"name": "s", "data": "sft", "transforms": [replay], "max_steps": 2, "batch_size": 2}
    result = run(make_recipe(tmp_path, [stage], datasets=DATASETS))
    [report] = result.manifest["stages"][0]["transforms"]
    rows = [json.loads(line) for line in (tmp_path / "run/0-s/self-replay-sft.jsonl").read_text().splitlines()]
    assert report["rows"] == 4 and report["replay_rows"] == len(rows) == 2 - report["empty_answers"]
    assert result.manifest["stages"][0]["train_rows"] == 4 + len(rows)
    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    ids = [encode_prompt({"instruction": row["instruction"], "output": ""}, "instruction", tokenizer, "alpaca")
           for row in rows]
    own = [texts[0].strip() for texts in generate(model, tokenizer, ids, SamplingConfig(max_new_tokens=6))]
    assert [row["output"] for row in rows] == own and all(row["self_replay"] for row in rows)
    assert all(row["instruction"].startswith("Tell me about topic") for row in rows)


@pytest.mark.parametrize("replay, message", [
    ({"kind": "self_replay", "prompts": "nope"}, "stages.0.transforms.0.prompts: unknown dataset 'nope'"),
    ({"kind": "self_replay", "prompts": "general", "ratio": 0}, "stages.0.transforms.0.ratio: Input should be greater than 0"),
    ({"kind": "self_replay"}, "stages.0.transforms.0.prompts: required key is missing"),
])
def test_bad_replay_is_one_line(tmp_path, replay, message):
    with pytest.raises(RecipeError) as error:
        make_recipe(tmp_path, [{"name": "s", "data": "sft", "transforms": [replay]}], datasets=DATASETS)
    assert message in str(error.value) and "\n" not in str(error.value)
