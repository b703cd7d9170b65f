"""Every command's options are checked like recipe keys (typed, finite, in range) and every output
path before any work: one line naming the flag, exit 2, nothing written; a cache that cannot be
written is one line too."""
from __future__ import annotations

import pytest
import yaml

from stagewise.cli import main


def recipe(tmp_path, name="r.yaml", **top):
    data = {"model": "tiny-llama", "output_dir": str(tmp_path / "run"),
            "datasets": {"d": {"format": "instruction", "rows": [{"instruction": "a", "output": "b"}] * 2}},
            "stages": [{"name": "s", "data": "d", "max_steps": 1}],
            "evaluation": {"target": [{"name": "t", "data": "d", "metric": "contains", "max_new_tokens": 2}]}, **top}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"instruction": "q", "output": "a"}\n')
    return str(path)


def one_line(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


CASES = [
    ("eval-out-folder", lambda t: ["eval", "--model", "tiny-llama", "--suite", recipe(t), "--out", str(t)],
     "--out: is a folder"),
    ("eval-out-under-file", lambda t: ["eval", "--model", "tiny-llama", "--suite", recipe(t), "--out",
                                       str(t / "r.yaml" / "x.json")], "r.yaml is a file, not a folder"),
    ("compare-out-file", lambda t: ["compare", recipe(t), "--out", recipe(t, "other.yaml")], "--out: is a file"),
    ("compare-later-missing", lambda t: ["compare", recipe(t), str(t / "missing.yaml"), "--out", str(t / "c")],
     "missing.yaml: recipe file not found"),
    ("spectra-xmin-nan", lambda t: ["spectra", "tiny-llama", "--xmin-pos", "nan", "--out", str(t / "s.png")],
     "--xmin-pos"),
    ("spectra-xmin-zero", lambda t: ["spectra", "tiny-llama", "--xmin-pos", "0", "--out", str(t / "s.png")],
     "--xmin-pos: Input should be greater than 1"),
    ("spectra-min-eigs-negative", lambda t: ["spectra", "tiny-llama", "--min-eigs", "-3", "--out", str(t / "s.png")],
     "--min-eigs"),
    ("spectra-out-folder", lambda t: ["spectra", "tiny-llama", "--out", str(t)], "--out: is a folder"),
    ("spectra-out-no-extension", lambda t: ["spectra", "tiny-llama", "--out", str(t / "alphas")],
     "--out: expected an image file ending in .png"),
    ("audit-out-file", lambda t: ["audit", "--base", "tiny-llama", "--tuned", "tiny-llama", "--out", recipe(t)],
     "--out: is a file"),
    ("audit-negative-drop", lambda t: ["audit", "--base", "tiny-llama", "--tuned", "tiny-llama", "--fail-if-drop",
                                       "-0.1", "--out", str(t / "a")], "--fail-if-drop: Input should be greater"),
    ("audit-tiny-bootstrap", lambda t: ["audit", "--base", "tiny-llama", "--tuned", "tiny-llama", "--bootstrap", "5",
                                        "--out", str(t / "a")], "--bootstrap"),
    ("categorize-columns", lambda t: ["categorize", "--model", "tiny-llama", "--data", qa_file(t), "--columns", "qa",
                                      "--out", str(t / "c.jsonl")], "--columns"),
    ("categorize-zero-prompts", lambda t: ["categorize", "--model", "tiny-llama", "--data", qa_file(t),
                                           "--n-prompts", "0", "--out", str(t / "c.jsonl")], "--n-prompts"),
    ("categorize-negative-samples", lambda t: ["categorize", "--model", "tiny-llama", "--data", qa_file(t),
                                               "--samples", "-1", "--out", str(t / "c.jsonl")], "--samples"),
    ("categorize-nan-temperature", lambda t: ["categorize", "--model", "tiny-llama", "--data", qa_file(t),
                                              "--temperature", "nan", "--out", str(t / "c.jsonl")], "--temperature"),
    ("categorize-out-folder", lambda t: ["categorize", "--model", "tiny-llama", "--data", qa_file(t), "--out", str(t)],
     "--out: is a folder"),
]


@pytest.mark.parametrize("case, argv, expected", CASES, ids=[case[0] for case in CASES])
def test_bad_command_options_are_one_line_and_write_nothing(tmp_path, capsys, case, argv, expected):
    args = argv(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    one_line(capsys, args, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run folder, no output


def test_arms_with_no_names_is_one_line(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    arms = {"a": {"recipe": recipe(tmp_path)}, "b": {"recipe": recipe(tmp_path), "overrides": ["stages.0.lr=1e-3"]}}
    study.write_text(yaml.safe_dump({"arms": arms, "baseline": "a", "seeds": [0], "output_dir": str(tmp_path / "study")}))
    one_line(capsys, ["study", str(study), "--arms", ",,", "--dry-run"], "--arms: expected comma-separated arm names")


def test_a_cache_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("STAGEWISE_CACHE", str(tmp_path / "file" / "cache"))
    data = yaml.safe_load(open(recipe(tmp_path)))
    data["datasets"]["d"] = {"format": "instruction", "builtin": "facts:train"}  # built into the cache
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    status = main(["run", str(tmp_path / "r.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and err[-1].startswith("error: ") and "file/cache" in err[-1] and "Traceback" not in "\n".join(err)
