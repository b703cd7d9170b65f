"""The typed run manifest: a manifest written before the schema (stored from a real run of the
continual study) still loads and reports the same numbers; the engine writes schema_version 2 and
refuses a record the schema does not describe; its stage hashes are still today's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from stagewise.engine.manifest import Manifest
from stagewise.manifest import SCHEMA_VERSION, RunManifest, as_manifest
from stagewise.report import build_report, continual_section
from stagewise.study.runner import cost

OLD = Path(__file__).parent / "fixtures" / "manifest-v1.json"


def test_a_manifest_written_before_the_schema_loads_with_its_numbers():
    raw = json.loads(OLD.read_text())
    assert "schema_version" not in raw
    manifest = as_manifest(raw)
    assert manifest.schema_version == 1 and [stage.name for stage in manifest.stages] == ["facts", "math", "sentiment"]
    last = manifest.stages[-1]
    assert last.status == "completed" and last.wall_time_s == raw["stages"][-1]["wall_time_s"]
    assert last.inputs.data[next(iter(raw["stages"][-1]["inputs"]["data"]))].rows > 0
    report = build_report(manifest)
    assert report == build_report(raw)
    for group in ("target", "retention"):
        for name, row in report["final"][group].items():
            assert row["after"] == raw["stages"][-1]["evaluation"][group][name]["score"]
    assert continual_section(manifest)["matrix"][-1] == report["continual"]["matrix"][-1]
    train, evaluate = cost(manifest)
    assert train == pytest.approx(sum(stage["wall_time_s"] for stage in raw["stages"]))
    assert evaluate == pytest.approx(
        raw.get("base_eval_time_s", 0.0) + sum(stage["eval_time_s"] for stage in raw["stages"])
    )
    manifest.stages[0].kl_to_entering = {"per_token": 0.1, "seconds": 12.5}  # the KL predictor's cost counts
    assert cost(manifest) == (train, pytest.approx(evaluate + 12.5))


def test_the_engine_writes_the_current_schema_and_refuses_a_bad_record(tmp_path):
    header = {"stagewise_version": "0.1.0", "recipe_path": None, "recipe": {}, "model": "tiny"}
    manifest = Manifest(tmp_path, header, {}, 1)
    entry = {"index": 0, "name": "sft", "config_hash": "abc", "status": "running",
             "inputs": {"model": "tiny", "data": {"d": {"source": "x.jsonl", "rows": 3, "fingerprint": "f"}}},
             "outputs": {"dir": str(tmp_path / "0-sft")}}
    manifest.set_stage(0, entry)
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert written["schema_version"] == SCHEMA_VERSION == 2
    assert written["stages"][0] == entry  # nothing added to what the engine recorded
    typed = RunManifest.model_validate(written)
    assert typed.stages[0].inputs.data["d"].rows == 3 and typed.stages[0].curve == []
    with pytest.raises(ValidationError, match="config_hash"):
        manifest.set_stage(0, {key: value for key, value in entry.items() if key != "config_hash"})
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"][0] == entry  # the good one is kept


def test_a_run_recorded_before_the_typed_schema_is_still_complete():
    """Its recipe, read today, hashes to the recorded stage hashes: an upgrade must not retrain
    finished runs (a default that became a typed entry once changed every plain stage's hash)."""
    from stagewise.config import Recipe
    from stagewise.data.loading import load_dataset_config
    from stagewise.engine.identity import stage_hashes

    raw = json.loads(OLD.read_text())
    recipe = Recipe.model_validate(raw["recipe"])
    datasets = {name: load_dataset_config(name, cfg) for name, cfg in recipe.datasets.items()}
    assert stage_hashes(recipe, datasets) == [stage["config_hash"] for stage in raw["stages"]]
