"""The command line: one-line errors with exit status 2, validate output, bundled recipes."""
from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
import yaml

from stagewise.cli import bundled_recipes, main
from stagewise.config import load_suite
from stagewise.errors import RecipeError


def recipe_file(tmp_path, **changes):
    data = {
        "description": "cli test",
        "model": "tiny-llama",
        "datasets": {"d": {"format": "text", "path": "d.jsonl"}},
        "stages": [{"name": "s", "data": "d", "max_steps": 1, "batch_size": 2}],
        "output_dir": str(tmp_path / "run"),
        **changes,
    }
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(4)))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_validate_prints_resolved_recipe_with_paths_relative_to_recipe(tmp_path, capsys):
    path = recipe_file(tmp_path)
    assert main(["validate", str(path), "stages.0.lr=2e-4"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["stages"][0]["lr"] == 2e-4
    assert resolved["stages"][0]["trainable"] == {"kind": "full"}
    assert resolved["datasets"]["d"]["path"] == str(tmp_path / "d.jsonl")


def test_run_end_to_end_prints_summary(tmp_path, capsys):
    assert main(["run", str(recipe_file(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "0-s" in out and "completed" in out
    assert (tmp_path / "run/0-s/model.safetensors").is_file()


def assert_one_line_error(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # progress lines ("[stage 0] ...") may precede the error
    assert last.startswith("error: ") and expected in last, err


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    assert_one_line_error(capsys, ["run", str(tmp_path / "none.yaml")], "recipe file not found")
    path = recipe_file(tmp_path, stages=[{"name": "s", "data": "d", "epochz": 1}])
    assert_one_line_error(capsys, ["validate", str(path)], "line 10: stages.0.epochz: unknown key (did you mean 'epochs'?")
    path = recipe_file(tmp_path, model="/no/such/model")
    assert_one_line_error(capsys, ["run", str(path)], "model.model_name_or_path: folder '/no/such/model' not found")
    path = recipe_file(tmp_path)
    (tmp_path / "d.jsonl").write_text('{"txt": "x"}\n')
    assert_one_line_error(capsys, ["run", str(path)], "d.jsonl line 1: field 'text' missing")
    assert_one_line_error(capsys, ["run", str(recipe_file(tmp_path)), "stages.0.lr=-1"],
                          "stages.0.lr: Input should be greater than 0")


def test_eval_scores_a_saved_checkpoint(tmp_path, capsys):
    path = recipe_file(tmp_path, evaluation={"target": [], "retention": [{"name": "ppl", "data": "d", "metric": "perplexity"}]})
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    out_file = tmp_path / "scores.json"
    assert main(["eval", "--model", str(tmp_path / "run/0-s"), "--suite", str(path), "--out", str(out_file)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out_file.read_text())["results"]["retention"]["ppl"]
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert saved["score"] == pytest.approx(report["stages"][0]["retention"]["ppl"]["after"], rel=1e-5)
    assert "ppl" in printed and "perplexity" in printed
    assert_one_line_error(capsys, ["eval", "--model", str(tmp_path / "nope"), "--suite", str(path)],
                          "model.model_name_or_path: folder")


def test_every_bundled_recipe_validates(capsys):
    recipes = bundled_recipes()
    assert "quickstart" in recipes
    for name, (path, description) in recipes.items():
        assert description, f"{name} has no description"
        assert main(["validate", str(path)]) == 0, name


def test_every_bundled_suite_loads_for_the_task_it_names():
    suites = sorted(Path(__file__).resolve().parents[1].joinpath("suites").glob("*.yaml"))
    assert suites
    for path in suites:
        task = re.search(r"--task (\S+)", path.read_text())  # the command its header shows
        suite = load_suite(path, task=task.group(1) if task else None)
        assert suite.description and suite.evaluation.target + suite.evaluation.retention, path.name
    with pytest.raises(RecipeError, match="needs model.task sequence_classification"):
        load_suite(next(p for p in suites if p.name == "preference-pairs.yaml"))  # reward-pair probes on a causal LM: one line before any model loads


def test_bad_strategy_inputs_are_one_line(tmp_path, capsys):
    path = recipe_file(tmp_path, stages=[{"name": "s", "data": "d", "transforms": [{"kind": "distil"}]}])
    assert_one_line_error(capsys, ["validate", str(path)],
                          "stages.0.transforms.0: unknown data transform 'distil' (did you mean 'distill'?)")
    path = recipe_file(tmp_path, stages=[{"name": "s", "data": "d", "transforms": [{"kind": "select"}]}])
    assert_one_line_error(capsys, ["validate", str(path)], "give either 'categories' or 'upgraded_from'")
    path = recipe_file(tmp_path, stages=[{"name": "s", "data": "d", "max_steps": 1,
                                          "trainable": {"kind": "lora", "lora_target": ["no_such_proj"]}}])
    assert_one_line_error(capsys, ["run", str(path)], "stages.0 's': trainable.lora_target: Target modules")
    path = recipe_file(tmp_path, stages=[{"name": "s", "data": "d", "lr_rule": {"kind": "tempbalance", "lr_map": "cubic"}}])
    assert_one_line_error(capsys, ["validate", str(path)], "stages.0.lr_rule.lr_map: Input should be 'linear' or 'block_sigmoid'")
    path = recipe_file(tmp_path, datasets={"d": {"format": "text", "builtin": "facts:train", "builtin_options": {"bogus": 1}}})
    assert_one_line_error(capsys, ["run", str(path)], "builtin 'facts': bad builder option")
    assert_one_line_error(capsys, ["spectra", str(tmp_path / "missing")], "folder")
    assert_one_line_error(capsys, ["categorize", "--model", "tiny-llama", "--data", str(tmp_path / "none.jsonl")],
                          "file")


@pytest.mark.parametrize("argv", [["--help"], ["spectra", "--help"], ["categorize", "--help"], ["study", "--help"]])
def test_help_lists_every_command_including_the_strategies_own(argv, capsys):
    from stagewise.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: stagewise")
    if argv == ["--help"]:
        assert all(name in out for name in ("run", "validate", "study", "spectra", "categorize"))


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), "no space left"),
    (OSError(errno.EFBIG, "File too large"), "a file reached the file-size limit"),
    (RuntimeError("Error while serializing: I/O error: File too large (os error 27)"), "a file reached the file-size"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk quota is exceeded"),
])
def test_a_full_disk_is_one_line_that_says_how_to_resume(monkeypatch, capsys, error, reason):
    def fail(args):
        raise error
    monkeypatch.setattr("stagewise.cli.cmd_validate", fail)
    assert main(["validate", "any.yaml"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {reason}") and "rerun" in err


def test_a_closed_stdout_ends_quietly(tmp_path):
    """`stagewise validate R | head -1`: the reader leaves; no traceback, the SIGPIPE status."""
    import subprocess
    import sys

    script = "import sys; from stagewise.cli import main; sys.exit(main(['validate', 'quickstart']))"
    reader = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()  # nobody reads: the first write fails with a broken pipe
    status, err = reader.wait(timeout=120), reader.stderr.read().decode()
    assert status == 141 and "Traceback" not in err and "BrokenPipe" not in err, (status, err)


def test_other_failures_are_not_mistaken_for_a_full_disk(monkeypatch):
    def fail(args):
        raise OSError(errno.EACCES, "Permission denied")
    monkeypatch.setattr("stagewise.cli.cmd_validate", fail)
    with pytest.raises(OSError, match="Permission denied"):
        main(["validate", "any.yaml"])
