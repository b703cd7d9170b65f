"""The sharded test matrix: every selector, loss, regularizer, LR rule, transform, trainer and merge
that declares it runs on FSDP2 shards trains tiny-llama in one 2-process FSDP2 launch over gloo
(``torchrun``; all cases in one launch, since a launch costs seconds of imports), and ends within
fp32 tolerance of the 1-process run with the same global batch, with the same trainable count and
with the tensors it froze bit-identical to the entering model. A sharded run stopped after a
checkpoint resumes to the uninterrupted sharded run's weights; evaluation probes (generation, an
odd number of prompts) score as one process does; a 2-stage run hands whole weights on; the same
2-stage run data-parallel (DDP, unsharded) matches one process as well, and resumes. Entries that
declare they cannot run sharded are one line at ``validate``. ``pytest -k "fsdp or shard"`` selects these.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import CLASSIFICATION_ROWS, make_recipe, run
from safetensors.torch import load_file

from stagewise.config import recipe_from_dict
from stagewise.errors import RecipeError

from stagewise.registry import LOSSES, LR_RULES, MERGE_METHODS, REGULARIZERS, SELECTORS, TRAINERS, TRANSFORMS, load_plugins

load_plugins()
pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")

LM_ROWS = [{"instruction": a * 4, "output": b * 4} for a, b in ("ab", "cd", "ef", "gh")]  # equal token counts
SETTINGS = (("instruction", "causal_lm", LM_ROWS), ("classification", "sequence_classification", CLASSIFICATION_ROWS))
POINTS = {"trainable": SELECTORS, "loss": LOSSES, "regularizer": REGULARIZERS, "lr_rule": LR_RULES,
          "trainer": TRAINERS}
TINY_EXAMPLES = {"select": {"categories": ["Unknown"]},  # a random tiny model knows none of the rows
                 # on-policy replay keeps an answer whose last number equals the gold's: the golds have none, so
                 # the tiny model's number-free answers pass (by 'contains' it would reject them all); 4-token
                 # answers keep all 4 rows and equal token counts (1 row per rank and step)
                 "on_policy_replay": {"reward_rule": "last_integer", "max_new_tokens": 4}}
TOLERANCE = 5e-4  # fp32, 2 steps at lr 1e-2: reduction order differs (measured worst 1.5e-4, SDFT distill)


def served(entry: Any) -> tuple[str, str, list[dict[str, Any]]] | None:
    objective = {"instruction": "lm", "classification": "classification"}
    return next((s for s in SETTINGS if entry.requires.problem(objective[s[0]], {s[0]}, s[1]) is None), None)


def case_recipe(out: Path, stage: dict[str, Any], setting=SETTINGS[0], stages: int = 1, **top: Any) -> dict[str, Any]:
    """A one-stage (or ``stages``-stage) recipe, FSDP2 unless ``top`` says otherwise, 1 row per rank and step."""
    data_format, task, rows = setting
    base = {"data": "d", "lr": 1e-2, "max_steps": 2, "batch_size": 1, "save_steps": 100, "logging_steps": 1}
    return {"model": {"model_name_or_path": "tiny-llama", "task": task},
            "datasets": {"d": {"format": data_format, "rows": rows,
                               **({"template": "alpaca"} if data_format == "instruction" else {})}},
            "stages": [{"name": f"s{i}", **base, **stage} for i in range(stages)],
            "output_dir": str(out), **{"distributed": {"fsdp": True}, **top}}


def sharded_cases(root: Path) -> dict[str, dict[str, Any]]:
    """name -> {recipe, crash_step}; generated from the registries."""
    cases: dict[str, dict[str, Any]] = {}
    for field, registry in POINTS.items():
        for name in registry.names():
            entry = registry.get(name)
            setting = served(entry)
            if entry.requires.sharded and setting and name != "none":
                cases[f"{field}-{name}"] = {"recipe": case_recipe(root / f"{field}-{name}", {
                    field: {"kind": name, **entry.example}}, setting)}
    for name in TRANSFORMS.names():
        entry = TRANSFORMS.get(name)
        if entry.requires.sharded and served(entry) == SETTINGS[0]:
            cases[f"transform-{name}"] = {"recipe": case_recipe(root / f"transform-{name}", {
                "transforms": [{"kind": name, **entry.example, **TINY_EXAMPLES.get(name, {})}]})}
    for method in MERGE_METHODS.names():
        cases[f"merge-{method}"] = {"recipe": case_recipe(root / f"merge-{method}", {
            "merge": {"method": method, "alpha": 0.5}})}
    cases["two-stages"] = {"recipe": case_recipe(root / "two-stages", {"trainable": "hft"}, stages=2)}
    cases["two-stages"]["recipe"]["stages"][1].update(  # whole weights handed on; spectra of gathered matrices
        trainable="full", lr_rule={"kind": "tempbalance", "min_eigs": 16}, regularizer={"kind": "l2sp", "weight": 1.0})
    cases["evaluation"] = {"recipe": case_recipe(root / "evaluation", {}, evaluation={
        "target": [{"name": "t", "data": "probe", "metric": "contains", "max_new_tokens": 3}]})}
    cases["evaluation"]["recipe"]["datasets"]["probe"] = {"format": "instruction", "rows": LM_ROWS[:3]}
    cases["select-best"] = {"recipe": case_recipe(root / "select-best", {  # the best epoch's weights loaded back
        "max_steps": -1, "epochs": 2, "eval": {"data": ["d"], "select_best": True}})}
    cases["grad-accum"] = {"recipe": case_recipe(root / "grad-accum", {"grad_accum": 2})}  # 4 rows per step
    cases["ddp-two-stages"] = {"recipe": {**cases["two-stages"]["recipe"], "distributed": {},
                                          "output_dir": str(root / "ddp-two-stages")}}  # data-parallel, unsharded
    for engine, distributed in (("", {"fsdp": True}), ("ddp-", {})):
        for name, crash in ((f"{engine}resume-straight", None), (f"{engine}resume-killed", 2)):
            cases[name] = {"recipe": case_recipe(root / name, {"trainable": "hft", "max_steps": 4, "save_steps": 2},
                                                 distributed=distributed), "crash_step": crash}
    return cases


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> tuple[dict[str, dict[str, Any]], dict[str, str | None]]:
    """Every case, trained in one 2-process FSDP2 launch: (cases, error per case)."""
    root = tmp_path_factory.mktemp("sharded")
    cases = sharded_cases(root)
    (root / "cases.json").write_text(json.dumps([{"name": n, **c} for n, c in cases.items()]))
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "STAGEWISE_CACHE": str(root / "cache")}
    done = subprocess.run(["torchrun", "--nproc_per_node=2", str(Path(__file__).with_name("sharded_cases.py")),
                           str(root / "cases.json"), str(root / "results.json")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return cases, json.loads((root / "results.json").read_text())


def single_process(recipe: dict[str, Any], out: Path):
    """The same recipe in one process with the same global batch (2 rows per step)."""
    recipe = {**recipe, "output_dir": str(out), "distributed": {}}
    recipe["stages"] = [{**stage, "batch_size": 2} for stage in recipe["stages"]]
    return run(recipe_from_dict(recipe)).manifest


def weights(folder: Path) -> dict[str, Any]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


COMPARED = [name for name in sharded_cases(Path("cases")) if "resume" not in name]


@pytest.mark.parametrize("case", COMPARED)
def test_fsdp_run_matches_one_process(sharded, tmp_path, case):
    cases, errors = sharded
    assert errors[case] is None, errors[case]
    recipe = cases[case]["recipe"]
    single = single_process(recipe, tmp_path / "single")
    out = Path(recipe["output_dir"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"]] == ["completed"] * len(recipe["stages"])
    for index, (ours, theirs) in enumerate(zip(manifest["stages"], single["stages"])):
        assert ours["trainable_params"] == theirs["trainable_params"]
        a = weights(out / f"{index}-{ours['name']}")
        b = weights(tmp_path / "single" / f"{index}-{theirs['name']}")
        assert a.keys() == b.keys()
        worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
        assert worst < TOLERANCE, (ours["name"], worst)
        assert {k: v.dtype for k, v in a.items()} == {k: v.dtype for k, v in b.items()}
    if "evaluation" in recipe:  # the same results; each probe's wall seconds are its own
        assert untimed(manifest["stages"][-1]["evaluation"]) == untimed(single["stages"][-1]["evaluation"])


def untimed(evaluation: dict[str, Any]) -> dict[str, Any]:
    return {group: {name: {k: v for k, v in result.items() if k != "seconds"} for name, result in probes.items()}
            for group, probes in evaluation.items()}


def test_fsdp_frozen_tensors_stay_bit_identical(sharded):
    """HFT freezes half of each block: under FSDP2 those tensors leave the stage bit for bit as they entered."""
    cases, errors = sharded
    assert errors["trainable-hft"] is None
    out = Path(cases["trainable-hft"]["recipe"]["output_dir"])
    trained = weights(next(out.glob("0-*")))
    reference = Path(cases["trainable-full"]["recipe"]["output_dir"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert 0 < manifest["stages"][0]["trainable_params"] < manifest["stages"][0]["total_params"]
    from stagewise.config import ModelConfig
    from stagewise.models import load_model_and_tokenizer

    seed = dict(load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))[0].state_dict())
    unchanged = [k for k in trained if k in seed and bool((trained[k] == seed[k]).all())]
    moved = [k for k in trained if k in seed and not bool((trained[k] == seed[k]).all())]
    assert unchanged and moved  # some tensors frozen bit for bit, the trainable half moved
    assert reference.is_dir()


@pytest.mark.parametrize("engine", ["", "ddp-"], ids=["fsdp", "ddp"])
def test_fsdp_or_ddp_run_stopped_after_a_checkpoint_resumes_to_the_same_weights(sharded, engine):
    cases, errors = sharded
    names = (f"{engine}resume-straight", f"{engine}resume-killed")
    assert errors[names[0]] is None and errors[names[1]] is None
    straight, killed = (Path(cases[n]["recipe"]["output_dir"]) for n in names)
    assert json.loads((killed / "manifest.json").read_text())["stages"][0]["resumed_from"] == "checkpoint-2"
    a, b = weights(straight / "0-s0"), weights(killed / "0-s0")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_fsdp_saved_stage_loads_with_plain_transformers(sharded):
    cases, _ = sharded
    from transformers import AutoModelForCausalLM

    folder = Path(cases["two-stages"]["recipe"]["output_dir"]) / "1-s1"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) > 0


UNSHARDABLE = [(field, name) for field, registry in POINTS.items() for name in registry.names()
               if not registry.get(name).requires.sharded]


@pytest.mark.parametrize("field, name", UNSHARDABLE)
def test_unshardable_entries_are_one_line_under_fsdp(tmp_path, field, name):
    from test_matrix import DATA, MODELS, config_of, setting_for, trainer_for

    entry = POINTS[field].get(name)
    model, data_format = setting_for(entry, name if field == "trainer" else None)[0]
    trainer = trainer_for(data_format, MODELS[model], name if field == "trainer" else None)
    stage = {"name": "s", "data": "d", "trainer": config_of(TRAINERS.get(trainer))}
    if field != "trainer":
        stage[field] = config_of(entry)
    data = {"format": data_format, "rows": DATA[data_format], **({"template": "alpaca"} if data_format == "instruction" else {})}
    with pytest.raises(RecipeError, match=r"does not run on FSDP2 shards") as err:
        make_recipe(tmp_path, [stage], model={"model_name_or_path": model, "task": MODELS[model]},
                    datasets={"d": data}, distributed={"fsdp": True})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("distributed, expected", [
    ({"fsdp": True, "deepspeed": "zero2.json"}, "choose one sharding engine"),
    ({"deepspeed": "zero3.json"}, "ZeRO-3 shards the weights"),
])
def test_fsdp_and_zero3_conflicts_are_one_line(tmp_path, distributed, expected):
    for name, stage in (("zero2.json", 2), ("zero3.json", 3)):
        (tmp_path / name).write_text(json.dumps({"zero_optimization": {"stage": stage}}))
    distributed = {k: str(tmp_path / v) if k == "deepspeed" else v for k, v in distributed.items()}
    with pytest.raises(RecipeError, match=expected):
        make_recipe(tmp_path, [{"name": "s", "data": "sft"}], distributed=distributed)


def test_fsdp_with_epoch_evaluation_is_one_line(tmp_path):
    with pytest.raises(RecipeError, match=r"distributed\.fsdp: evaluation\.every: epoch"):
        make_recipe(tmp_path, [{"name": "s", "data": "sft"}], distributed={"fsdp": True},
                    evaluation={"every": "epoch", "target": [{"name": "t", "data": "sft", "metric": "contains"}]})


def test_fsdp_model_without_decoder_blocks_is_one_line():
    import torch

    from stagewise.sharding import shard_units

    with pytest.raises(RecipeError, match=r"^distributed\.fsdp: cannot find the transformer blocks of Sequential"):
        shard_units(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_fsdp_block_that_transformers_may_split_is_one_line():
    from stagewise.config import ModelConfig
    from stagewise.models import load_model_and_tokenizer
    from stagewise.sharding import shard_units

    model = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))[0]
    assert [type(u).__name__ for u in shard_units(model)] == ["LlamaDecoderLayer"] * len(model.model.layers)
    model._no_split_modules = ["LlamaAttention"]
    with pytest.raises(RecipeError, match=r"the repeated block LlamaDecoderLayer of LlamaForCausalLM is not one"):
        shard_units(model)


@pytest.mark.parametrize("stage, field, reason", [
    ({"regularizer": {"kind": "l2sp", "weight": 0.1}}, "regularizer", "DeepSpeed has already stepped"),
    ({"regularizer": {"kind": "ewc", "data": "sft"}}, "regularizer", "DeepSpeed has already stepped"),
    ({"optimizer": {"kind": "mofo", "fraction": 0.5}}, "optimizer", "1-D flat partitions"),
    ({"trainable": {"kind": "hft", "redraw": "per_epoch"}}, "trainable", "Adam's momentum"),
])
def test_what_would_do_nothing_under_deepspeed_is_refused_at_validate(tmp_path, stage, field, reason):
    """accelerate steps the DeepSpeed engine inside backward (a penalty's later gradient is lost), ZeRO
    hands the optimizer flat 1-D partitions (MoFO's per-matrix top-k skips them) and steps them whole
    (HFT's per-epoch freeze by withheld gradient leaks through momentum): refused, never silent."""
    (tmp_path / "zero2.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    distributed = {"deepspeed": str(tmp_path / "zero2.json")}
    with pytest.raises(RecipeError, match=rf"stages\.0\.{field}: .*would silently do nothing under DeepSpeed") as err:
        make_recipe(tmp_path, [{"name": "s", "data": "sft", **stage}], distributed=distributed)
    assert reason in str(err.value) and "\n" not in str(err.value)
    hft_per_stage = {"name": "s", "data": "sft", "trainable": {"kind": "hft"}}  # one draw per stage: runs there
    with pytest.raises(RecipeError, match="the deepspeed package is not installed"):  # (refused later, here only)
        make_recipe(tmp_path, [hft_per_stage], distributed=distributed)
