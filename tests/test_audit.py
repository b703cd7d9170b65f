"""`stagewise audit`: any base/tuned pair scored on the same items, paired intervals, flipped items,
the knowledge-vs-format split, the regression gate, adapters, and one-line bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from stagewise.audit.paired import compare_results, regressions
from stagewise.cli import REGRESSION_STATUS, main
from stagewise.eval.flips import flipped
from stagewise.models import tiny_folder
from stagewise.stats import paired_difference

ROWS = [{"instruction": f"question {i}?", "output": "yes"} for i in range(12)]


def write_suite(tmp_path, retention=None, kl_prompts=4):
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    (tmp_path / "prose.jsonl").write_text("".join(json.dumps({"text": f"a line of prose {i}"}) + "\n" for i in range(6)))
    suite = {
        "model": "tiny-llama",
        "datasets": {"qa": {"format": "instruction", "path": "qa.jsonl"},
                     "prose": {"format": "text", "path": "prose.jsonl"}},
        "evaluation": {
            "retention": retention if retention is not None else [
                {"name": "qa", "data": "qa", "metric": "contains", "max_new_tokens": 4, "recovery_shots": 2},
                {"name": "ppl", "data": "prose", "metric": "perplexity"},
            ],
            "kl_prompts": kl_prompts, "kl_tokens": 4, "batch_size": 12,
        },
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """tiny-llama taught to answer every question "yes" (its base never does)."""
    tmp_path = tmp_path_factory.mktemp("trained")
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    recipe = {"model": "tiny-llama", "datasets": {"qa": {"format": "instruction", "path": "qa.jsonl"}},
              "stages": [{"name": "s", "data": "qa", "lr": 3e-3, "max_steps": 40, "batch_size": 12,
                          "warmup_ratio": 0.0}],
              "output_dir": str(tmp_path / "run")}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "r.yaml")]) == 0
    return tmp_path / "run/0-s"


def audit(tmp_path, capsys, *argv):
    status = main(["audit", "--suite", str(write_suite(tmp_path)), "--out", str(tmp_path / "out"), *argv])
    printed = capsys.readouterr()
    return status, printed, json.loads((tmp_path / "out/audit.json").read_text()) if status in (0, 3) else None


def test_audit_finds_what_was_forgotten_and_the_gate_fails_only_then(tmp_path, trained, capsys):
    base = str(tiny_folder("tiny-llama"))
    status, printed, report = audit(tmp_path, capsys, "--base", str(trained), "--tuned", base, "--fail-if-drop", "0.2")
    assert status == REGRESSION_STATUS, printed.err
    assert "regression:" in printed.err and "qa dropped" in printed.err
    qa = report["tuned"][0]["probes"]["qa"]
    assert qa["base"] == 1.0 and qa["tuned"] == 0.0
    assert qa["difference"]["estimate"] == -1.0 and qa["difference"]["high"] == -1.0
    forgotten = report["tuned"][0]["flipped"]["qa"]
    assert len(forgotten) == len(ROWS) and {item["flip"] for item in forgotten} == {"forgotten"}
    assert forgotten[0]["gold"] == "yes" and forgotten[0]["question"].startswith("question ")
    changes = [item["gold_logprob_change"] for item in forgotten]
    assert all(change < 0 for change in changes) and changes == sorted(changes)  # largest fall first
    assert "qa" in report["tuned"][0]["knowledge_vs_format"]
    assert report["tuned"][0]["kl_from_base"]["prompts"] == 4
    markdown = (tmp_path / "out/audit.md").read_text()
    assert "**worse**" in markdown and "12 forgotten" in markdown and "Cost: base scored in" in markdown
    assert set(report["tuned"][0]["seconds"]) == {"scoring", "kl", "examples", "per_probe"}

    status, printed, report = audit(tmp_path, capsys, "--base", base, "--tuned", str(trained), "--fail-if-drop", "0.2")
    assert status == 0 and "regression" not in printed.err
    assert {item["flip"] for item in report["tuned"][0]["flipped"]["qa"]} == {"learned"}


def test_a_tuned_folder_that_is_the_base_is_reported_identical(tmp_path, capsys):
    base = str(tiny_folder("tiny-llama"))
    status, printed, report = audit(tmp_path, capsys, "--base", "tiny-llama", "--tuned", base, "--fail-if-drop", "0")
    assert status == 0, printed.err
    tuned = report["tuned"][0]
    assert tuned["identical_to_base"] and tuned["probes"]["qa"]["difference"]["estimate"] == 0.0
    assert tuned["flipped"]["qa"] == [] and tuned["kl_from_base"]["per_token"] == 0.0
    assert "Identical to the base model" in (tmp_path / "out/audit.md").read_text()


def test_a_peft_adapter_folder_is_audited_on_the_base_it_names(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = str(tiny_folder("tiny-llama"))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "lora_B" in name:
                tensor.normal_(0, 1.0)
    model.save_pretrained(tmp_path / "adapter")
    status, printed, report = audit(tmp_path, capsys, "--base", base, "--tuned", str(tmp_path / "adapter"))
    assert status == 0, printed.err
    tuned = report["tuned"][0]
    assert tuned["adapter_base"] == base and not tuned["identical_to_base"]
    assert tuned["kl_from_base"]["per_token"] > 0
    assert f"A PEFT adapter on `{base}`" in (tmp_path / "out/audit.md").read_text()


def test_bad_inputs_are_one_line(tmp_path, capsys):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter/adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/no/such/base"}))
    cases = [
        (["--tuned", str(tmp_path / "adapter")], "--tuned: " + str(tmp_path / "adapter") + ": the adapter's base model '/no/such/base'"),
        (["--tuned", str(tmp_path / "missing")], "--tuned: folder"),
        (["--tuned", "tiny-llama", "--fail-if-drop", "nan"], "--fail-if-drop"),
    ]
    for extra, expected in cases:
        status = main(["audit", "--suite", str(write_suite(tmp_path)), "--out", str(tmp_path / "o"),
                       "--base", "tiny-llama", *extra])
        err = capsys.readouterr().err.strip()
        assert status == 2 and "Traceback" not in err and err.startswith("error: ") and expected in err, err
        assert len(err.splitlines()) == 1, err  # refused before anything is scored
    empty = write_suite(tmp_path, retention=[])
    assert main(["audit", "--suite", str(empty), "--base", "tiny-llama", "--tuned", "tiny-llama",
                 "--out", str(tmp_path / "o")]) == 2
    assert "has no probes" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written when the input is bad


def test_paired_difference_and_holm_are_the_statistics_module_s():
    base = {"retention": {"a": {"metric": "contains", "higher_is_better": True, "n": 4, "score": 0.75,
                                "items": [{"id": str(i), "score": s} for i, s in enumerate([1, 1, 1, 0])]}}}
    tuned = {"retention": {"a": {**base["retention"]["a"], "score": 0.25,
                                 "items": [{"id": str(i), "score": s} for i, s in enumerate([0, 1, 0, 0])]}}}
    row = compare_results(base, tuned, 2000)["probes"]["a"]
    expected = paired_difference(np.array([[0, 1, 0, 0.0]]), np.array([[1, 1, 1, 0.0]]), n_boot=2000).to_dict()
    assert row["difference"] == {**expected, "p_holm": expected["p_value"]}
    assert regressions({"probes": {"a": row}}, 0.4) == (["a"] if expected["high"] < 0 else [])
    assert regressions({"probes": {"a": row}}, 0.6) == []
    rows = [{"instruction": "q0", "output": "a0"}, {"instruction": "q2", "output": "a2"}]
    base["retention"]["a"]["items"] = [{"id": "x", "score": 1.0, "prediction": "a0"}]
    tuned["retention"]["a"]["items"] = [{"id": "x", "score": 0.0, "prediction": "no"}]
    rows[0]["id"] = "x"
    assert flipped(base["retention"]["a"], tuned["retention"]["a"], rows) == [
        {"id": "x", "flip": "forgotten", "question": "q0", "gold": "a0", "base_answer": "a0", "tuned_answer": "no"}
    ]


def test_plan_audit_counts_both_models_and_says_when_they_cannot_fit(capsys):
    from pathlib import Path

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    configs = Path(__file__).resolve().parents[1] / "src/stagewise/plan/configs"
    data = json.loads((configs / "llama-3-8b.json").read_text())
    with torch.device("meta"):
        numel = AutoModelForCausalLM.from_config(AutoConfig.for_model(data.pop("model_type"), **data)).num_parameters()
    assert main(["plan", "--audit", "--model", str(configs / "llama-3-8b.json"), "--device-memory", "80GB"]) == 0
    printed = capsys.readouterr().out
    assert f"base weights {numel * 2 / 2**30:.2f}, tuned weights {numel * 2 / 2**30:.2f}" in printed  # bf16 each
    assert printed.strip().endswith("fits")
    assert main(["plan", "--audit", "--model", str(configs / "llama-3-70b.json"), "--device-memory", "80GB"]) == 0
    assert "does NOT fit: the two models alone take" in capsys.readouterr().out


def test_an_lm_eval_task_is_a_suite_paired_per_document(tmp_path, trained, capsys):
    from test_lm_eval import task_folder

    task = task_folder(tmp_path) / "toy.yaml"
    argv = ["audit", "--base", "tiny-llama", "--tuned", str(trained), "--lm-eval", str(task), "--lm-eval-limit", "6",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 0, capsys.readouterr().err
    tuned = json.loads((tmp_path / "out/audit.json").read_text())["tuned"][0]
    assert list(tuned["probes"]) == ["lm_eval_stagewise_toy"]  # lm-eval alone: no default suite
    probe = tuned["probes"]["lm_eval_stagewise_toy"]
    assert probe["n"] == 6 and probe["difference"]["n_items"] == 6
    assert probe["difference"]["estimate"] == pytest.approx(probe["tuned"] - probe["base"])
    capsys.readouterr()
    assert main(["audit", "--base", "tiny-llama", "--tuned", "tiny-llama", "--lm-eval", "stagewise_toyy",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --lm-eval stagewise_toyy: unknown lm-eval task") and len(err.splitlines()) == 1, err


def test_another_tokenizer_leaves_out_the_kl_and_perplexity_but_compares_answers(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from stagewise.models import byte_tokenizer

    folder = tmp_path / "other-vocab"
    AutoModelForCausalLM.from_pretrained(str(tiny_folder("tiny-llama"))).save_pretrained(folder)
    tokenizer = byte_tokenizer()
    tokenizer.add_tokens(["<extra-token>"])
    tokenizer.save_pretrained(folder)
    status, printed, report = audit(tmp_path, capsys, "--base", "tiny-llama", "--tuned", str(folder))
    assert status == 0, printed.err
    tuned = report["tuned"][0]
    assert "different tokenizers" in tuned["note"] and tuned["kl_from_base"] is None
    assert tuned["probes"]["ppl"]["difference"] is None and tuned["probes"]["qa"]["difference"] is not None
    assert "different tokenizers" in (tmp_path / "out/audit.md").read_text()
