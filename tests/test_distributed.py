"""Two CPU processes (torchrun, gloo) run a 2-stage HFT -> TempBalance recipe and end with the
weights of a single-process run with the same global batch (fp reduction order aside); sharded
generation and SliCK categorization gather to exactly the single-process answers."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

ROWS = [{"instruction": a * 4, "output": b * 4} for a, b in ("ab", "cd", "ef", "gh")]  # equal lengths


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_process_run_matches_single_process(tmp_path):
    recipe = {
        "model": "tiny-llama",
        "datasets": {"d": {"format": "instruction", "template": "alpaca", "rows": ROWS}},
        "stages": [
            {"name": "hft", "data": "d", "trainable": "hft", "lr": 1e-2, "max_steps": 3, "batch_size": 2, "save_steps": 100},
            {"name": "full", "data": "d", "lr": 1e-2, "max_steps": 3, "batch_size": 2, "save_steps": 100,
             "lr_rule": {"kind": "tempbalance", "min_eigs": 20}},
        ],
        "output_dir": str(tmp_path / "ddp"),
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(["torchrun", "--nproc_per_node=2", "-m", "stagewise", "run", str(path)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "stagewise", "run", str(path), "stages.0.batch_size=4",
                             "stages.1.batch_size=4", f"output_dir={tmp_path / 'single'}"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    for stage in ("0-hft", "1-full"):
        a = load_file(str(tmp_path / "ddp" / stage / "model.safetensors"))
        b = load_file(str(tmp_path / "single" / stage / "model.safetensors"))
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < 1e-3, (stage, worst)
    manifest = yaml.safe_load((tmp_path / "ddp/manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["completed", "completed"]


SHARDED_GENERATION = """
import json, sys
from stagewise.config import ModelConfig
from stagewise.distributed import init_from_launcher, is_main_process, rank_and_size
from stagewise.generation import SamplingConfig, generate
from stagewise.models import load_model_and_tokenizer
from stagewise.probing import ProbeSettings, categorize, model_answerer

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


RESUMABLE_RUN = """
import sys
from transformers import TrainerCallback
from stagewise.config import load_recipe
from stagewise.engine import run_recipe

class CrashAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt

callbacks = [CrashAfterSave()] if sys.argv[2] == "crash" else []
run_recipe(load_recipe(sys.argv[1]), callbacks=callbacks, log=lambda message: None)
"""


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_process_run_killed_after_a_checkpoint_resumes_to_the_same_weights(tmp_path):
    script = tmp_path / "resumable.py"
    script.write_text(RESUMABLE_RUN)
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    finals = []
    for name, attempts in (("straight", ["go"]), ("killed", ["crash", "go"])):
        recipe = {
            "model": "tiny-llama",
            "datasets": {"d": {"format": "instruction", "template": "alpaca", "rows": ROWS}},
            "stages": [{"name": "hft", "data": "d", "trainable": "hft", "lr": 1e-2, "max_steps": 4,
                        "batch_size": 1, "save_steps": 2}],
            "output_dir": str(tmp_path / name),
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        for attempt in attempts:
            done = subprocess.run(["torchrun", "--nproc_per_node=2", str(script), str(path), attempt],
                                  capture_output=True, text=True, env=env, timeout=300)
            assert (done.returncode == 0) == (attempt == "go"), done.stderr[-3000:]
        finals.append(load_file(str(tmp_path / name / "0-hft/model.safetensors")))
    manifest = json.loads((tmp_path / "killed/manifest.json").read_text())
    assert manifest["stages"][0]["resumed_from"] == "checkpoint-2"
    straight, resumed = finals
    assert max(float((straight[k] - resumed[k]).abs().max()) for k in straight) < 1e-6


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
