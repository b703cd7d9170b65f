"""The claims table: verdict rules against hand-made intervals, Holm over a claim's comparisons, a
study file's claim block checked against its arms and probes, and docs/claims.md regenerated
byte-identical from the committed study results."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stagewise.study.claims import claim_rows, claim_verdict, claims_markdown, comparison_verdict
from stagewise.study.config import ClaimConfig, ClaimTest

ROOT = Path(__file__).resolve().parents[1]


def versus(estimate, low, high, p=0.001):
    return {"estimate": estimate, "low": low, "high": high, "p_value": p, "half_width": (high - low) / 2}


@pytest.mark.parametrize("expect, interval, higher_is_better, verdict", [
    ("better", (0.05, 0.02, 0.08), True, "reproduced"),
    ("better", (-0.05, -0.08, -0.02), True, "contradicted"),
    ("better", (0.01, -0.02, 0.04), True, "inconclusive"),
    ("better", (-3.0, -5.0, -1.0), False, "reproduced"),  # perplexity: lower is better
    ("worse", (-0.05, -0.08, -0.02), True, "reproduced"),
    ("comparable", (0.01, -0.03, 0.04), True, "reproduced"),
    ("comparable", (0.10, 0.07, 0.13), True, "contradicted"),
    ("comparable", (0.04, -0.01, 0.09), True, "inconclusive"),
])
def test_each_verdict_rule(expect, interval, higher_is_better, verdict):
    test = ClaimTest(arm="a", probe="p", expect=expect, margin=0.05)
    assert comparison_verdict(test, versus(*interval), 0.001, higher_is_better) == verdict


def test_holm_over_the_claims_comparisons_can_make_a_significant_one_inconclusive():
    claim = {"paper": "P", "claim": "C", "setting": "S",
             "tests": [{"arm": "a", "probe": "x", "expect": "better"}, {"arm": "a", "probe": "y", "expect": "better"}]}
    results = {
        "claim": claim, "baseline": "b", "seeds": [0, 1, 2], "cost": {"train_s": 60, "eval_s": 60, "runs": 6},
        "probes": {name: {"items": 100, "minimal_detectable_difference": 0.03, "higher_is_better": True}
                   for name in ("x", "y")},
        "rows": {"a": {"probes": {"x": {"vs_baseline": versus(0.04, 0.01, 0.07, p=0.03)},
                                  "y": {"vs_baseline": versus(0.04, 0.01, 0.07, p=0.04)}}}},
    }
    rows = claim_rows(results)
    assert [round(row["p_holm"], 3) for row in rows] == [0.06, 0.06]  # 2 x 0.03; max(0.06, 1 x 0.04)
    assert [row["verdict"] for row in rows] == ["inconclusive", "inconclusive"]
    assert claim_verdict(["reproduced", "inconclusive"]) == "inconclusive"
    assert claim_verdict(["reproduced", "contradicted"]) == "contradicted"
    text = claims_markdown([("claim-p", results, ClaimConfig.model_validate(claim)),
                            ("claim-q", None, ClaimConfig.model_validate({**claim, "claim": "D"}))])
    assert "| C | P | S | 3 | 2 min (6 runs) | inconclusive |" in text
    assert "| D | P | S | - | - | not run yet (`claim-q`) |" in text
    assert "| a vs b | x (100 items) | better | +0.040 [+0.010, +0.070] | 0.06 | 0.030 | inconclusive |" in text


def test_a_versus_comparison_pairs_two_arms_within_one_setting():
    """A claim over several datasets pairs the arms of one dataset: ``versus`` gives the same paired
    difference as the baseline comparison would, macro-F1 included, and the table names that arm."""
    import numpy as np

    from stagewise.stats import paired_statistic_difference
    from stagewise.study.analysis import Probe, Row, claim_comparisons
    from stagewise.study.config import StudyConfig

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 80)
    probe = Probe("sent", "target", "macro_f1", True, [str(i) for i in range(80)], gold.copy(), ["neg", "pos"], gold)
    rows = [Row(name, name, [{"sent": np.where(rng.random((3, 80)) < noise, 1 - gold, gold)}])
            for name, noise in (("plain", 0.4), ("two_stage", 0.1), ("base", 0.2))]
    config = StudyConfig.model_validate({
        "arms": {name: {"recipe": "r"} for name in ("plain", "two_stage", "base")}, "baseline": "base", "seeds": [0, 1, 2],
        "claim": {"paper": "P", "claim": "C", "setting": "S",
                  "tests": [{"arm": "two_stage", "versus": "plain", "probe": "sent", "expect": "better"},
                            {"arm": "two_stage", "versus": "plain", "probe": "sent:f1_neg", "expect": "better"}]}})
    found = claim_comparisons(config, rows, [(probe, name, stat) for name, stat in probe.statistics()], 500)
    overall = paired_statistic_difference(rows[1].final["sent"], rows[0].final["sent"], probe.statistics()[0][1], 500)
    assert found[0] == {"arm": "two_stage", "versus": "plain", "probe": "sent", **overall.to_dict()}
    assert found[0]["low"] > 0.2 and found[1]["probe"] == "sent:f1_neg" and found[1]["low"] > 0.2
    results = {"claim": config.claim.model_dump(), "baseline": "base", "seeds": [0, 1, 2], "claim_comparisons": found,
               "probes": {name: {"items": 80, "minimal_detectable_difference": 0.5, "higher_is_better": True}
                          for name in ("sent", "sent:f1_neg")}, "rows": {}}
    rows_out = claim_rows(results)
    assert [row["verdict"] for row in rows_out] == ["reproduced", "reproduced"]
    assert rows_out[0]["mdd"] == found[0]["half_width"]  # its own interval, not the baseline comparisons' median
    assert "| two_stage vs plain | sent (80 items) | better |" in claims_markdown([("c", results, config.claim)])


def test_a_claim_naming_an_unknown_arm_or_probe_is_one_line(tmp_path, capsys):
    import yaml

    from stagewise.cli import main

    recipe = {"model": "tiny-llama", "datasets": {"t": {"format": "text", "rows": [{"text": "a b"}] * 4}},
              "stages": [{"name": "s", "data": "t", "max_steps": 1}],
              "evaluation": {"target": [{"name": "ppl", "data": "t", "metric": "perplexity"}]}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    for test, message in (({"arm": "nope", "probe": "ppl", "expect": "better"}, "claim.tests.0.arm: 'nope' is not an arm"),
                          ({"arm": "b", "probe": "acc", "expect": "better"}, "claim.tests.0.probe: 'acc' is not a probe"),
                          ({"arm": "b", "versus": "c", "probe": "ppl", "expect": "better"},
                           "claim.tests.0.versus: 'c' is not an arm")):
        study = {"arms": {"a": {"recipe": "r.yaml"}, "b": {"recipe": "r.yaml"}}, "baseline": "a", "seeds": [0],
                 "claim": {"paper": "P", "claim": "C", "setting": "S", "tests": [test]}}
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
        assert main(["study", str(tmp_path / "s.yaml"), "--dry-run"]) == 2
        assert message in capsys.readouterr().err


def test_docs_claims_md_is_regenerated_byte_identical():
    done = subprocess.run([sys.executable, str(ROOT / "scripts/claims.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
