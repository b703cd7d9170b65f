"""What the crash-safety mechanisms do (test_reliability.py checks the error lines): warmup
schedule, locks, verified outputs and caches, model identity by content, clipped evaluation
inputs, diverged stages, --force."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import INSTRUCTION_ROWS, make_recipe, run
from safetensors.torch import load_file, save_file
from transformers import TrainingArguments

from stagewise.engine import run_recipe
from stagewise.errors import OutputError

STAGE = {"name": "a", "data": "sft", "lr": 1e-2, "max_steps": 4, "batch_size": 2, "save_steps": 2}


@pytest.mark.parametrize("ratio,steps,expected", [(1.0, 100, 100), (0.1, 100, 10), (0.0, 100, 0), (0.5, 7, 4)])
def test_warmup_ratio_counts_a_share_of_the_steps(tmp_path, ratio, steps, expected):
    from stagewise.engine.stage import training_arguments

    recipe = make_recipe(tmp_path, [{**STAGE, "warmup_ratio": ratio}])
    args = training_arguments(recipe, recipe.stages[0], tmp_path / "s", TrainingArguments)
    assert args.get_warmup_steps(steps) == expected


def test_warmup_ratio_one_raises_the_lr_at_every_step(tmp_path):
    result = run(make_recipe(tmp_path, [{**STAGE, "warmup_ratio": 1.0, "logging_steps": 1}]))
    state = json.loads((tmp_path / "run/0-a/trainer_state.json").read_text())
    lrs = [record["learning_rate"] for record in state["log_history"] if "learning_rate" in record]
    assert len(lrs) == 4 and all(b > a for a, b in zip(lrs, lrs[1:])), lrs
    assert result.manifest["stages"][0]["status"] == "completed"


def test_stale_lock_is_taken_over_and_released(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".stagewise.lock").write_text(json.dumps({"pid": 4_000_000, "host": socket.gethostname(), "since": "x"}))
    logs: list[str] = []
    run_recipe(make_recipe(tmp_path, [STAGE]), log=logs.append)
    assert any(line.startswith("[lock] taking over") and "pid 4000000" in line for line in logs)
    assert not (out / ".stagewise.lock").exists()


def test_lock_file_naming_a_live_process_here_is_held(tmp_path):
    """A lock whose flock is free but whose recorded holder is alive on this host (a file system whose
    flock is not shared, a holder that lost its descriptor) refuses the second run; nothing is written."""
    import subprocess

    out = tmp_path / "run"
    out.mkdir()
    live = subprocess.Popen(["sleep", "60"])
    try:
        record = json.dumps({"pid": live.pid, "host": socket.gethostname(), "since": "x"})
        (out / ".stagewise.lock").write_text(record)
        with pytest.raises(OutputError, match=f"names a live process on this host \\(pid {live.pid}"):
            run_recipe(make_recipe(tmp_path, [STAGE]), log=lambda message: None)
    finally:
        live.kill()
        live.wait()
    assert sorted(p.name for p in out.iterdir()) == [".stagewise.lock"]
    assert (out / ".stagewise.lock").read_text() == record  # the holder's record is left as it was
    run_recipe(make_recipe(tmp_path, [STAGE]), log=lambda message: None)  # once it is gone, the lock is taken


def hold_lock_then_record(folder: str, record: str, start: Any, stale: bool) -> None:
    """One contender: wait for the start signal, try the lock, and record when it held it."""
    import os
    import time

    from stagewise.engine.run_folder import run_lock
    from stagewise.errors import OutputError

    start.wait()
    try:
        with run_lock(Path(folder), lambda message: None):
            with open(record, "a") as handle:
                handle.write(f"enter {os.getpid()}\n")
            time.sleep(0.02)
            with open(record, "a") as handle:
                handle.write(f"leave {os.getpid()}\n")
    except OutputError:
        pass


@pytest.mark.parametrize("stale", [False, True], ids=["fresh-folder", "over-a-stale-lock"])
def test_two_processes_started_together_never_both_hold_the_lock(tmp_path, stale):
    """100 pairs of processes started at the same instant (200 pairs over both cases): the record of
    who held the lock never shows two holders at once (the old lock let both in 18 of 20 times over a
    stale lock)."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    held = 0
    for trial in range(100):
        folder, record = tmp_path / f"t{trial}", tmp_path / f"t{trial}.log"
        folder.mkdir()
        if stale:
            (folder / ".stagewise.lock").write_text(json.dumps({"pid": 4_000_000, "host": socket.gethostname()}))
        start = context.Event()
        pair = [context.Process(target=hold_lock_then_record, args=(str(folder), str(record), start, stale))
                for _ in range(2)]
        for process in pair:
            process.start()
        start.set()
        for process in pair:
            process.join(timeout=30)
            assert process.exitcode == 0
        events = record.read_text().split("\n")[:-1] if record.exists() else []
        inside = 0
        for event in events:
            inside += 1 if event.startswith("enter") else -1
            assert inside <= 1, events
        held += len(events) // 2
    assert held >= 100  # every trial had a holder; a second one either waited its turn or was refused


