"""report.html in a real headless browser (Debian's chromium driven by Playwright): the page loads
with no console error, its plots render, hovering shows a point's numbers, a filter changes the
visible rows, and hostile text in an item stays text."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from stagewise.audit.report import write_audit
from stagewise.cli import main
from stagewise.page import inline_json, write_page
from stagewise.study.page import study_sections

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (scripts/install.sh installs Debian's)")
HOSTILE = "</script><script>window.hacked = 1</script> & <b>bold</b>"


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def open_page(browser, path: Path):
    """The loaded page and the console errors it raised."""
    page = browser.new_page(viewport={"width": 900, "height": 700})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.resolve().as_uri())
    page.wait_for_selector("body[data-rendered=yes]", state="attached", timeout=15_000)
    return page, errors


def difference(estimate, low, high, p):
    return {"estimate": estimate, "low": low, "high": high, "half_width": (high - low) / 2, "p_value": p,
            "n_items": 10, "p_holm": p}


def item(flip, question, number):
    return {"id": str(number), "flip": flip, "question": question, "gold": "yes", "base_answer": "yes",
            "tuned_answer": "no", "gold_logprob_change": -1.0}


AUDIT = {
    "base": "base-model", "suites": ["suites/audit.yaml"], "kl_prompts": "chat:test", "base_scores": {},
    "base_seconds": {"scoring": 1.0, "per_probe": {}}, "wall_s": 3.0,
    "tuned": [{
        "model": "tuned-model", "adapter_base": None, "identical_to_base": False, "note": None, "scores": {},
        "probes": {
            "facts": {"metric": "contains", "higher_is_better": True, "n": 10, "base": 0.8, "tuned": 0.5,
                      "difference": difference(-0.3, -0.5, -0.1, 0.002)},
            "ppl": {"metric": "perplexity", "higher_is_better": False, "n": 10, "base": 20.0, "tuned": 21.0,
                    "difference": difference(0.05, -0.01, 0.11, 0.2)},
        },
        "knowledge_vs_format": {}, "kl_from_base": {"per_sequence": 1.5, "per_token": 0.05},
        "flipped": {"facts": [item("forgotten", HOSTILE, 1), item("forgotten", "q2", 2), item("learned", "q3", 3)]},
        "seconds": {"scoring": 1.0, "kl": 0.5, "examples": 0.1, "per_probe": {}},
    }],
}


def test_audit_page_renders_hovers_and_filters(tmp_path, browser):
    write_audit(tmp_path, AUDIT)
    page, errors = open_page(browser, tmp_path / "report.html")
    assert errors == []
    assert page.locator("svg.forest circle").count() == 2  # one point per probe
    page.hover("svg.forest circle >> nth=0")
    assert "difference: -0.300 [-0.500, -0.100]" in page.locator("#tip").inner_text()
    visible = page.locator("#items tbody tr:not([hidden])")
    assert visible.count() == 3
    page.select_option("select[name=flip]", "learned")
    assert visible.count() == 1 and "q3" in visible.first.inner_text()
    page.select_option("select[name=flip]", "forgotten")
    assert visible.count() == 2 and HOSTILE in page.locator("#items").inner_text()  # shown as text
    assert page.evaluate("window.hacked") is None  # the item's markup never ran
    assert len(page.screenshot()) > 5_000  # a PNG with something drawn


def test_study_page_draws_every_arm_and_comparison(tmp_path, browser):
    results = json.loads((Path(__file__).parents[1] / "docs/studies/claim-promot.json").read_text())
    write_page(tmp_path / "report.html", "study", "ProMoT claim", study_sections(results, []))
    page, errors = open_page(browser, tmp_path / "report.html")
    assert errors == []
    comparisons = sum(1 for probe in results["probes"] for row in results["rows"].values()
                      if row["probes"][probe].get("vs_baseline"))
    assert page.locator("svg.forest circle").count() == comparisons
    panels = [name for name in results["matched"]["full"] if name != "curve"]
    assert page.locator("svg.scatter").count() == len(panels)


def test_a_run_writes_a_page_with_its_flipped_items(tmp_path, browser):
    rows = [{"instruction": f"question {i}?", "output": "yes"} for i in range(8)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = {
        "model": "tiny-llama", "datasets": {"qa": {"format": "instruction", "path": "qa.jsonl"}},
        "stages": [{"name": "s", "data": "qa", "lr": 3e-3, "max_steps": 40, "batch_size": 8, "warmup_ratio": 0.0}],
        "evaluation": {"target": [{"name": "qa", "data": "qa", "metric": "contains", "max_new_tokens": 4}],
                       "retention": [{"name": "again", "data": "qa", "metric": "contains", "max_new_tokens": 4}],
                       "kl_prompts": 0},
        "output_dir": str(tmp_path / "run"),
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "r.yaml")]) == 0
    report = json.loads((tmp_path / "run/report.json").read_text())
    learned = report["flipped"]["0-s"]["qa"]
    assert len(learned) == 8 and {i["flip"] for i in learned} == {"learned"}  # the base never says "yes"
    assert "qa: 8 learned" in (tmp_path / "run/report.md").read_text()
    page, errors = open_page(browser, tmp_path / "run/report.html")
    assert errors == []
    assert page.locator("svg.scatter").count() == 1 and page.locator("svg.scatter circle").count() == 2
    assert page.locator("#items tbody tr:not([hidden])").count() == 16  # 8 on each probe
    page.select_option("select[name=probe]", "again")
    assert page.locator("#items tbody tr:not([hidden])").count() == 8


def test_inline_data_cannot_end_its_script_element():
    text = inline_json({"q": "</script><!-- x & y"})
    assert "</" not in text and "<!--" not in text and json.loads(text) == {"q": "</script><!-- x & y"}
