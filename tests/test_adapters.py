"""ProMoT (prompt, then full tuning with the prompt frozen), LoRA and DPO stages."""
from __future__ import annotations

import pytest
import torch
from conftest import CrashAfterSave, Snapshot, make_recipe, run
from peft import PeftModel
from transformers import AutoModelForCausalLM, TrainerCallback

from stagewise.addons import base_model_of, model_for_probe
from stagewise.generation import generate

PROMOT = [
    {"name": "prompt", "data": "sft", "trainable": {"kind": "prompt", "num_virtual_tokens": 4}, "lr": 0.2,
     "max_steps": 3, "batch_size": 2},
    {"name": "full", "data": "sft", "trainable": "full", "lr": 1e-2, "max_steps": 3, "batch_size": 2,
     "weight_decay": 0.1, "optim": "adamw_torch"},
]


def prompt_name(state):
    [name] = [n for n in state if "prompt_encoder" in n]
    return name


def test_promot_stage_effects(tmp_path):
    snapshot = Snapshot()
    result = run(make_recipe(tmp_path, PROMOT), [snapshot])
    entering1, entering2 = snapshot.states
    after = dict(result.model.named_parameters())
    prompt = prompt_name(entering2)
    # stage 1: base bit-identical, prompt changed
    for name, before in entering1.items():
        assert torch.equal(before, entering2[name]) == (name != prompt), name
    # stage 2: prompt bit-identical, base changed
    assert torch.equal(entering2[prompt], after[prompt])
    assert all(not torch.equal(entering2[n], after[n]) for n in entering2 if n != prompt)


def test_promot_loss_differs_with_and_without_prompt(tmp_path):
    result = run(make_recipe(tmp_path, PROMOT))
    model, tokenizer = result.model, result.tokenizer
    batch = tokenizer(["### Instruction:\nsay hi\n\n### Response:\nhi"], return_tensors="pt")
    with torch.no_grad():
        with_prompt = model(**batch, labels=batch["input_ids"]).loss
        without = base_model_of(model)(**batch, labels=batch["input_ids"]).loss
    assert not torch.isclose(with_prompt, without)


def test_promot_records_the_kl_to_each_entering_model(tmp_path):
    """The forgetting predictor on both stages: stage 1's reference is the base, stage 2's the
    prompt-tuned model as saved (a soft prompt cannot be merged into the weights)."""
    evaluation = {"target": [{"name": "t", "data": "sft", "metric": "answer_logprob"}], "kl_prompts": 4,
                  "kl_tokens": 4}
    result = run(make_recipe(tmp_path, PROMOT, evaluation=evaluation))
    prompt_stage, full_stage = (stage["kl_to_entering"] for stage in result.manifest["stages"])
    assert prompt_stage["prompts"] == full_stage["prompts"] == 4
    assert prompt_stage["per_sequence"] > 0 and full_stage["per_sequence"] > 0


def test_addon_never_equals_the_bare_model_and_saved_layout_loads(tmp_path):
    from stagewise.config import EvalTaskConfig

    result = run(make_recipe(tmp_path, PROMOT))
    model, tokenizer = result.model, result.tokenizer
    prompts = [tokenizer("say hi")["input_ids"], tokenizer("count")["input_ids"]]
    never = model_for_probe(model, EvalTaskConfig(name="x", data="d", metric="contains", addon="never"), "target")
    auto_retention = model_for_probe(model, EvalTaskConfig(name="x", data="d", metric="contains"), "retention")
    auto_target = model_for_probe(model, EvalTaskConfig(name="x", data="d", metric="contains"), "target")
    always = model_for_probe(model, EvalTaskConfig(name="x", data="d", metric="contains", use_prompt="always"),
                             "retention")  # the key's earlier name is still read
    assert auto_target is always is model and never is auto_retention is base_model_of(model)
    bare = AutoModelForCausalLM.from_pretrained(tmp_path / "run/1-full")
    assert generate(never, tokenizer, prompts) == generate(bare, tokenizer, prompts)
    with_prompt = PeftModel.from_pretrained(bare, tmp_path / "run/1-full/adapter")
    assert generate(with_prompt, tokenizer, prompts) == generate(model, tokenizer, prompts)
    for name, tensor in model.state_dict().items():
        if "prompt_encoder" in name:
            assert torch.equal(tensor, with_prompt.state_dict()[name])


