"""stagewise removes or overwrites only what it wrote: a file a user puts in a stage folder stops a
rerun that would clear or resume that folder (one line, the file kept), user folders named like
checkpoints are never taken for one, study reports a user edited are not overwritten, and nothing is
written through a link out of the output folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import CrashAfterSave, make_recipe, run

from stagewise.errors import OutputError

STAGE = {"name": "s", "data": "sft", "lr": 1e-3, "max_steps": 4, "batch_size": 2, "save_steps": 2}


class Done:
    """What a command left: its exit status and what it printed."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli(*args: str, cwd: Path) -> Done:
    """The `stagewise` command, run in this process (a subprocess costs seconds of imports)."""
    import contextlib
    import io

    from stagewise.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(args))
    return Done(status, out.getvalue(), err.getvalue())


def recipe_file(tmp_path: Path, **stage: object) -> Path:
    recipe = {"model": "tiny-llama", "output_dir": str(tmp_path / "run"),
              "datasets": {"sft": {"format": "instruction", "rows": [{"instruction": "a", "output": "b"}] * 4}},
              "stages": [{**STAGE, **stage}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_users_file_in_a_finished_stage_folder_stops_a_changed_rerun_and_is_kept(tmp_path):
    path = recipe_file(tmp_path)
    assert cli("run", str(path), cwd=tmp_path).returncode == 0
    notes = tmp_path / "run/0-s/notes.txt"
    notes.write_text("x")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run/0-s").iterdir() if p.is_file()}
    done = cli("run", str(path), "stages.0.lr=0.002", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and "notes.txt" in done.stderr
    assert "stagewise did not write" in done.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "run/0-s").iterdir() if p.is_file()} == before
    assert cli("run", str(path), "stages.0.lr=0.002", "--force", cwd=tmp_path).returncode == 0  # --force takes over


def test_a_users_file_in_a_failed_stage_folder_is_kept(tmp_path):
    recipe = make_recipe(tmp_path, [STAGE])
    with pytest.raises(KeyboardInterrupt):
        run(recipe, callbacks=[CrashAfterSave(2)])
    (tmp_path / "run/0-s/notes.txt").write_text("x")
    changed = make_recipe(tmp_path, [{**STAGE, "lr": 2e-3}])
    with pytest.raises(OutputError, match="notes.txt, which stagewise did not write"):
        run(changed)
    assert (tmp_path / "run/0-s/notes.txt").read_text() == "x"
    assert (tmp_path / "run/0-s/checkpoint-2").is_dir()  # nothing was cleared


@pytest.mark.parametrize("name", ["checkpoint-keep", "checkpoint-999"])
def test_user_folders_named_like_checkpoints_are_never_resumed_or_removed(tmp_path, name):
    recipe = make_recipe(tmp_path, [STAGE])
    with pytest.raises(KeyboardInterrupt):
        run(recipe, callbacks=[CrashAfterSave(2)])
    mine = tmp_path / "run/0-s" / name
    mine.mkdir()
    (mine / "model.safetensors").write_text("mine")
    with pytest.raises(OutputError, match=f"{name}, which stagewise did not write"):
        run(recipe)
    assert (mine / "model.safetensors").read_text() == "mine"


def test_stagewise_own_leftovers_are_cleared_when_a_stage_changes(tmp_path):
    """An interrupted stage's checkpoint and a temp file of a killed write are stagewise's: a changed
    rerun clears them without --force."""
    recipe = make_recipe(tmp_path, [STAGE])
    with pytest.raises(KeyboardInterrupt):
        run(recipe, callbacks=[CrashAfterSave(2)])
    (tmp_path / "run/0-s/.checkpoint-4.tmp123").write_text("half")  # not recorded: not ours
    with pytest.raises(OutputError, match=r"\.checkpoint-4\.tmp123"):
        run(make_recipe(tmp_path, [{**STAGE, "lr": 2e-3}]))
    (tmp_path / "run/0-s/.checkpoint-4.tmp123").unlink()
    (tmp_path / "run/0-s/.checkpoint-2.tmp123").write_text("half")  # a temp of a recorded name: ours
    result = run(make_recipe(tmp_path, [{**STAGE, "lr": 2e-3}]))
    assert result.manifest["stages"][0]["status"] == "completed"
    assert not (tmp_path / "run/0-s/.checkpoint-2.tmp123").exists()


def test_links_in_the_output_folder_are_one_line_and_nothing_is_written_through_them(tmp_path):
    path = recipe_file(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    recipe["evaluation"] = {"target": [{"name": "t", "data": "sft", "metric": "contains", "max_new_tokens": 2}]}
    path.write_text(yaml.safe_dump(recipe))
    assert cli("run", str(path), cwd=tmp_path).returncode == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    import shutil

    shutil.rmtree(tmp_path / "run/eval")
    (tmp_path / "run/eval").symlink_to(outside)
    done = cli("run", str(path), "stages.0.lr=0.002", cwd=tmp_path)
    assert done.returncode == 2 and "run/eval: is a link" in done.stderr, done.stderr
    assert list(outside.iterdir()) == []
    (tmp_path / "run/eval").unlink()
    stage = tmp_path / "run/0-s"
    stage.rename(tmp_path / "moved")
    stage.symlink_to(tmp_path / "moved")
    done = cli("run", str(path), "stages.0.lr=0.002", cwd=tmp_path)
    assert done.returncode == 2 and "0-s: is a link" in done.stderr and "Traceback" not in done.stderr


def test_a_study_does_not_overwrite_reports_it_did_not_write(tmp_path):
    from stagewise.study.runner import check_reports
    from stagewise.written import Written

    (tmp_path / "study.md").write_text("my own notes")
    with pytest.raises(OutputError, match="study.md: stagewise did not write this file"):
        check_reports(tmp_path)
    (tmp_path / "study.md").unlink()
    written = Written(tmp_path)
    written.record("study.md")
    (tmp_path / "study.md").write_text("# study")
    written.record_content("study.md")
    check_reports(tmp_path)  # ours and unchanged: may be overwritten
    (tmp_path / "study.md").write_text("# study, with my edits")
    with pytest.raises(OutputError, match="or it was edited since"):
        check_reports(tmp_path)
    assert json.loads((tmp_path / ".stagewise-written.json").read_text())["names"]["study.md"]


def test_a_recipe_with_every_default_written_out_reuses_the_finished_run(tmp_path):
    """Hashes see settings that differ from their defaults, so a key that gains a default (here: every
    key written out at its default, as `stagewise validate` prints them) retrains nothing."""
    path = recipe_file(tmp_path)
    assert cli("run", str(path), cwd=tmp_path).returncode == 0
    full = cli("validate", str(path), cwd=tmp_path)
    assert full.returncode == 0 and "attn_implementation: auto" in full.stdout
    (tmp_path / "full.yaml").write_text(full.stdout)
    again = cli("run", str(tmp_path / "full.yaml"), cwd=tmp_path)
    assert again.returncode == 0 and "[skip] stage 0 's' already completed" in again.stderr, again.stderr


def test_too_little_free_space_for_a_save_is_one_line_with_exit_status_1(tmp_path, monkeypatch, capsys):
    import shutil as shutil_module
    from collections import namedtuple

    from stagewise.cli import main

    path = recipe_file(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda folder: usage(10**12, 10**12 - 1000, 1000))
    assert main(["run", str(path)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "saving the stage needs about" in error and "GiB are free" in error


def test_control_characters_in_an_error_are_printed_escaped(tmp_path, capsys):
    from stagewise.cli import main

    assert main(["run", str(tmp_path / "no\x00such\nrecipe.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\\x00" in err and "\\n" in err


def test_a_corrupted_checkpoint_is_not_resumed_from_and_the_stage_ends_as_uninterrupted(tmp_path):
    """Bits flipped in a sealed checkpoint's optimizer state (same size): its hash no longer matches,
    so it is removed with one log line and the stage restarts, ending at the uninterrupted weights."""
    import torch

    reference = run(make_recipe(tmp_path / "a", [STAGE]))
    recipe = make_recipe(tmp_path / "b", [STAGE])
    with pytest.raises(KeyboardInterrupt):
        run(recipe, callbacks=[CrashAfterSave(2)])
    optimizer = tmp_path / "b/run/0-s/checkpoint-2/optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    optimizer.write_bytes(bytes(data))
    from stagewise.engine import run_recipe

    logs: list[str] = []
    result = run_recipe(recipe, log=logs.append)
    assert any("checkpoint-2 is corrupted (optimizer.pt differs" in line for line in logs), logs
    assert result.manifest["stages"][0]["resumed_from"] is None
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(tensor, result.model.state_dict()[name]), name
