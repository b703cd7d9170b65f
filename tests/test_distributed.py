"""Two CPU processes (torchrun, gloo): data-parallel generation and SliCK categorization gather to
exactly the single-process answers; a locked folder stops every rank. (Training with 2 processes,
data-parallel and FSDP2, against one process, and resuming: test_sharded.py, in one launch.)"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROWS = [{"instruction": a * 4, "output": b * 4} for a, b in ("ab", "cd", "ef", "gh")]  # equal lengths


SHARDED_GENERATION = """
import json, sys
from stagewise.config import ModelConfig
from stagewise.distributed import init_from_launcher, is_main_process, rank_and_size
from stagewise.generation import SamplingConfig, generate
from stagewise.models import load_model_and_tokenizer
from stagewise.strategies.gradual.slick import ProbeSettings, categorize, model_answerer

init_from_launcher()
model, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
prompts = [tokenizer("x" * n)["input_ids"] for n in range(1, 8)]
sampling = SamplingConfig(max_new_tokens=5, do_sample=True, num_return_sequences=3, seed=1)
items = [{"instruction": f"q{i}", "output": "ab"} for i in range(5)]
result = {"world": rank_and_size()[1], "generated": generate(model, tokenizer, prompts, sampling, batch_size=6),
          "categories": categorize(items, ProbeSettings(n_prompts=2, shots=2, samples=3, max_new_tokens=4),
                                   model_answerer(model, tokenizer, batch_size=8))}
if is_main_process():
    open(sys.argv[1], "w").write(json.dumps(result))
"""


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_sharded_generation_gathers_the_single_process_answers_in_order(tmp_path):
    script = tmp_path / "generate.py"
    script.write_text(SHARDED_GENERATION)
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(["torchrun", "--nproc_per_node=2", str(script), str(tmp_path / "ddp.json")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "single.json")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp_result, single_result = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("ddp", "single"))
    assert (ddp_result["world"], single_result["world"]) == (2, 1)
    assert ddp_result["generated"] == single_result["generated"]
    assert ddp_result["categories"] == single_result["categories"]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_a_locked_folder_stops_every_rank_of_a_two_process_run(tmp_path):
    """Rank 0 takes the lock and tells the other ranks: while another run holds it, both ranks stop
    with the one line (no rank trains on, none waits forever at a collective)."""
    import fcntl
    import socket

    out = tmp_path / "run"
    out.mkdir()
    recipe = {"model": "tiny-llama", "datasets": {"d": {"format": "instruction", "template": "alpaca", "rows": ROWS}},
              "stages": [{"name": "s", "data": "d", "max_steps": 1, "batch_size": 2}], "output_dir": str(out)}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    fd = os.open(out / ".stagewise.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}).encode())
    try:
        env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
        done = subprocess.run(["torchrun", "--nproc_per_node=2", "-m", "stagewise", "run", str(path)],
                              capture_output=True, text=True, env=env, timeout=180)
    finally:
        os.close(fd)
    assert done.returncode != 0
    assert done.stderr.count("in use by another stagewise run") == 2, done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [".stagewise.lock"]  # nothing written


def test_the_process_group_gets_the_recipes_collective_timeout(monkeypatch, tmp_path):
    """The group is started before the Trainer exists, so its timeout comes from distributed.timeout_s,
    and the Trainer's ddp_timeout is the same value."""
    from datetime import timedelta

    import accelerate

    from conftest import make_recipe
    from stagewise.distributed import init_from_launcher
    from stagewise.engine.stage import training_arguments
    from transformers import TrainingArguments

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "PartialState", lambda **kwargs: seen.update(kwargs))
    recipe = make_recipe(tmp_path, [{"name": "s", "data": "sft", "max_steps": 1}], distributed={"timeout_s": 7200})
    init_from_launcher(recipe.distributed.timeout_s)
    assert seen == {"timeout": timedelta(seconds=7200)}
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert training_arguments(recipe, recipe.stages[0], tmp_path / "s", TrainingArguments).ddp_timeout == 7200


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_what_rank_0_refuses_under_torchrun_is_one_line_on_every_rank(tmp_path):
    """Checks rank 0 makes alone (the output folder, what is in a stage folder) stop every rank with
    the same line: no rank is left waiting at a collective, none prints a traceback."""
    recipe = {"model": "tiny-llama", "datasets": {"d": {"format": "instruction", "template": "alpaca", "rows": ROWS}},
              "stages": [{"name": "s", "data": "d", "max_steps": 1, "batch_size": 2}]}
    (tmp_path / "a-file").write_text("x")
    stage_dir = tmp_path / "run/0-s"
    stage_dir.mkdir(parents=True)
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    for output_dir, expected in ((tmp_path / "a-file", "is a file, expected a folder"),
                                 (tmp_path / "run", "holds files stagewise did not write")):
        (stage_dir / "notes.txt").write_text("mine")
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump({**recipe, "output_dir": str(output_dir)}))
        done = subprocess.run(["torchrun", "--nproc_per_node=2", "-m", "stagewise", "run", str(path)],
                              capture_output=True, text=True, env=env, timeout=180)
        assert done.returncode != 0
        assert done.stderr.count(expected) == 2, done.stderr[-3000:]
        assert "[rank0]: Traceback" not in done.stderr and "[rank1]: Traceback" not in done.stderr, done.stderr[-3000:]
    assert (stage_dir / "notes.txt").read_text() == "mine"


def test_a_temp_file_left_by_a_killed_journal_write_is_stagewise_s(tmp_path):
    from stagewise.written import JOURNAL, Written

    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / JOURNAL).write_text('{"names": {}}')
    (folder / f".{JOURNAL}.kungtz_a").write_text("half")
    (folder / "notes.txt").write_text("mine")
    assert Written(folder).foreign() == ["notes.txt"]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_a_run_whose_rank_0_was_killed_resumes_when_started_again(tmp_path):
    """SIGKILL rank 0 (the lock holder) of a 2-process run once it has a checkpoint; torchrun stops
    the other rank; the same command then resumes from a checkpoint and completes."""
    import signal
    import time

    recipe = {"model": "tiny-llama", "datasets": {"d": {"format": "instruction", "template": "alpaca", "rows": ROWS}},
              "stages": [{"name": "s", "data": "d", "max_steps": 400, "batch_size": 2, "save_steps": 5}],
              "output_dir": str(tmp_path / "run")}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    command = ["torchrun", "--nproc_per_node=2", "-m", "stagewise", "run", str(path)]
    launch = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while not list((tmp_path / "run/0-s").glob("checkpoint-*/stagewise-complete.json")) and time.time() < deadline:
        time.sleep(0.2)
    ranks = [int(pid) for pid in subprocess.run(["pgrep", "-f", "--", f"-m stagewise run {path}"], capture_output=True,
                                                 text=True).stdout.split()]
    rank0 = next(pid for pid in ranks if b"RANK=0" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    os.kill(rank0, signal.SIGKILL)
    assert launch.wait(timeout=120) != 0
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    assert manifest["stages"][0]["status"] == "completed"
    assert manifest["stages"][0]["resumed_from"].startswith("checkpoint-")
