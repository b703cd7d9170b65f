"""The stage engine: hand-over between stages, outputs, skip, invalidation and exact resume."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import CrashAfterSave, Snapshot, make_recipe, run
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

TWO_STAGES = [
    {"name": "sft", "data": "sft", "lr": 1e-2, "max_steps": 4, "batch_size": 2, "save_steps": 2},
    {"name": "top", "data": "sft", "trainable": {"kind": "layers", "indices": [-1]}, "lr": 1e-2,
     "max_steps": 3, "batch_size": 2},
]


def state_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def test_stage_two_starts_from_stage_one_exact_weights(tmp_path):
    snapshot = Snapshot()
    result = run(make_recipe(tmp_path, TWO_STAGES), [snapshot])
    saved = load_file(str(tmp_path / "run/0-sft/model.safetensors"))
    entering_stage_two = snapshot.states[1]
    for name, tensor in saved.items():
        assert torch.equal(tensor, entering_stage_two[name]), name
    assert not all(torch.equal(snapshot.states[0][n], snapshot.states[1][n]) for n in snapshot.states[0])
    assert result.manifest["stages"][1]["inputs"]["model"].endswith("0-sft")


def test_outputs_follow_hf_conventions_and_manifest(tmp_path):
    result = run(make_recipe(tmp_path, TWO_STAGES))
    stage_dir = tmp_path / "run/1-top"
    for name in ("model.safetensors", "config.json", "trainer_state.json", "train_results.json", "tokenizer.json"):
        assert (stage_dir / name).is_file(), name
    assert not list(stage_dir.glob("checkpoint-*"))
    reloaded = AutoModelForCausalLM.from_pretrained(stage_dir)
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, result.model.state_dict()[name]), name
    manifest = json.loads((tmp_path / "run/manifest.json").read_text())
    first, second = manifest["stages"]
    assert first["status"] == second["status"] == "completed"
    assert first["trainable_params"] == first["total_params"]
    assert 0 < second["trainable_params"] < second["total_params"]
    assert first["train_tokens"] > 0 and first["tokens_per_s"] > 0 and "train_loss" in first["metrics"]
    assert first["config_hash"] != second["config_hash"]
    assert first["inputs"]["data"]["sft"]["rows"] == 4


def test_rerun_skips_completed_stages_and_change_invalidates_later(tmp_path):
    logs: list[str] = []
    from stagewise.engine import run_recipe

    run(make_recipe(tmp_path, TWO_STAGES))
    first_weights = load_file(str(tmp_path / "run/0-sft/model.safetensors"))
    run_recipe(make_recipe(tmp_path, TWO_STAGES), log=logs.append)
    assert sum(line.startswith("[skip]") for line in logs) == 2
    changed = [dict(TWO_STAGES[0], lr=5e-3), TWO_STAGES[1]]
    logs.clear()
    run_recipe(make_recipe(tmp_path, changed), log=logs.append)
    assert not any(line.startswith("[skip]") for line in logs)
    assert not torch.equal(first_weights["lm_head.weight"],
                           load_file(str(tmp_path / "run/0-sft/model.safetensors"))["lm_head.weight"])
    logs.clear()
    run_recipe(make_recipe(tmp_path, [changed[0], dict(TWO_STAGES[1], lr=1e-3)]), log=logs.append)
    assert [line.split("'")[1] for line in logs if line.startswith("[skip]")] == ["sft"]
    assert any(line.startswith("[invalidate] stage 1") for line in logs)


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    reference = run(make_recipe(tmp_path / "a", TWO_STAGES))
    killed_dir = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        run(make_recipe(killed_dir, TWO_STAGES), [CrashAfterSave(step=2)])
    manifest = json.loads((killed_dir / "run/manifest.json").read_text())
    assert manifest["stages"][0]["status"] == "failed"
    assert (killed_dir / "run/0-sft/checkpoint-2").is_dir()
    resumed = run(make_recipe(killed_dir, TWO_STAGES))
    assert resumed.manifest["stages"][0]["resumed_from"] == "checkpoint-2"
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_classification_stage_on_encoder(tmp_path):
    from conftest import CLASSIFICATION_ROWS

    recipe = make_recipe(
        tmp_path, [{"name": "cls", "data": "cls", "lr": 1e-2, "max_steps": 2, "batch_size": 2, "eval": {"data": ["cls"]}}],
        model={"model_name_or_path": "tiny-bert", "task": "sequence_classification"},
        datasets={"cls": {"format": "classification", "rows": CLASSIFICATION_ROWS}},
    )
    result = run(recipe)
    assert result.model.config.id2label == {0: "neg", 1: "pos"}
    assert "eval_cls_loss" in result.manifest["stages"][0]["metrics"]


def test_model_task_mismatch_is_a_recipe_error_at_validation(tmp_path):
    """Found by `validate` as well as `run`: both accept exactly the same recipes."""
    from conftest import CLASSIFICATION_ROWS

    from stagewise.errors import RecipeError

    with pytest.raises(RecipeError, match="stages.0.data: classification data needs model.task: sequence_classification"):
        make_recipe(tmp_path, [{"name": "cls", "data": "cls"}],
                    datasets={"cls": {"format": "classification", "rows": CLASSIFICATION_ROWS}})
    assert not (tmp_path / "run").exists()


def test_select_best_keeps_the_dev_best_epoch(tmp_path):
    dev = [{"instruction": "say hi", "output": "hi"}]
    recipe = make_recipe(
        tmp_path, [{"name": "s", "data": "sft", "lr": 3e-2, "epochs": 4, "batch_size": 2,
                    "eval": {"data": ["dev"], "select_best": True}}],
        datasets={"sft": {"format": "instruction", "template": "alpaca", "rows": [
                      {"instruction": "say hi", "output": "zzzz qqqq"}] * 4},
                  "dev": {"format": "instruction", "template": "alpaca", "rows": dev}},
    )
    result = run(recipe)
    history = [r for r in json.loads((tmp_path / "run/0-s/trainer_state.json").read_text())["log_history"]
               if "eval_dev_loss" in r]
    per_epoch, final = history[:4], history[4]  # then the post-training eval of the restored model
    assert [r["epoch"] for r in per_epoch] == [1.0, 2.0, 3.0, 4.0]
    best = min(per_epoch, key=lambda r: r["eval_dev_loss"])
    assert final["eval_dev_loss"] == pytest.approx(best["eval_dev_loss"], rel=1e-6)
    metrics = result.manifest["stages"][0]["metrics"]
    assert metrics["best_epoch"] == best["epoch"]
    assert metrics["eval_dev_loss"] == pytest.approx(best["eval_dev_loss"], rel=1e-5)
