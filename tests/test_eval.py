"""Metrics against hand-computed values; evaluation, report and comparison plot on a tiny model."""
from __future__ import annotations

import json

import pytest
from conftest import make_recipe, run

from stagewise.eval.metrics import (
    classification_scores,
    contains_match,
    exact_match,
    last_integer,
    normalize_answer,
    regex_match,
)
from stagewise.report import compare_scores


def test_normalize_and_exact_match():
    assert normalize_answer("  The Eiffel-Tower! ") == "eiffeltower"
    assert exact_match("Paris.\nMore text", ["paris"])
    assert not exact_match("It is Paris", ["Paris"])
    assert exact_match("Peking", ["Beijing", "Peking"])


def test_contains_match_is_whole_word():
    assert contains_match("The capital of France is Paris.", ["Paris"])
    assert not contains_match("Parisian food", ["Paris"])
    assert contains_match("It has 8 legs", ["eight", "8"])
    assert contains_match("\nParis", ["Paris"])  # the first non-empty line is used


@pytest.mark.parametrize("text, expected", [
    ("The answer is 1,234.", 1234), ("x=3.5", None), ("3.0", 3), ("-7", -7), ("no digits", None),
    ("5 apples then 12", 12), ("#### 72", 72),
    # the reference (sail-sg/sdft find_last_integer) reads whitespace between digit groups as a separator
    ("The answer is 1 234.", 1234), ("1 234 567", 1234567), ("-1 000.00", -1000), ("3\n4", 34),
])
def test_last_integer(text, expected):
    assert last_integer(text) == expected


def test_regex_match():
    assert regex_match("Answer: (B) because", r"\(([A-D])\)", ["b"])
    assert not regex_match("no option", r"\(([A-D])\)", ["b"])


def test_classification_scores_by_hand():
    # gold:  0 0 0 1 1 ; pred: 0 0 1 1 0
    scores = classification_scores([0, 0, 1, 1, 0], [0, 0, 0, 1, 1], ["neg", "pos"])
    # neg: tp=2 fp=1 fn=1 -> f1 = 4/6; pos: tp=1 fp=1 fn=1 -> f1 = 2/4
    assert scores["f1_neg"] == pytest.approx(2 / 3)
    assert scores["f1_pos"] == pytest.approx(0.5)
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert scores["accuracy"] == pytest.approx(0.6) and scores["micro_f1"] == pytest.approx(0.6)


def test_compare_scores_gain_and_retention():
    base = {"target": {"t": {"score": 0.1, "metric": "contains", "higher_is_better": True}},
            "retention": {"r": {"score": 0.8, "metric": "contains", "higher_is_better": True},
                          "p": {"score": 10.0, "metric": "perplexity", "higher_is_better": False}}}
    after = {"target": {"t": {"score": 0.6, "metric": "contains", "higher_is_better": True}},
             "retention": {"r": {"score": 0.5, "metric": "contains", "higher_is_better": True},
                           "p": {"score": 12.0, "metric": "perplexity", "higher_is_better": False}}}
    out = compare_scores(base, after)
    assert out["target_gain"] == pytest.approx(0.5)
    assert out["retention_delta"] == pytest.approx(-0.3)
    assert out["retention_perplexity_change"] == pytest.approx(0.2)
    assert out["retention_score"] == pytest.approx(0.5)


FACT_ROWS = [{"instruction": f"Where was P{i} born?", "output": f"Town{i}"} for i in range(6)]
ICL_ROWS = [{"task": "upper", "input": w, "output": w.upper(), "prompt_format": "{input} ->"} for w in "abcdef"]
TEXT_ROWS = [{"text": "the quick brown fox"}, {"text": "jumps over the lazy dog"}]


def eval_recipe(tmp_path, **extra):
    return make_recipe(
        tmp_path,
        [{"name": "sft", "data": "facts", "lr": 1e-2, "max_steps": 3, "batch_size": 2}],
        datasets={"facts": {"format": "instruction", "template": "alpaca", "rows": FACT_ROWS},
                  "icl": {"format": "fewshot", "rows": ICL_ROWS},
                  "text": {"format": "text", "rows": TEXT_ROWS}},
        evaluation={"target": [{"name": "recall", "data": "facts", "metric": "exact_match", "max_new_tokens": 4}],
                    "retention": [{"name": "icl", "data": "icl", "metric": "fewshot", "shots": 2, "max_new_tokens": 3},
                                  {"name": "ppl", "data": "text", "metric": "perplexity"}]},
        **extra,
    )


