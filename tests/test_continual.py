"""Task sequences: GEM's average accuracy, backward and forward transfer on a hand-made matrix,
and the accuracy matrix a three-task recipe reports."""
from __future__ import annotations

import pytest
from conftest import make_recipe, run

from stagewise.errors import RecipeError
from stagewise.report import build_report, continual_metrics


def test_summary_of_a_hand_made_matrix():
    matrix = [[0.8, 0.1, 0.2],
              [0.6, 0.9, 0.3],
              [0.5, 0.7, 0.95]]
    summary = continual_metrics(matrix, base=[0.1, 0.05, 0.2])
    assert summary["average_accuracy"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert summary["bwt"] == pytest.approx(((0.5 - 0.8) + (0.7 - 0.9)) / 2)    # -0.25: forgetting
    assert summary["fwt"] == pytest.approx(((0.1 - 0.05) + (0.3 - 0.2)) / 2)   # +0.075
    assert continual_metrics([[0.4]], [0.1]) == {"average_accuracy": 0.4, "bwt": None, "fwt": None}


def task_rows(tag):
    return [{"instruction": f"{tag} question {i}", "output": f"{tag}{i}"} for i in range(4)]


def sequence(tmp_path, **evaluation):
    datasets = {tag: {"format": "instruction", "template": "alpaca", "rows": task_rows(tag)} for tag in ("a", "b", "c")}
    stages = [{"name": f"learn-{tag}", "data": tag, "lr": 5e-2, "max_steps": 2, "batch_size": 2} for tag in "abc"]
    probes = [{"name": f"task-{tag}", "data": tag, "metric": "contains", "max_new_tokens": 3, "stage": f"learn-{tag}"}
              for tag in "cab"]  # listed out of order: the matrix follows the stages
    return make_recipe(tmp_path, stages, datasets=datasets,
                       evaluation={"target": probes, "retention": [], **evaluation})


def test_a_three_task_recipe_reports_the_accuracy_matrix(tmp_path):
    result = run(sequence(tmp_path))
    report = build_report(result.manifest)
    continual = report["continual"]
    assert continual["tasks"] == ["task-a", "task-b", "task-c"]
    assert continual["stages"] == ["learn-a", "learn-b", "learn-c"]
    for i, entry in enumerate(result.manifest["stages"]):
        for j, task in enumerate(continual["tasks"]):
            assert continual["matrix"][i][j] == entry["evaluation"]["target"][task]["score"]
    assert continual["bwt"] == pytest.approx(continual_metrics(continual["matrix"], continual["base"])["bwt"])
    assert "## task sequence" in (tmp_path / "run/report.md").read_text()


@pytest.mark.parametrize("change, message", [
    ({"stage": "nope"}, "evaluation.target.0.stage: 'nope' is not a stage of this recipe"),
    ({"metric": "perplexity"}, "a task probe needs an accuracy-like metric"),
])
def test_bad_task_probe_is_one_line(tmp_path, change, message):
    recipe = sequence(tmp_path).model_dump(mode="json")
    recipe["evaluation"]["target"][0].update(change)
    from stagewise.config import recipe_from_dict

    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(recipe)


def test_task_probes_need_a_score_after_every_stage(tmp_path):
    with pytest.raises(RecipeError, match="evaluation.after_each_stage: task probes"):
        sequence(tmp_path, after_each_stage=False)
