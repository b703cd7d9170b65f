"""Two CPU processes (torchrun, gloo) run a 2-stage HFT -> TempBalance recipe and end with the
weights of a single-process run with the same global batch (fp reduction order aside)."""
from __future__ import annotations

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
