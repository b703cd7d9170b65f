"""PEFT's forgetting-aware adapters: DoRA, PiSSA / OLoRA / CorDA initialisation, and OSF. Each
trains a few steps on a tiny model, saves, and reloads with plain transformers + peft to the
same logits; bad options are one line."""
from __future__ import annotations

import pytest
import torch
from conftest import INSTRUCTION_ROWS, Snapshot, make_recipe, run
from peft import PeftModel
from transformers import AutoModelForCausalLM

DATASETS = {"sft": {"format": "instruction", "template": "alpaca", "rows": INSTRUCTION_ROWS},
            "general": {"format": "text", "rows": [{"text": f"general prose number {i}"} for i in range(8)]}}
LORA = {"kind": "lora", "lora_rank": 4, "lora_target": ["q_proj", "v_proj"]}


def train(tmp_path, trainable, snapshot=None):
    stage = {"name": "s", "data": "sft", "trainable": trainable, "lr": 1e-2, "max_steps": 3, "batch_size": 2}
    return run(make_recipe(tmp_path, [stage], datasets=DATASETS), [snapshot] if snapshot else None)


def logits(model, tokenizer):
    with torch.no_grad():
        return model(**tokenizer(["hello there"], return_tensors="pt")).logits


@pytest.mark.parametrize("options", [{"use_dora": True}, {"init": "pissa"}, {"init": "olora"},
                                     {"init": "corda", "corda_data": "general", "corda_method": "kpm"}],
                         ids=["dora", "pissa", "olora", "corda-kpm"])
def test_lora_variant_trains_saves_and_reloads_to_the_same_logits(tmp_path, options):
    snapshot = Snapshot()
    result = train(tmp_path, {**LORA, **options}, snapshot)
    after = dict(result.model.named_parameters())
    moved = [n for n, before in snapshot.states[0].items() if not torch.equal(before, after[n])]
    assert moved and all("lora_" in n for n in moved)  # only the adapter trained
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "run/0-s")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "run/0-s/adapter")
    assert torch.allclose(logits(reloaded, result.tokenizer), logits(result.model, result.tokenizer), atol=1e-5)
    config = reloaded.peft_config["default"]
    assert config.use_dora == options.get("use_dora", False)


def test_osf_trains_the_orthogonal_subspace_and_saves_plain_weights(tmp_path):
    from stagewise.config import ModelConfig
    from stagewise.models import load_model_and_tokenizer

    snapshot = Snapshot()
    result = train(tmp_path, {"kind": "osf", "effective_rank": 0.5, "target": ["q_proj", "v_proj"]}, snapshot)
    trainable = [n for n in snapshot.states[0] if "osf_svd_params" in n]
    assert trainable and result.manifest["stages"][0]["trainable_params"] > 0
    assert not (tmp_path / "run/0-s/adapter").exists()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "run/0-s")
    assert torch.allclose(logits(plain, result.tokenizer), logits(result.model, result.tokenizer), atol=1e-5)
    original = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))[0].state_dict()
    changed = [n for n, tensor in plain.state_dict().items() if not torch.equal(tensor, original[n])]
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)  # only the target matrices moved


@pytest.mark.parametrize("trainable, message", [
    ({**LORA, "init": "fancy"}, "stages.0.trainable.init: Input should be"),
    ({**LORA, "init": "corda"}, "init: corda and corda_data go together"),
    ({**LORA, "init": "corda", "corda_data": "nope"}, "stages.0.trainable.corda_data: unknown dataset 'nope'"),
    ({"kind": "osf", "target": ["no_such_proj"]}, "trainable.target:"),
    ({**LORA, "use_dora": True, "lora_target": ["no_such_proj"]}, "trainable.lora_target:"),
])
def test_bad_adapter_options_are_one_line(tmp_path, trainable, message):
    from stagewise.errors import StagewiseError

    with pytest.raises(StagewiseError) as error:
        train(tmp_path, trainable)
    assert message in str(error.value) and "\n" not in str(error.value)