def test_bit_flipped_stage_output_is_trained_again(tmp_path):
    stages = [STAGE, {**STAGE, "name": "b", "trainable": {"kind": "layers", "indices": [-1]}}]
    run(make_recipe(tmp_path, stages))
    weights_file = tmp_path / "run/0-a/model.safetensors"
    original = {n: t.clone() for n, t in load_file(str(weights_file)).items()}
    final = load_file(str(tmp_path / "run/1-b/model.safetensors"))
    data = bytearray(weights_file.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor: still a valid file, different weights
    weights_file.write_bytes(bytes(data))
    logs: list[str] = []
    run_recipe(make_recipe(tmp_path, stages), log=logs.append)
    assert any("[verify] stage 0 'a'" in line and "differs from what the stage wrote" in line for line in logs), logs
    for name, tensor in load_file(str(weights_file)).items():
        assert torch.equal(tensor, original[name]), name
    for name, tensor in load_file(str(tmp_path / "run/1-b/model.safetensors")).items():
        assert torch.equal(tensor, final[name]), name
    logs.clear()
    run_recipe(make_recipe(tmp_path, stages), log=logs.append)  # intact now: both reused
    assert sum(line.startswith("[skip]") for line in logs) == 2


def test_edited_or_truncated_transform_cache_is_computed_again(tmp_path):
    from stagewise.bundled import cache_dir
    from stagewise.transforms import cached

    calls = []

    def compute():
        calls.append(1)
        return {"rows": [1, 2, 3]}

    assert cached("demo", ["k"], compute) == {"rows": [1, 2, 3]}
    assert cached("demo", ["k"], compute) == {"rows": [1, 2, 3]} and len(calls) == 1
    [path] = (cache_dir() / "generations").glob("demo-*.json")
    stored = json.loads(path.read_text())
    stored["payload"]["rows"] = [9]
    path.write_text(json.dumps(stored))
    assert cached("demo", ["k"], compute) == {"rows": [1, 2, 3]} and len(calls) == 2
    path.write_text(path.read_text()[:10])
    assert cached("demo", ["k"], compute) == {"rows": [1, 2, 3]} and len(calls) == 3


def test_seed_model_identity_follows_weight_content_not_size_and_mtime(tmp_path):
    from stagewise.config import ModelConfig
    from stagewise.engine import identity
    from stagewise.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    recipe = make_recipe(tmp_path, [STAGE], model=str(folder))
    before = identity.seed_model_key(recipe)
    weights = folder / "model.safetensors"
    stat = weights.stat()
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert weights.stat().st_size == stat.st_size
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    identity._weights_sha256.cache_clear()  # a new process: the per-process memo starts empty
    assert identity.seed_model_key(recipe) != before


def test_huge_evaluation_row_is_clipped_and_counted(tmp_path):
    huge = {"instruction": "x" * 200_000, "output": "y"}  # unclipped: ~10^11 attention entries per head
    recipe = make_recipe(
        tmp_path, [STAGE],
        datasets={"sft": {"format": "instruction", "template": "alpaca", "rows": INSTRUCTION_ROWS},
                  "big": {"format": "instruction", "template": "alpaca", "rows": [huge, *INSTRUCTION_ROWS]}},
        evaluation={"target": [{"name": "big", "data": "big", "metric": "contains", "max_new_tokens": 4}],
                    "max_length": 64},
    )
    run(recipe)
    report = json.loads((tmp_path / "run/report.json").read_text())
    assert report["stages"][0]["target"]["big"]["truncated"] == 1
    assert "Prompts clipped to evaluation.max_length" in (tmp_path / "run/report.md").read_text()


def test_diverged_stage_is_failed_never_completed(tmp_path):
    from stagewise.errors import TrainingError

    recipe = make_recipe(tmp_path, [{**STAGE, "lr": 1e12, "max_grad_norm": 0, "logging_steps": 1}])
    with pytest.raises(TrainingError, match="training diverged"):
        run(recipe)
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert manifest["stages"][0]["status"] == "failed"
    assert not (tmp_path / "run/0-a/model.safetensors").exists()


def test_force_takes_over_a_foreign_folder_and_keeps_unrelated_files(tmp_path):
    from stagewise.errors import OutputError

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds files stagewise did not write"):
        run(make_recipe(tmp_path, [STAGE]))
    run_recipe(make_recipe(tmp_path, [STAGE]), log=lambda m: None, force=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "0-a/model.safetensors").is_file()


def test_evaluation_inside_training_is_off_the_training_clock(tmp_path):
    """A callback that spends time off the training clock (curve evaluation) and says so via
    ``off_clock_s`` does not count in the stage's wall time or tokens/s."""
    import time

    from transformers import TrainerCallback

    class Busy(TrainerCallback):
        def __init__(self, declare: bool) -> None:
            self.declare, self.off_clock_s = declare, 0.0

        def on_epoch_end(self, args, state, control, **kwargs):
            time.sleep(1.0)
            if self.declare:
                self.off_clock_s += 1.0

    stage = {**STAGE, "max_steps": -1, "epochs": 2}
    walls = {}
    for declare in (False, True):
        result = run(make_recipe(tmp_path / str(declare), [stage]), [Busy(declare)])
        walls[declare] = result.manifest["stages"][0]["wall_time_s"]
    assert walls[False] >= 2.0 and walls[True] < walls[False] - 1.5, walls


@pytest.fixture
def immutable(tmp_path):
    """Folders made immutable (``chattr +i``): not writable even by root, as a read-only mount would be."""
    import shutil
    import subprocess

    if shutil.which("chattr") is None:
        pytest.skip("chattr not available")
    made: list[Path] = []

    def freeze(path: Path) -> None:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("this filesystem or user cannot set the immutable flag")
        made.append(path)

    yield freeze
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, immutable):
    from stagewise.errors import OutputError

    out = tmp_path / "run"
    out.mkdir()
    immutable(out)
    recipe = make_recipe(tmp_path, [{"name": "s", "data": "sft", "max_steps": 1, "batch_size": 2}])
    with pytest.raises(OutputError, match=r"output_dir .*run: not writable \(Operation not permitted\)") as err:
        run(recipe)
    assert "\n" not in str(err.value) and list(out.iterdir()) == []


