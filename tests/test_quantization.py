"""QLoRA and 8-bit LoRA on a bitsandbytes base (CPU kernels of bitsandbytes >= 0.49): the base's
linear layers load 4/8-bit, only the adapter trains, the stage folder reloads with plain
transformers + peft (+ bitsandbytes) to the same logits, a killed run resumes bit-identically,
``merge_on_save`` merges into the dequantized base, and what cannot train a quantized base is one
line at ``validate``."""
from __future__ import annotations

import pytest
import torch
import yaml
from conftest import CrashAfterSave, make_recipe, run

bnb = pytest.importorskip("bitsandbytes")

PROBE = torch.tensor([[1, 50, 60, 70, 80, 90, 100]])
LORA = {"kind": "lora", "lora_rank": 4}


def stages(**selector: object) -> list[dict]:
    return [{"name": "s", "data": "sft", "lr": 1e-2, "max_steps": 6, "batch_size": 2, "save_steps": 3,
             "trainable": {**LORA, **selector}}]


def quantized(bits: int = 4) -> dict:
    return {"model_name_or_path": "tiny-llama", "quantization": {"bits": bits}}


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=PROBE).logits


def test_qlora_trains_only_the_adapter_reloads_with_plain_libraries_and_resumes(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = run(make_recipe(tmp_path / "a", stages(), model=quantized()))
    model = result.model
    layer = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_type == "nf4"
    entry = result.manifest["stages"][0]
    assert 0 < entry["trainable_params"] < entry["total_params"]
    assert [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n] == []
    expected = logits(model)

    folder = tmp_path / "a/run/0-s"
    base = AutoModelForCausalLM.from_pretrained(folder)  # quantization_config is in config.json
    assert isinstance(base.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    reloaded = logits(PeftModel.from_pretrained(base, folder / "adapter"))
    # bitsandbytes' own CPU inference kernel (on an AVX512-BF16 CPU) computes in bf16: equal up to that rounding
    assert torch.allclose(reloaded, expected, atol=5e-3), float((reloaded - expected).abs().max())

    crashed = make_recipe(tmp_path / "b", stages(), model=quantized())
    with pytest.raises(KeyboardInterrupt):
        run(crashed, callbacks=[CrashAfterSave(3)])
    resumed = run(crashed)
    assert resumed.manifest["stages"][0]["resumed_from"] == "checkpoint-3"
    assert torch.equal(logits(resumed.model), expected)


def test_the_quantized_base_stays_bit_identical_while_the_adapter_moves(tmp_path):
    from stagewise.config import ModelConfig
    from stagewise.models import load_model_and_tokenizer

    fresh, _ = load_model_and_tokenizer(ModelConfig.model_validate(quantized()))
    result = run(make_recipe(tmp_path, stages(), model=quantized()))
    trained = dict(result.model.get_base_model().named_parameters())
    for name, param in fresh.named_parameters():
        key = name.replace("q_proj.weight", "q_proj.base_layer.weight")
        if "q_proj" in name:
            assert torch.equal(trained[key].data, param.data), name
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # LoRA's B starts at zero: it moved


@pytest.mark.parametrize("bits", [4, 8])
def test_merge_on_save_merges_into_the_dequantized_base(tmp_path, bits):
    """The merged folder is a plain model whose logits equal base + adapter up to the quantized
    kernels' own rounding (PEFT's merge would requantize the sum to 4 bits)."""
    from transformers import AutoModelForCausalLM

    adapter = run(make_recipe(tmp_path / "a", stages(), model=quantized(bits)))
    merged = run(make_recipe(tmp_path / "m", stages(merge_on_save=True), model=quantized(bits)))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m/run/0-s")
    assert type(plain.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert not hasattr(plain.config, "quantization_config")
    expected = logits(adapter.model)
    assert float((logits(plain) - expected).abs().max()) < 0.1 * float(expected.std())
    assert torch.equal(logits(plain), logits(merged.model))


def test_a_qlora_stage_keeps_the_dtype_the_base_was_loaded_in(tmp_path):
    """PEFT's k-bit preparation upcasts the unquantized tensors to fp32 for training; the stage's outputs
    (and merge_on_save's dequantized weights) still come out in the load dtype (bf16 here), not 4 B/param."""
    from safetensors import safe_open

    model = {**quantized(), "dtype": "bfloat16"}
    for merge, name in ((True, "m"), (False, "a")):
        run(make_recipe(tmp_path / name, stages(merge_on_save=merge), model=model, performance={"precision": "bf16-mixed"}))
    with safe_open(str(tmp_path / "m/run/0-s/model.safetensors"), "pt") as merged:
        dtypes = {merged.get_slice(key).get_dtype() for key in merged.keys()}
    assert dtypes == {"BF16"}, dtypes


@pytest.mark.parametrize("case, stage_update, key", [
    ("full", {"trainable": "full"}, "stages.0.trainable"),
    ("hft", {"trainable": "hft"}, "stages.0.trainable"),
    ("layers", {"trainable": {"kind": "layers", "indices": [-1]}}, "stages.0.trainable"),
    ("tempbalance", {"trainable": LORA, "lr_rule": "tempbalance"}, "stages.0.lr_rule"),
    ("merge", {"trainable": "none", "merge": {"alpha": 0.5}}, "stages.0.merge"),
])
def test_what_cannot_train_a_quantized_base_is_one_line_at_validate(tmp_path, capsys, case, stage_update, key):
    from stagewise.cli import main

    stage = {"name": "s", "data": "d", **stage_update}
    recipe = {"model": quantized(), "stages": [stage], "output_dir": str(tmp_path / "run"),
              "datasets": {"d": {"format": "instruction", "rows": [{"instruction": "a", "output": "b"}]}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and ("quantiz" in lines[0] or "4/8" in lines[0]), lines
    assert not (tmp_path / "run").exists()


def test_quantization_without_bitsandbytes_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    from stagewise.errors import RecipeError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(RecipeError, match="model.quantization.*bitsandbytes"):
        make_recipe(tmp_path, stages(), model=quantized())


def test_adapter_gradients_after_an_evaluation_pass_equal_those_of_the_dequantized_base():
    """A no-grad evaluation pass before training (stagewise scores the base model first) must not
    change how the 4-bit layers compute: LoRA's gradients equal those on the same weights dequantized
    (bitsandbytes 0.50 repacked the weights for CPU inference, then back-propagated through the
    canonical layout: wrong gradients, and QLoRA diverged)."""
    import copy

    from peft import LoraConfig, get_peft_model

    from stagewise.config import ModelConfig
    from stagewise.models import dequantize_in_place, load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(ModelConfig.model_validate(quantized()))
    batch = {"input_ids": PROBE.repeat(3, 2), "labels": PROBE.repeat(3, 2)}
    model.eval()
    with torch.no_grad():
        model(**batch)  # the evaluation pass
    plain = dequantize_in_place(copy.deepcopy(model))
    config = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    grads = []
    for base in (model, plain):
        torch.manual_seed(0)
        wrapped = get_peft_model(base, config).train()
        wrapped(**batch).loss.backward()
        grads.append({n: p.grad for n, p in wrapped.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[1].items():
        assert torch.allclose(grads[0][name], grad, rtol=1e-4, atol=1e-6), name
