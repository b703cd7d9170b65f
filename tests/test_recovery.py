"""Knowledge vs format (recovery_shots): a retention probe is also scored with k other items of the
same probe and their answers in front of each item (rendered as the probe renders one item), the
run report splits the drop, and bad settings are one line."""
from __future__ import annotations

import pytest
from conftest import make_recipe, run

from stagewise.config import DatasetConfig, EvalTaskConfig, ModelConfig
from stagewise.data.tokenize import prompt_text, row_segments
from stagewise.errors import RecipeError
from stagewise.eval.recovery import with_examples
from stagewise.eval.suite import item_ids
from stagewise.models import load_model_and_tokenizer

ROWS = [{"instruction": f"What is {i} plus {i}?", "output": f"{2 * i}"} for i in range(6)]


def test_examples_are_other_items_rendered_as_the_probe_renders_them():
    _, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    cfg = DatasetConfig(format="instruction", template="alpaca", rows=ROWS)
    task = EvalTaskConfig(name="sums", data="d", metric="exact_match", recovery_shots=2)
    ids = item_ids(ROWS)
    shown_cfg, shown = with_examples(task, cfg, ROWS, ids, tokenizer)
    full = ["".join(text for text, _ in row_segments(row, "instruction", tokenizer, "alpaca")[0]) + "\n\n"
            for row in ROWS]
    assert shown_cfg.format == "prompt_completion" and [row["id"] for row in shown] == ids
    for index, row in enumerate(shown):
        own = prompt_text(ROWS[index], "instruction", tokenizer, "alpaca")
        assert row["prompt"].endswith(own) and row["completion"] == ROWS[index]["output"]
        examples = row["prompt"][: -len(own)]
        used = [i for i, text in enumerate(full) if text in examples]
        assert len(used) == 2 and index not in used  # two other items, with their answers
    again = with_examples(task, cfg, list(reversed(ROWS)), list(reversed(ids)), tokenizer)[1]
    assert {r["id"]: r["prompt"] for r in again} == {r["id"]: r["prompt"] for r in shown}  # fixed by item id
    openings = [row["prompt"][: -len(prompt_text(ROWS[i], "instruction", tokenizer, "alpaca"))]
                for i, row in enumerate(shown)]
    assert max(openings.count(opening) for opening in openings) >= len(ROWS) - 2  # one shared context but for
    # the (at most 2) items that are themselves examples, so likelihood metrics share its prefix cache


def test_the_run_report_splits_a_drop_into_format_and_knowledge_loss(tmp_path):
    datasets = {"sft": {"format": "instruction", "template": "alpaca", "rows": ROWS},
                "sums": {"format": "instruction", "template": "alpaca", "rows": ROWS}}
    evaluation = {"target": [{"name": "t", "data": "sft", "metric": "answer_logprob"}],
                  "retention": [{"name": "sums", "data": "sums", "metric": "answer_logprob", "recovery_shots": 2}]}
    result = run(make_recipe(tmp_path, [{"name": "s", "data": "sft", "max_steps": 2, "lr": 1e-2, "batch_size": 3}],
                             datasets=datasets, evaluation=evaluation))
    base, after = result.manifest["base_evaluation"], result.manifest["stages"][0]["evaluation"]
    assert set(after["recovery"]) == {"sums@2shot"}
    import json

    split = json.loads((tmp_path / "run" / "report.json").read_text())["stages"][0]["knowledge_vs_format"]["sums"]
    drop = after["retention"]["sums"]["score"] - base["retention"]["sums"]["score"]
    knowledge = after["recovery"]["sums@2shot"]["score"] - base["recovery"]["sums@2shot"]["score"]
    assert split == pytest.approx({"examples": "sums@2shot", "drop": drop, "knowledge_loss": knowledge,
                                   "format_loss": drop - knowledge})
    assert "with examples: knowledge loss" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize("evaluation, message", [
    ({"target": [{"name": "t", "data": "sft", "metric": "contains", "recovery_shots": 2}]},
     "evaluation.target.0.recovery_shots: splits a retention drop"),
    ({"target": [{"name": "t", "data": "sft", "metric": "contains"}],
      "retention": [{"name": "p", "data": "prose", "metric": "perplexity", "recovery_shots": 2}]},
     "evaluation.retention.0.recovery_shots: needs an instruction or prompt_completion probe"),
])
def test_bad_recovery_settings_are_one_line(tmp_path, evaluation, message):
    datasets = {"sft": {"format": "instruction", "rows": ROWS}, "prose": {"format": "text", "rows": [{"text": "x"}]}}
    with pytest.raises(RecipeError) as err:
        make_recipe(tmp_path, [{"name": "s", "data": "sft"}], datasets=datasets, evaluation=evaluation)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