def test_a_finished_stage_that_cannot_be_cleared_is_one_line_and_kept(tmp_path, immutable):
    from stagewise.errors import OutputError

    stages = [{"name": "s", "data": "sft", "max_steps": 1, "batch_size": 2}]
    run(make_recipe(tmp_path, stages))
    stage_dir = tmp_path / "run/0-s"
    before = {p.name: p.read_bytes() for p in stage_dir.iterdir() if p.is_file()}
    immutable(stage_dir)
    with pytest.raises(OutputError, match=r"0-s.*cannot be (cleared|written)") as err:
        run(make_recipe(tmp_path, [{**stages[0], "lr": 2e-3}]))
    assert "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in stage_dir.iterdir() if p.is_file()} == before


def test_a_cache_folder_that_cannot_be_written_is_one_line(tmp_path, immutable, monkeypatch, capsys):
    """Even as root (an immutable folder refuses root too): exit 1, one line naming the folder and
    the setting that moves the cache, nothing written in the output folder."""
    import yaml

    from stagewise.cli import main

    cache = tmp_path / "frozen-cache"
    cache.mkdir()
    immutable(cache)
    monkeypatch.setenv("STAGEWISE_CACHE", str(cache))
    recipe = {"model": "tiny-llama", "datasets": {"d": {"format": "instruction", "builtin": "facts:train"}},
              "stages": [{"name": "s", "data": "d", "max_steps": 1, "batch_size": 2}],
              "output_dir": str(tmp_path / "run")}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "r.yaml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(cache) in err[0] and "STAGEWISE_CACHE" in err[0], err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