def test_run_writes_report_and_caches_base_scores(tmp_path):
    result = run(eval_recipe(tmp_path))
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert set(report["base"]["retention"]) == {"icl", "ppl"}
    stage = report["stages"][0]
    ppl = stage["retention"]["ppl"]
    assert ppl["delta"] == pytest.approx(ppl["after"] - ppl["base"]) and ppl["base"] > 1
    assert "| retention | ppl | perplexity |" in (tmp_path / "run/report.md").read_text()
    assert result.manifest["stages"][0]["evaluation"]["target"]["recall"]["n"] == 6
    from stagewise.engine import run_recipe

    logs: list[str] = []
    run_recipe(eval_recipe(tmp_path / "second"), log=logs.append)  # same model and probes: cache hit
    assert "[eval] base model" not in logs
    assert json.loads((tmp_path / "second/run/report.json").read_text())["base"] == report["base"]

    [base_file] = (tmp_path / "cache/eval").glob("base-*.json")
    cached = json.loads(base_file.read_text())
    cached["payload"]["results"]["retention"]["ppl"]["score"] = 123.0  # edited: must not be trusted
    base_file.write_text(json.dumps(cached))
    logs.clear()
    run_recipe(eval_recipe(tmp_path / "third"), log=logs.append)
    assert any("does not match its hash" in line for line in logs) and "[eval] base model" in logs
    again = json.loads((tmp_path / "third/run/report.json").read_text())
    assert again["base"]["retention"]["ppl"] == report["base"]["retention"]["ppl"] != 123.0
    base_file.write_text(base_file.read_text()[:40])  # truncated: scored again, no traceback
    logs.clear()
    run_recipe(eval_recipe(tmp_path / "fourth"), log=logs.append)
    assert any("unreadable" in line for line in logs) and "[eval] base model" in logs


def test_perplexity_matches_model_loss(tmp_path):
    import math

    import torch

    from stagewise.config import DatasetConfig, EvalTaskConfig, EvaluationConfig, ModelConfig
    from stagewise.data.tokenize import encode_lm_rows
    from stagewise.eval import evaluate_task
    from stagewise.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    rows = [{"text": "hello world"}, {"text": "a much longer line of plain text to pad the others"}, {"text": "hi"}]
    result = evaluate_task(model, tok, EvalTaskConfig(name="p", data="t", metric="perplexity"),
                           DatasetConfig(format="text", rows=rows), rows, EvaluationConfig())  # one padded batch
    total, tokens = 0.0, 0
    with torch.no_grad():
        for example in encode_lm_rows(rows, "text", tok):  # each row alone: no padding
            ids, labels = torch.tensor([example["input_ids"]]), torch.tensor([example["labels"]])
            predicted = int((labels[0, 1:] != -100).sum())  # the first token has nothing before it
            total += float(model(input_ids=ids, labels=labels).loss) * predicted
            tokens += predicted
    assert [item["tokens"] for item in result["items"]] == [len(e["input_ids"]) - 1 for e in encode_lm_rows(rows, "text", tok)]
    assert result["score"] == pytest.approx(math.exp(total / tokens), rel=1e-4)


