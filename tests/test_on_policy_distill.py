"""On-policy distillation (GKD, ICLR 2024; TRL DistillationTrainer): on the student's own completion,
the loss is the divergence the paper defines (reverse KL at beta 1, forward KL at 0, JSD at 0.5)
between student and teacher next-token distributions; a distillation stage from the base model
pulls a drifted student back toward it; teachers are base, an earlier stage or a folder, and bad
ones are one line."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import INSTRUCTION_ROWS, make_recipe, run
from transformers import TrainingArguments

from stagewise.config import ModelConfig
from stagewise.errors import RecipeError
from stagewise.models import load_model_and_tokenizer
from stagewise.protocols import TrainerInputs
from stagewise.strategies.on_policy_distill import OnPolicyDistillConfig, on_policy_distill_trainer


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def by_hand(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float) -> float:
    """GKD's generalised JSD (Agarwal et al. 2024, eq. 3 family) averaged over completion tokens."""
    s, t = F.log_softmax(student_logits.float(), -1), F.log_softmax(teacher_logits.float(), -1)
    if beta == 1.0:
        per_token = kl(s, t)  # reverse KL(student || teacher)
    elif beta == 0.0:
        per_token = kl(t, s)  # forward KL(teacher || student)
    else:
        mixture = torch.logsumexp(torch.stack([s + torch.log(torch.tensor(1 - beta)), t + torch.log(torch.tensor(beta))]), 0)
        per_token = beta * kl(t, mixture) + (1 - beta) * kl(s, mixture)
    return float(per_token.mean())


