"""SIGKILL at every phase of a run, then rerun: the result equals the uninterrupted run's.

The killed run is a real process killed with SIGKILL (no cleanup, no exception handlers) at a
chosen point: mid-training, while a checkpoint is written, after a checkpoint is complete but
before it is marked so, while the final weights are written, during evaluation, and between a
manifest's temp file and its rename. Training on the tiny model is deterministic on CPU, so the
resumed weights must be bit-identical.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import INSTRUCTION_ROWS, run
from safetensors.torch import load_file

from stagewise.config import recipe_from_dict

HELPER = Path(__file__).with_name("kill_at.py")


def recipe_data(out: Path) -> dict:
    return {
        "model": "tiny-llama",
        "datasets": {"sft": {"format": "instruction", "template": "alpaca", "rows": INSTRUCTION_ROWS}},
        "stages": [
            {"name": "a", "data": "sft", "lr": 1e-2, "max_steps": 6, "batch_size": 2, "save_steps": 2},
            {"name": "b", "data": "sft", "lr": 1e-2, "max_steps": 4, "batch_size": 2, "save_steps": 2,
             "trainable": {"kind": "layers", "indices": [-1]}},
        ],
        "evaluation": {"retention": [{"name": "ppl", "data": "sft", "metric": "perplexity"}]},
        "output_dir": str(out),
    }


def weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {stage: load_file(str(out / stage / "model.safetensors")) for stage in ("0-a", "1-b")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reference") / "run"
    os.environ.setdefault("STAGEWISE_CACHE", str(out.parent / "cache"))
    result = run(recipe_from_dict(recipe_data(out)))
    return {"weights": weights(out), "report": json.loads((out / "report.json").read_text()), "manifest": result.manifest}


KILLS = [
    ("step", 3), ("step", 5),            # stage a between checkpoints
    ("checkpoint", 4),                   # checkpoint-4 has weights, no optimizer/state: skipped on resume
    ("seal", 4),                         # checkpoint-4 complete but unsealed; checkpoint-2 already rotated away
    ("final-save", 1),                   # stage a's model.safetensors half written
    ("final-save", 2),                   # stage b's
    ("eval", 1), ("eval", 2), ("eval", 3),  # base model, after stage a, after stage b
    ("manifest", 1), ("manifest", 3),    # first write (no manifest yet) and a later one
]


@pytest.mark.parametrize("phase,n", KILLS, ids=[f"{p}-{n}" for p, n in KILLS])
def test_sigkill_then_rerun_equals_uninterrupted_run(phase, n, tmp_path, reference):
    out = tmp_path / "run"
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps(recipe_data(out)))
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(HELPER.parent)}
    killed = subprocess.run([sys.executable, str(HELPER), str(recipe_file), phase, str(n)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]  # it really died by SIGKILL
    resumed = run(recipe_from_dict(recipe_data(out)))
    after = weights(out)
    for stage, tensors in reference["weights"].items():
        for name, tensor in tensors.items():
            assert torch.equal(tensor, after[stage][name]), (stage, name)
    statuses = [stage["status"] for stage in resumed.manifest["stages"]]
    assert statuses == ["completed", "completed"]
    report = json.loads((out / "report.json").read_text())
    assert report["stages"] == reference["report"]["stages"]
    assert not list(out.glob("*/checkpoint-*")), "checkpoints are removed once a stage is saved"
    assert not (out / ".stagewise.lock").exists()


class Hostile:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/stagewise-pwned",))


def test_a_resealed_checkpoint_with_a_malicious_rng_file_is_one_line_and_never_run(tmp_path, capsys):
    import pickle

    from stagewise.cli import main
    from stagewise.engine.checkpoints import SEAL, _digests

    out = tmp_path / "run"
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps(recipe_data(out)))
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(HELPER.parent)}
    killed = subprocess.run([sys.executable, str(HELPER), str(recipe_file), "step", "3"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoint = out / "0-a/checkpoint-2"
    rng = next(checkpoint.glob("rng_state*.pth"))
    rng.write_bytes(pickle.dumps(Hostile()))
    (checkpoint / SEAL).write_text(json.dumps({"step": 2, "files": _digests(checkpoint)}))  # resealed by hand
    Path("/tmp/stagewise-pwned").unlink(missing_ok=True)
    assert main(["run", str(recipe_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "checkpoint-2" in err and "never unpickles" in err, err
    assert not Path("/tmp/stagewise-pwned").exists()
    assert checkpoint.is_dir()  # kept for the user to look at