def test_promot_stage2_resume_equals_uninterrupted(tmp_path):
    stages = [PROMOT[0], {**PROMOT[1], "save_steps": 2}]
    reference = run(make_recipe(tmp_path / "a", stages))
    with pytest.raises(KeyboardInterrupt):
        run(make_recipe(tmp_path / "b", stages), [CrashAfterSave(step=2)])
    resumed = run(make_recipe(tmp_path / "b", stages))
    assert resumed.manifest["stages"][1]["resumed_from"] == "checkpoint-2"
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_lora_trains_adapters_only_and_merges_on_request(tmp_path):
    snapshot = Snapshot()
    lora = {"kind": "lora", "lora_rank": 4, "lora_target": ["q_proj", "v_proj"]}
    result = run(make_recipe(tmp_path, [{"name": "lora", "data": "sft", "trainable": lora, "lr": 1e-2,
                                         "max_steps": 3, "batch_size": 2}]), [snapshot])
    after = dict(result.model.named_parameters())
    for name, before in snapshot.states[0].items():
        assert torch.equal(before, after[name]) == ("lora_B" not in name and "lora_A" not in name), name
    entry = result.manifest["stages"][0]
    assert entry["trainable_params"] == 2 * 2 * 4 * (64 + 64)  # 2 layers x (q, v) x rank 4 x (in + out)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "run/0-lora")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "run/0-lora/adapter")
    batch = result.tokenizer(["hello"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, result.model(**batch).logits, atol=1e-6)

    merged = run(make_recipe(tmp_path / "m", [{"name": "lora", "data": "sft", "trainable": {**lora, "merge_on_save": True},
                                               "lr": 1e-2, "max_steps": 3, "batch_size": 2}]))
    assert not (tmp_path / "m/run/0-lora/adapter").exists()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m/run/0-lora")
    with torch.no_grad():
        assert torch.allclose(plain(**batch).logits, merged.model(**batch).logits, atol=1e-5)


class Margins(TrainerCallback):
    def __init__(self):
        self.margins = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "rewards/margins" in logs:
            self.margins.append(logs["rewards/margins"])


PREFERENCES = [{"prompt": f"Q{i}: pick", "chosen": " good answer", "rejected": " bad reply"} for i in range(8)]


def test_dpo_stage_after_sft_moves_the_margin(tmp_path):
    margins = Margins()
    recipe = make_recipe(
        tmp_path,
        [{"name": "sft", "data": "sft", "max_steps": 2, "batch_size": 2},
         {"name": "dpo", "data": "pref", "trainer": {"kind": "dpo", "beta": 0.1}, "trainable": "hft", "lr": 5e-3,
          "max_steps": 8, "batch_size": 4, "logging_steps": 1}],
        datasets={"sft": {"format": "instruction", "template": "alpaca",
                          "rows": [{"instruction": "hi", "output": "there"}] * 4},
                  "pref": {"format": "preference", "rows": PREFERENCES}},
    )
    result = run(recipe, [margins])
    assert margins.margins[0] == pytest.approx(0.0, abs=1e-6)  # the reference is the model entering the stage
    assert margins.margins[-1] > 0.05
    assert result.manifest["stages"][1]["metrics"]["last_rewards/margins"] == margins.margins[-1]


def test_dpo_needs_preference_data(tmp_path):
    from stagewise.errors import RecipeError

    with pytest.raises(RecipeError, match="stages.0.trainer: trainer 'dpo' takes preference data, not lm"):
        make_recipe(tmp_path, [{"name": "s", "data": "sft", "trainer": "dpo"}])
    preference = {"pref": {"format": "preference", "rows": PREFERENCES}}
    with pytest.raises(RecipeError, match=r"stages.0.trainer: trainer 'hf' takes lm or classification data, not "
                                          r"preference \(this stage can use: cpo, dpo, grpo, orpo, reward, rloo, simpo\)"):
        make_recipe(tmp_path, [{"name": "s", "data": "pref"}], datasets=preference)
    with pytest.raises(RecipeError, match="stages.0.loss: trainer 'dpo' defines its own objective"):
        make_recipe(tmp_path, [{"name": "s", "data": "pref", "trainer": "dpo", "loss": "ldam"}], datasets=preference)


@pytest.mark.parametrize("trainer", [{"kind": "orpo"}, {"kind": "cpo"}, {"kind": "simpo", "beta": 2.0}],
                         ids=["orpo", "cpo", "simpo"])
def test_reference_free_preference_trainers_move_the_margin(tmp_path, trainer):
    margins = Margins()
    recipe = make_recipe(
        tmp_path, [{"name": "pref", "data": "pref", "trainer": trainer, "lr": 5e-3, "max_steps": 8, "batch_size": 4,
                    "logging_steps": 1}],
        datasets={"pref": {"format": "preference", "rows": PREFERENCES}})
    result = run(recipe, [margins])
    assert len(margins.margins) == 8
    assert margins.margins[-1] > margins.margins[0] + 0.05  # chosen pulled above rejected
    assert result.manifest["stages"][0]["metrics"]["last_rewards/margins"] == margins.margins[-1]


def test_kto_on_unpaired_feedback_moves_desirable_above_undesirable(tmp_path):
    feedback = [{"prompt": f"Q{i}: answer", "completion": " good answer" if i % 2 else " bad reply", "label": bool(i % 2)}
                for i in range(8)]
    margins = Margins()
    result = run(make_recipe(tmp_path, [{"name": "kto", "data": "fb", "trainer": "kto", "lr": 5e-3, "max_steps": 8,
                                         "batch_size": 4, "logging_steps": 1}],
                             datasets={"fb": {"format": "feedback", "rows": feedback}}), [margins])
    assert margins.margins[0] == pytest.approx(0.0, abs=1e-6)  # the reference is the model entering the stage
    assert margins.margins[-1] > 0.05
    assert result.manifest["stages"][0]["metrics"]["last_rewards/margins"] == margins.margins[-1]


def test_feedback_rows_need_a_boolean_label(tmp_path):
    from stagewise.errors import DataError

    rows = [{"prompt": "p", "completion": "c", "label": "yes"}]
    with pytest.raises(DataError, match="field 'label' must be true or false"):
        run(make_recipe(tmp_path, [{"name": "kto", "data": "fb", "trainer": "kto"}],
                        datasets={"fb": {"format": "feedback", "rows": rows}}))


@pytest.mark.parametrize("kind, rows", [("dpo", "pref"), ("kto", "fb")])
def test_precomputed_reference_scores_train_like_the_resident_reference(tmp_path, kind, rows):
    """precompute_ref_log_probs: the entering model scores every row once before training and no
    frozen copy is built; the trained weights equal those trained against the resident copy."""
    from stagewise import trainers

    feedback = [{"prompt": f"Q{i}: answer", "completion": " good answer" if i % 2 else " bad reply", "label": bool(i % 2)}
                for i in range(8)]
    datasets = {"pref": {"format": "preference", "rows": PREFERENCES}, "fb": {"format": "feedback", "rows": feedback}}
    copies = []
    original = trainers.frozen_reference

    def counting(model):
        copies.append(model)
        return original(model)

    import stagewise.strategies.dpo as dpo

    results = []
    for precompute in (False, True):
        copies.clear()
        dpo.frozen_reference = counting
        try:
            stage = {"name": "p", "data": rows, "lr": 5e-3, "max_steps": 4, "batch_size": 4,
                     "trainer": {"kind": kind, "precompute_ref_log_probs": precompute}}
            results.append(run(make_recipe(tmp_path / str(precompute), [stage], datasets=datasets)))
        finally:
            dpo.frozen_reference = original
        assert len(copies) == (0 if precompute else 1)
    a, b = (dict(r.model.named_parameters()) for r in results)
    assert max(float((a[n] - b[n]).detach().abs().max()) for n in a) < 1e-5


def test_precomputed_reference_with_a_held_out_eval_is_one_line(tmp_path):
    from stagewise.errors import RecipeError

    stage = {"name": "p", "data": "pref", "eval": {"data": ["pref"]},
             "trainer": {"kind": "dpo", "precompute_ref_log_probs": True}}
    with pytest.raises(RecipeError, match="stages.0.trainer.precompute_ref_log_probs: the stage's held-out eval"):
        make_recipe(tmp_path, [stage], datasets={"pref": {"format": "preference", "rows": PREFERENCES}})