@pytest.mark.parametrize("beta", [1.0, 0.0, 0.5])
def test_the_loss_is_the_divergence_on_the_students_completion(tmp_path, beta):
    student, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    teacher, _ = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"), seed=7)
    with torch.no_grad():  # a teacher that differs from the student
        for param in teacher.parameters():
            param.add_(0.5 * torch.randn_like(param))
    inputs = TrainerInputs(
        model=student, tokenizer=tokenizer, rows=INSTRUCTION_ROWS, examples=[], dev=None, collator=None, loss=None,
        split_groups=None, callbacks=[], model_named=lambda name: teacher, prompts=lambda: ["a", "b"],
        args_for=lambda cls, **extra: cls(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                                                            per_device_train_batch_size=2, **extra))
    trainer = on_policy_distill_trainer(OnPolicyDistillConfig(kind="distill", beta=beta), inputs)
    prompt = torch.tensor([[5, 9, 13], [0, 7, 21]])
    completion = torch.tensor([[3, 17, 4, 8], [11, 2, 6, 0]])
    batch = {"prompt_ids": prompt, "prompt_mask": torch.ones(2, 3, dtype=torch.long),
             "completion_ids": completion, "completion_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}
    loss, _, count = trainer._compute_loss(student, batch, num_items_in_batch=None)
    ids = torch.cat([prompt, completion], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():  # logits at the positions that predict each completion token
        s_logits = student(input_ids=ids, attention_mask=mask).logits[:, 2:-1]
        t_logits = teacher(input_ids=ids, attention_mask=mask).logits[:, 2:-1]
    kept = batch["completion_mask"].bool()
    assert int(count) == 7
    expected = by_hand(s_logits[kept], t_logits[kept], beta)  # TRL sums over vocabulary tiles in fp32: rel 1e-3
    assert float(loss) == pytest.approx(expected, rel=1e-3)
    others = [by_hand(s_logits[kept], t_logits[kept], other) for other in (1.0, 0.0, 0.5) if other != beta]
    assert all(abs(other - expected) > 0.01 * expected for other in others)  # the three divergences differ here


def reverse_kl_to_base(result, tokenizer_rows) -> float:
    """Mean token-level KL(student || base) on the prompts' greedy-free teacher-forced answers."""
    base, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    texts = [f"{row['instruction']} {row['output']}" for row in tokenizer_rows]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        s = F.log_softmax(result.model(**batch).logits.float(), -1)
        t = F.log_softmax(base(**batch).logits.float(), -1)
    return float(kl(s, t)[batch["attention_mask"].bool()].mean())


def test_distilling_from_base_pulls_a_drifted_student_back(tmp_path):
    sft = {"name": "sft", "data": "sft", "max_steps": 6, "batch_size": 2, "lr": 3e-2}
    drifted = run(make_recipe(tmp_path / "a", [sft]))
    distill = {"name": "recover", "data": "sft", "trainer": {"kind": "distill", "max_new_tokens": 8},
               "max_steps": 8, "batch_size": 4, "lr": 1e-2}
    recovered = run(make_recipe(tmp_path / "b", [sft, distill]))
    before, after = reverse_kl_to_base(drifted, INSTRUCTION_ROWS), reverse_kl_to_base(recovered, INSTRUCTION_ROWS)
    assert after < 0.8 * before, (before, after)


def test_an_earlier_stage_or_a_folder_is_a_teacher_and_another_vocabulary_is_one_line(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from stagewise.errors import ModelError
    from stagewise.models import byte_tokenizer

    recipe = make_recipe(tmp_path, [{"name": "sft", "data": "sft"},
                                    {"name": "d", "data": "sft", "trainer": {"kind": "distill", "teacher": "sft"}}])
    assert recipe.stages[1].trainer.teacher == "sft"
    folder = tmp_path / "teacher"  # a model with another vocabulary
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    stage = {"name": "d", "data": "sft", "max_steps": 1, "trainer": {"kind": "distill", "teacher": str(folder)}}
    with pytest.raises(ModelError, match=r"'.*teacher' has a vocabulary of 300 tokens, the model trained here \d+: "
                                         r"distillation compares") as err:
        run(make_recipe(tmp_path / "run2", [stage]))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("trainer, message", [
    ({"kind": "distill", "teacher": "later"}, "'later' is not an earlier stage that hands its model on"),
    ({"kind": "distill", "teacher": "nowhere/at/all"}, "'nowhere/at/all' is neither 'base', an earlier stage"),
    ({"kind": "distill", "beta": 1.5}, "stages.0.trainer.beta"),
])
def test_bad_distillation_is_one_line(tmp_path, trainer, message):
    with pytest.raises(RecipeError) as err:
        make_recipe(tmp_path, [{"name": "d", "data": "sft", "trainer": trainer}, {"name": "later", "data": "sft"}])
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_distillation_of_a_classifier_is_one_line(tmp_path):
    from conftest import CLASSIFICATION_ROWS

    with pytest.raises(RecipeError, match=r"trainer 'distill' takes lm data, not classification") as err:
        make_recipe(tmp_path, [{"name": "d", "data": "c", "trainer": "distill"}],
                    model={"model_name_or_path": "tiny-bert", "task": "sequence_classification"},
                    datasets={"c": {"format": "classification", "rows": CLASSIFICATION_ROWS}})
    assert "\n" not in str(err.value)


def test_a_lora_student_distils_from_the_base_under_its_adapter_without_a_copy(tmp_path, monkeypatch):
    """LoRA on the base, then distillation from base: the teacher is the student with its adapter off
    (no model loaded), and its logits are the base model's."""
    from stagewise.strategies import on_policy_distill

    seen = {}
    original = on_policy_distill.adapter_off_teacher

    def spy(student, weights):
        seen["teacher"] = original(student, weights)
        return seen["teacher"]

    monkeypatch.setattr(on_policy_distill, "adapter_off_teacher", spy)
    loaded = []
    lora = {"kind": "lora", "lora_rank": 4}
    stages = [{"name": "sft", "data": "sft", "trainable": lora, "max_steps": 2, "batch_size": 2, "lr": 1e-2},
              {"name": "d", "data": "sft", "trainable": lora, "max_steps": 2, "batch_size": 2, "lr": 1e-3,
               "trainer": {"kind": "distill", "max_new_tokens": 4}}]
    recipe = make_recipe(tmp_path, stages)
    import stagewise.engine.pipeline as pipeline

    monkeypatch.setattr(pipeline, "named_model", lambda *args: loaded.append(args[-1]) or (_ for _ in ()).throw(
        AssertionError("a teacher copy was loaded")))
    result = run(recipe)
    teacher = seen["teacher"]
    assert teacher is not None and loaded == []
    base, tokenizer = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    ids = torch.tensor([tokenizer("a question to score")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(teacher(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-6)
        assert not torch.allclose(result.model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-4)


def test_a_full_student_gets_a_loaded_teacher(tmp_path):
    from stagewise.strategies.on_policy_distill import adapter_off_teacher

    model, _ = load_model_and_tokenizer(ModelConfig(model_name_or_path="tiny-llama"))
    assert adapter_off_teacher(model, None) is None


def test_a_base_changed_under_the_adapter_gets_a_loaded_teacher(tmp_path, monkeypatch):
    from stagewise.strategies import on_policy_distill

    seen = []
    original = on_policy_distill.adapter_off_teacher
    monkeypatch.setattr(on_policy_distill, "adapter_off_teacher",
                        lambda student, weights: seen.append(original(student, weights)) or seen[-1])
    stages = [{"name": "sft", "data": "sft", "max_steps": 2, "batch_size": 2, "lr": 1e-2},  # full: the base moves
              {"name": "d", "data": "sft", "trainable": {"kind": "lora", "lora_rank": 4}, "max_steps": 1,
               "batch_size": 2, "trainer": {"kind": "distill", "max_new_tokens": 4}}]
    result = run(make_recipe(tmp_path, stages))
    assert seen == [None] and result.manifest["stages"][1]["status"] == "completed"
