"""`stagewise plan`: counts from the meta model equal the engine's, the formulas by hand, the
verdict and its cheapest fix on the shipped 8B/70B configs, the estimate within ±15% of the peak
memory a real run measures, and bad input as one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_recipe, run

from stagewise.plan import load_model_config, parse_memory, plan_recipe
from stagewise.plan.footprint import quantized_weight_bytes

CONFIGS = Path(__file__).resolve().parents[1] / "src/stagewise/plan/configs"
STAGE = {"name": "s", "data": "sft", "max_steps": 2, "batch_size": 2}


@pytest.mark.parametrize("trainable", ["full", "hft", {"kind": "layers", "indices": [-1]},
                                       {"kind": "lora", "lora_rank": 4}, "head"])
def test_planned_trained_elements_equal_the_engines_count(tmp_path, trainable):
    recipe = make_recipe(tmp_path, [{**STAGE, "trainable": trainable}])
    [plan] = plan_recipe(recipe, load_model_config(recipe.model))
    entry = run(recipe).manifest["stages"][0]
    assert plan.train.trainable == entry["trainable_params"]
    assert plan.train.total == entry["total_params"]


def test_full_fine_tuning_parts_by_hand(tmp_path):
    """fp32 AdamW: weights 4, gradients 4, moments 8 bytes per element."""
    recipe = make_recipe(tmp_path, [STAGE])
    [plan] = plan_recipe(recipe, load_model_config(recipe.model), seq_len=16)
    n = plan.train.total
    assert plan.train.parts["weights"] == 4 * n
    assert plan.train.parts["gradients"] == 4 * n
    assert plan.train.parts["optimizer"] == 8 * n


def test_the_forgetting_predictors_reference_model_is_planned_where_it_is_measured(tmp_path):
    """After a scored stage the KL to the entering model reloads that model beside the tuned one."""
    probes = {"target": [{"name": "t", "data": "sft", "metric": "answer_logprob"}]}
    config = load_model_config(make_recipe(tmp_path, [STAGE]).model)
    [measured] = plan_recipe(make_recipe(tmp_path, [STAGE], evaluation=probes), config)
    assert measured.generation.parts["KL reference model"] == measured.generation.parts["weights"] > 0
    [off] = plan_recipe(make_recipe(tmp_path, [STAGE], evaluation={**probes, "kl_prompts": 0}), config)
    assert off.generation.parts["KL reference model"] == 0
    assert measured.generation.peak - off.generation.peak == measured.generation.parts["weights"]


def test_mixed_precision_and_quantized_weights_by_hand(tmp_path):
    model = {"model_name_or_path": "tiny-llama", "dtype": "bfloat16"}
    recipe = make_recipe(tmp_path, [{**STAGE, "trainable": {"kind": "layers", "indices": [-1], "with_head": False}}],
                         model=model, performance={"precision": "bf16-mixed"})
    [plan] = plan_recipe(recipe, load_model_config(recipe.model))
    trained, total = plan.train.trainable, plan.train.total
    assert plan.train.parts["weights"] == 2 * (total - trained) + 4 * trained  # fp32 masters of the trained block
    assert quantized_weight_bytes(64 * 128, 64, 4, double_quant=False) == 64 * 128 / 2 + 64 * 128 / 64 * 4
    assert quantized_weight_bytes(64 * 128, 64, 8, double_quant=False) == 64 * 128 + 4 * 64


def test_the_shipped_configs_get_a_verdict_and_the_cheapest_fix(tmp_path):
    recipe = make_recipe(tmp_path, [STAGE])
    eight = load_model_config(recipe.model, str(CONFIGS / "llama-3-8b.json"))
    [full] = plan_recipe(recipe, eight, device_memory=parse_memory("80GB"))
    assert full.train.total == 8_030_261_248 and not full.fits and full.suggestion.startswith("an 8-bit optimizer")
    mofo = make_recipe(tmp_path, [{**STAGE, "optimizer": "mofo"}])  # its own optimizer: `optim` is not a fix
    [own] = plan_recipe(mofo, eight, device_memory=parse_memory("80GB"))
    assert own.train.parts["optimizer"] == full.train.parts["optimizer"]  # AdamW's two fp32 moments
    assert not own.suggestion.startswith("an 8-bit optimizer") and own.suggestion.startswith("LoRA")
    lora = make_recipe(tmp_path, [{**STAGE, "trainable": "lora"}])
    [adapter] = plan_recipe(lora, eight, device_memory=parse_memory("80GB"))
    assert adapter.fits
    seventy = load_model_config(recipe.model, str(CONFIGS / "llama-3-70b.json"))
    [big] = plan_recipe(lora, seventy, device_memory=parse_memory("80GB"))
    assert not big.fits and big.suggestion.startswith("QLoRA")
    [sharded] = plan_recipe(recipe, seventy, device_memory=parse_memory("80GB"), devices=16)
    assert sharded.train.parts["weights"] == pytest.approx(full.train.parts["weights"] * 70.55 / 8.03 / 16, rel=0.01)


def test_the_plan_is_within_15_percent_of_a_measured_run(tmp_path):
    """A 20M-parameter Llama (random, local folder) trains 3 full AdamW steps in a fresh process;
    its peak resident memory over the memory before the run is compared with the plan."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from stagewise.models import byte_tokenizer

    folder = tmp_path / "model"
    config = LlamaConfig(vocab_size=272, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                         num_attention_heads=8, num_key_value_heads=8, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    rows = [{"instruction": f"question number {i} " * 6, "output": f"answer {i} " * 6} for i in range(16)]
    recipe = {"model": str(folder), "datasets": {"d": {"format": "instruction", "template": "alpaca", "rows": rows}},
              "stages": [{"name": "s", "data": "d", "max_steps": 3, "batch_size": 8, "save_steps": 100}],
              "output_dir": str(tmp_path / "run")}
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    done = subprocess.run([sys.executable, str(script), json.dumps(recipe)], capture_output=True, text=True,
                          env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "TQDM_DISABLE": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    planned, measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.85 < measured / planned < 1.15, (planned / 2**20, measured / 2**20)


MEASURE = """
import json, sys
from pathlib import Path
from stagewise.config import recipe_from_dict
from stagewise.data import encode_dataset, load_dataset_config
from stagewise.engine import run_recipe
from stagewise.models import byte_tokenizer
from stagewise.plan import load_model_config, plan_recipe

def status(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return float(line.split()[1]) * 1024

recipe = recipe_from_dict(json.loads(sys.argv[1]))
rows = load_dataset_config("d", recipe.datasets["d"]).rows
longest = max(len(e["input_ids"]) for e in encode_dataset(rows, "instruction", byte_tokenizer(), template="alpaca"))
[plan] = plan_recipe(recipe, load_model_config(recipe.model), seq_len=longest)
before = status("VmRSS")
run_recipe(recipe, log=lambda message: None)
print(json.dumps([plan.peak, status("VmHWM") - before]))
"""


@pytest.mark.parametrize("arguments, message", [
    (["--model", "nobody-here/no-such-model-xyz"], "--model: cannot read the config of 'nobody-here/no-such-model-xyz'"),
    (["--device-memory", "lots"], "--device-memory: expected a size such as 80GB"),
    (["--devices", "0"], "--devices: expected a whole number >= 1"),
    (["--seq-len", "-3"], "--seq-len: expected a whole number >= 1"),
])
def test_bad_plan_arguments_are_one_line(tmp_path, capsys, arguments, message):
    from stagewise.cli import main

    assert main(["plan", str(recipe_file(tmp_path)), *arguments]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


LLAMA_8B = json.loads((CONFIGS / "llama-3-8b.json").read_text())


@pytest.mark.parametrize("config, message", [
    ("[1, 2]", "expected a JSON object with a model_type"),
    ('"llama"', "expected a JSON object with a model_type"),
    ("{oops", "invalid JSON"),
    ("[" * 100000 + "]" * 100000, "JSON nested too deeply"),
    (json.dumps({**LLAMA_8B, "hidden_size": "big"}), "hidden_size: Input should be a valid integer"),
    (json.dumps({**LLAMA_8B, "hidden_size": 4096.0}), "hidden_size: Input should be a valid integer"),
    (json.dumps({**LLAMA_8B, "num_attention_heads": 0}), "num_attention_heads: Input should be greater than"),
    (json.dumps({**LLAMA_8B, "vocab_size": 10**30}), "vocab_size: Input should be less than or equal to 16777216"),
    (json.dumps({**LLAMA_8B, "num_hidden_layers": 2000}), "num_hidden_layers: Input should be less than or equal"),
    (json.dumps({**LLAMA_8B, "torch_dtype": "float97"}), "float97"),
    (json.dumps(LLAMA_8B)[:-1] + ', "x": ' + "9" * 5000 + "}", "an integer of 5000 digits"),
    (json.dumps(LLAMA_8B).replace("500000.0", "NaN"), "NaN is not a JSON number"),
], ids=["list", "string", "not-json", "deep", "hidden-text", "hidden-float", "no-heads", "vocab-1e30", "2000-layers",
        "bad-dtype", "5000-digits", "nan"])
def test_a_malformed_model_config_is_one_line_and_quick(tmp_path, capsys, config, message):
    import time

    from stagewise.cli import main

    path = tmp_path / "config.json"
    path.write_text(config)
    started = time.perf_counter()
    assert main(["plan", str(recipe_file(tmp_path)), "--model", str(path), "--device-memory", "80GB"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --model") and message in err[0], err
    assert time.perf_counter() - started < 30


def test_a_400_digit_device_memory_is_refused(tmp_path, capsys):
    from stagewise.cli import main

    assert main(["plan", str(recipe_file(tmp_path)), "--device-memory", "9" * 400 + "GB"]) == 2
    assert "at most 1024TiB" in capsys.readouterr().err


def test_plan_command_prints_each_stage(tmp_path, capsys):
    from stagewise.cli import main

    assert main(["plan", str(recipe_file(tmp_path)), "--model", str(CONFIGS / "qwen2.5-7b.json"),
                 "--device-memory", "24GB"]) == 0
    out = capsys.readouterr().out
    assert "stage 0 's'" in out and "does NOT fit" in out and "GiB" in out and "7,615,616,512 of" in out


def recipe_file(tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": "tiny-llama", "output_dir": str(tmp_path / "run"), "stages": [STAGE],
                                    "datasets": {"sft": {"format": "instruction", "rows": [{"instruction": "a",
                                                                                            "output": "b"}]}}}))
    return path


def test_no_suggested_fix_is_one_validate_refuses(tmp_path):
    """A LoRA stage cannot be sharded: where only FSDP would fit, the plan says so instead of
    suggesting it; a full fine-tune's FSDP suggestion validates as written."""
    from stagewise.plan import FIXES, KL_OFF, change_overrides, refusal

    lora = make_recipe(tmp_path, [{**STAGE, "trainable": "lora"}], model={"model_name_or_path": "tiny-llama",
                                                                          "quantization": {"bits": 4}})
    seventy = load_model_config(lora.model, str(CONFIGS / "llama-3-70b.json"))
    [qlora] = plan_recipe(lora, seventy, device_memory=parse_memory("24GB"))
    assert qlora.suggestion.startswith("none that validate accepts (") and "devices with FSDP would fit" in qlora.suggestion
    assert "does not run on FSDP2 shards" in qlora.suggestion  # (at 24 GB even the 4-bit weights alone do not fit)
    full = make_recipe(tmp_path, [STAGE])
    [big] = plan_recipe(full, seventy, device_memory=parse_memory("80GB"))
    assert big.suggestion.startswith("QLoRA (model.quantization: {bits: 4}, trainable: lora) and gradient")
    assert refusal(full, {**dict(FIXES)[big.suggestion.removesuffix(KL_OFF)], "kl_off": True}) is None
    from stagewise.config import load_recipe

    quick = load_recipe(Path(__file__).resolve().parents[1] / "recipes/qlora.yaml")  # measures the KL: its copy
    [seventy_qlora] = plan_recipe(quick, seventy, device_memory=parse_memory("80GB"))  # is what does not fit
    assert seventy_qlora.suggestion == "gradient checkpointing (performance.gradient_checkpointing: true)" + KL_OFF
    assert refusal(full, {"devices": 16, "checkpointing": True}) is None
    assert change_overrides(full, {"devices": 16, "checkpointing": True}) == [
        "performance.gradient_checkpointing=true", "distributed.fsdp=true"]