def test_compare_writes_table_and_plot(tmp_path, capsys):
    import yaml

    from stagewise.cli import main

    paths = []
    for lr in (1e-2, 1e-3):
        recipe = eval_recipe(tmp_path / str(lr))
        data = json.loads(recipe.model_dump_json())
        data["stages"][0]["lr"] = lr
        path = tmp_path / f"lr{lr}.yaml"
        path.write_text(yaml.safe_dump(data))
        paths.append(str(path))
    assert main(["compare", *paths, "--out", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp/compare.png").stat().st_size > 5000
    table = (tmp_path / "cmp/compare.md").read_text()
    assert "| base model |" in table and "lr0.01" in table and "lr0.001" in table
    rows = json.loads((tmp_path / "cmp/compare.json").read_text())["rows"]
    assert rows[0]["base_retention_score"] == rows[1]["base_retention_score"]


def read_items(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("corrupt", [
    lambda text: text[: len(text) // 2],  # truncated mid-line
    lambda text: text.replace('"score": ', '"score": 1' + "9" * 5000 + " + ", 1),  # an integer past the digit limit
    lambda text: "",  # emptied
])
def test_a_corrupt_per_item_file_is_scored_again_on_rerun_not_trusted(tmp_path, corrupt):
    """Per-item files carry their SHA-256 in the manifest: a damaged one makes the rerun score that
    stage again from its saved weights (no retraining) and the file comes back byte-identical."""
    from stagewise.engine import run_recipe
    from stagewise.errors import DataError
    from stagewise.eval.evaluator import read_items as read_checked

    recipe = eval_recipe(tmp_path)
    result = run(recipe)
    summary = result.manifest["stages"][0]["evaluation"]["target"]["recall"]
    path = tmp_path / "run" / summary["items_file"]
    written, weights = path.read_bytes(), (tmp_path / "run/0-sft/model.safetensors").read_bytes()
    path.write_text(corrupt(written.decode()))
    with pytest.raises(DataError, match="per-item scores differ from what the run wrote"):
        read_checked(tmp_path / "run", summary)
    logs: list[str] = []
    run_recipe(recipe, log=logs.append)
    assert any("[verify] stage 0 'sft'" in line and "scoring it again" in line for line in logs), logs
    assert any(line.startswith("[skip] stage 0 'sft' already completed") for line in logs)
    assert not any(line.startswith("[stage 0] 'sft': training") for line in logs)
    assert path.read_bytes() == written
    assert (tmp_path / "run/0-sft/model.safetensors").read_bytes() == weights


def test_per_item_scores_are_written_and_reproduce_each_probe_score(tmp_path):
    import math

    result = run(eval_recipe(tmp_path))
    out = tmp_path / "run"
    for point, evaluation in (("base", result.manifest["base_evaluation"]),
                              ("0-sft", result.manifest["stages"][0]["evaluation"])):
        for group, probes in evaluation.items():
            for name, summary in probes.items():
                assert "items" not in summary and summary["items_file"] == f"eval/{point}/{name}.jsonl"
                items = read_items(out / summary["items_file"])
                assert len(items) == summary["n"]
                if summary["metric"] == "perplexity":
                    nll = sum(i["score"] * i["tokens"] for i in items) / sum(i["tokens"] for i in items)
                    assert math.exp(nll) == pytest.approx(summary["score"], rel=1e-5)
                elif summary["metric"] == "fewshot":  # macro over tasks; one task here
                    assert sum(i["score"] for i in items) / len(items) == pytest.approx(summary["score"])
                else:
                    assert sum(i["score"] for i in items) / len(items) == pytest.approx(summary["score"])
    base_ids = [i["id"] for i in read_items(out / "eval/base/recall.jsonl")]
    assert base_ids == [i["id"] for i in read_items(out / "eval/0-sft/recall.jsonl")]
    assert len(set(base_ids)) == len(FACT_ROWS)
    assert result.manifest["stages"][0]["eval_time_s"] > 0 and result.manifest["base_eval_time_s"] > 0


def test_item_ids_use_the_row_id_else_content_and_number_repeats():
    from stagewise.eval.suite import item_ids

    rows = [{"id": 7, "text": "a"}, {"text": "b"}, {"text": "b"}, {"text": "c"}]
    ids = item_ids(rows)
    assert ids[0] == "7" and ids[2] == ids[1] + "#2" and len(set(ids)) == 4
    assert item_ids([{"text": "c"}]) == [ids[3]]  # content ids do not depend on position


def test_every_epoch_traces_a_curve_of_points(tmp_path):
    recipe = make_recipe(
        tmp_path, [{"name": "sft", "data": "facts", "lr": 1e-2, "epochs": 3, "batch_size": 3}],
        datasets={"facts": {"format": "instruction", "template": "alpaca", "rows": FACT_ROWS}},
        evaluation={"target": [{"name": "recall", "data": "facts", "metric": "exact_match", "max_new_tokens": 4}],
                    "every": "epoch"},
    )
    result = run(recipe)
    curve = result.manifest["stages"][0]["curve"]
    assert [point["epoch"] for point in curve] == [1.0, 2.0] and [p["step"] for p in curve] == [2, 4]
    for point in curve:
        items = read_items(tmp_path / "run" / point["evaluation"]["target"]["recall"]["items_file"])
        assert len(items) == len(FACT_ROWS) and point["eval_time_s"] > 0
    assert (tmp_path / "run/eval/0-sft/epoch-1/recall.jsonl").is_file()


def test_a_reused_stage_scored_under_new_settings_drops_the_curve_points_of_the_old_ones(tmp_path):
    """Curve points cannot be rescored without training again; kept beside a final point scored on
    other probes they would mix settings in one curve (a study would read them as one path)."""
    stages = [{"name": "sft", "data": "facts", "lr": 1e-2, "epochs": 3, "batch_size": 3}]
    datasets = {"facts": {"format": "instruction", "template": "alpaca", "rows": FACT_ROWS}}
    probe = {"name": "recall", "data": "facts", "metric": "exact_match", "max_new_tokens": 4}
    first = run(make_recipe(tmp_path, stages, datasets=datasets, evaluation={"target": [probe], "every": "epoch"}))
    trained = first.manifest["stages"][0]
    assert len(trained["curve"]) == 2 and all(p["evaluation_key"] == trained["evaluation_key"] for p in trained["curve"])
    again = run(make_recipe(tmp_path, stages, datasets=datasets, evaluation={"target": [probe], "every": "epoch"}))
    assert again.manifest["stages"][0]["curve"] == trained["curve"]  # same settings: nothing rescored or dropped
    changed = run(make_recipe(tmp_path, stages, datasets=datasets,
                              evaluation={"target": [{**probe, "max_new_tokens": 5}], "every": "epoch"}))
    rescored = changed.manifest["stages"][0]
    assert rescored["wall_time_s"] == trained["wall_time_s"]  # reused, not trained again
    assert rescored["evaluation_key"] != trained["evaluation_key"] and rescored["curve"] == []
    on_disk = json.loads((tmp_path / "run/manifest.json").read_text())  # no stage trained after the base scores
    assert on_disk["base_evaluation"] == changed.manifest["base_evaluation"] is not None
    assert on_disk["stages"][0]["evaluation_key"] == rescored["evaluation_key"]


@pytest.mark.parametrize("every, points", [
    ("log", ["step-1", "step-2", "step-4", "epoch-1", "epoch-2"]),  # 8 steps per epoch: 1/8, 1/4, 1/2, then epochs
    ({"steps": [3, 5]}, ["step-3", "step-5"]),
    ("epoch", ["epoch-1", "epoch-2"]),
])
def test_curve_points_land_where_asked(tmp_path, every, points):
    """`every: log` is dense inside the first epoch, `{steps}` at the listed steps, `epoch` at epoch ends
    (the stage's last point is its own evaluation)."""
    from conftest import make_recipe, run

    rows = [{"instruction": f"say {i}", "output": f"{i}"} for i in range(16)]
    datasets = {"d": {"format": "instruction", "template": "alpaca", "rows": rows}}
    evaluation = {"target": [{"name": "t", "data": "d", "metric": "answer_logprob"}], "every": every}
    result = run(make_recipe(tmp_path, [{"name": "s", "data": "d", "epochs": 3, "batch_size": 2}],
                             datasets=datasets, evaluation=evaluation))
    curve = result.manifest["stages"][0]["curve"]
    assert [point["evaluation"]["target"]["t"]["items_file"].split("/")[-2] for point in curve] == points


def test_item_ids_never_collide_and_a_repeated_given_id_is_refused():
    """A numbered repeat takes the next free id (``a``, ``a#2`` given, a third ``a``-hash row never lands
    on ``a#2``); two rows naming the same id would merge their per-item scores, so they are refused."""
    import hashlib
    import json

    from stagewise.errors import DataError
    from stagewise.eval.suite import item_ids

    row = {"text": "same"}
    base = hashlib.sha1(json.dumps(row).encode()).hexdigest()[:12]
    ids = item_ids([{"id": f"{base}#2", "text": "x"}, row, row])
    assert ids == [f"{base}#2", base, f"{base}#3"]
    with pytest.raises(DataError, match="probe rows 1 and 3 have the same id 'a'"):
        item_ids([{"id": "a"}, {"id": "b"}, {"id": "a"}])


def test_a_chat_row_s_gold_is_its_last_assistant_turn():
    from stagewise.eval.suite import answer_correct

    row = {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]}
    assert answer_correct("contains", "It is Paris.", row) and not answer_correct("contains", "Lyon", row)
    assert answer_correct("exact_match", "Paris", row)
