"""``metric: lm_eval`` offline: a custom lm-eval task over a local JSONL, scored in memory."""
from __future__ import annotations

import json

import pytest
from conftest import make_recipe, run

from stagewise.errors import RecipeError

QUESTIONS = [{"question": f"Is {n} even?", "choices": ["yes", "no"], "answer": n % 2} for n in range(8)]


def task_folder(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (folder / "toy.yaml").write_text(f"""task: stagewise_toy
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
""")
    return folder


def recipe(tmp_path, **probe):
    return make_recipe(
        tmp_path, [{"name": "s", "data": "sft", "lr": 1e-2, "max_steps": 1, "batch_size": 2}],
        evaluation={"retention": [{"name": "toy", "metric": "lm_eval", "tasks": ["stagewise_toy"],
                                   "include_path": str(task_folder(tmp_path)), **probe}]},
    )


def test_lm_eval_probe_scores_a_custom_task_offline_with_items(tmp_path):
    result = run(recipe(tmp_path, limit=6))
    summary = result.manifest["stages"][0]["evaluation"]["retention"]["toy"]
    items = [json.loads(line) for line in (tmp_path / "run" / summary["items_file"]).read_text().splitlines()]
    assert summary["n"] == len(items) == 6 and {i["id"] for i in items} == {f"stagewise_toy:{k}" for k in range(6)}
    assert summary["score"] == pytest.approx(sum(i["score"] for i in items) / 6)
    assert "stagewise_toy_acc" in summary["scores"] and "stagewise_toy_acc_stderr" in summary["scores"]
    base = result.manifest["base_evaluation"]["retention"]["toy"]
    assert 0 <= base["score"] <= 1
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["stages"][0]["retention"]["toy"]["delta"] == pytest.approx(summary["score"] - base["score"])


def test_unknown_lm_eval_task_is_one_line_at_validation(tmp_path):
    with pytest.raises(RecipeError, match=r"evaluation.retention.0.tasks: unknown lm-eval task 'stagewise_toyy' "
                                          r"\(did you mean 'stagewise_toy'\?\)"):
        make_recipe(tmp_path, [{"name": "s", "data": "sft"}],
                    evaluation={"retention": [{"name": "t", "metric": "lm_eval", "tasks": ["stagewise_toyy"],
                                               "include_path": str(task_folder(tmp_path))}]})
    with pytest.raises(RecipeError, match="metric 'lm_eval' needs 'tasks'"):
        make_recipe(tmp_path, [{"name": "s", "data": "sft"}],
                    evaluation={"retention": [{"name": "t", "metric": "lm_eval"}]})
