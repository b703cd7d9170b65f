"""On-policy distillation from a teacher (Agarwal et al., "On-Policy Distillation of Language
Models: Learning from Self-Generated Mistakes", ICLR 2024 — GKD; through TRL 1.16's stable
``DistillationTrainer``).

The student (the model entering the stage) samples a completion for each of the stage's prompts;
the teacher scores every token of it with its full next-token distribution, and the student is
trained to match it there: a generalised Jensen–Shannon divergence between the two token
distributions on the student's own samples, ``beta`` = 1 the reverse KL(student ‖ teacher) (TRL's
default; mode-seeking, as in GKD's on-policy setting), 0 the forward KL, 0.5 the JSD. Because the
training data is the student's own output, this is the recipe used to *restore* general ability
after a domain stage: distil from the base model on general prompts, and the student pulls its
behaviour back where it drifted, on inputs it actually produces.

``teacher`` is ``base`` (the run's starting model), an earlier stage by name (its adapter merged
in) or a local model folder; it must share the student's vocabulary (checked when the stage starts).
When the student carries an adapter and the model under it *is* the teacher (every tensor equal,
compared one at a time: a LoRA student distilled from the base it was attached to), the teacher is
the student with its adapter switched off, with no second copy; otherwise it is a second, frozen
copy of the model (``stagewise plan`` counts it). We chose TRL's
``DistillationTrainer`` over the experimental ``GKDTrainer``: it is stable, fully on-policy (GKD's
``lmbda`` = 1) and computes the divergence chunk by chunk without materialising full logits.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from transformers import Trainer

from ...addons import base_without_addon_layers, is_peft_model
from ...errors import ModelError
from ...protocols import TrainerInputs
from ...registry import TRAINERS, PluginConfig, Requires, TrainerTraits
from ...trainers import stage_trainer_class


class OnPolicyDistillConfig(PluginConfig):
    named_model_fields = ("teacher",)
    teacher: str = "base"  # base, an earlier stage's name, or a local model folder
    beta: float = Field(default=1.0, ge=0, le=1)  # TRL default 1.0 = reverse KL; 0 forward KL, 0.5 JSD (GKD)
    temperature: float = Field(default=1.0, gt=0)  # sampling and divergence temperature (GKD and TRL: 1.0)
    max_new_tokens: int = Field(default=128, ge=1)  # completion length sampled per prompt


class AdapterOff(torch.nn.Module):
    """An adapter-wrapped student seen with its adapter off: the model under the adapter, as TRL's
    teacher (its backbone, its output embeddings, its config), sharing the student's tensors."""

    student: Any  # the adapter-wrapped student (a PEFT model), not a submodule

    def __init__(self, student: Any) -> None:
        super().__init__()
        object.__setattr__(self, "student", student)  # not a submodule: its parameters stay the student's alone
        self.config = student.config

    @property
    def base_model(self) -> Any:
        backbone = self.student.get_base_model().base_model

        def without_adapter(**inputs: Any) -> Any:
            with self.student.disable_adapter():
                return backbone(**inputs)

        return without_adapter

    def get_output_embeddings(self) -> Any:
        return self.student.get_base_model().get_output_embeddings()

    def forward(self, **inputs: Any) -> Any:
        with self.student.disable_adapter():
            return self.student(**inputs)


def adapter_off_teacher(student: Any, teacher: Any) -> AdapterOff | None:
    """The student with its adapter off when every tensor of the model under the adapter equals the
    teacher's (``teacher``: its weights, read one tensor at a time), else None."""
    if not is_peft_model(student):
        return None
    with torch.no_grad(), base_without_addon_layers(student) as base:
        mine = dict(base.named_parameters())
        names = list(teacher.keys())
        if not set(mine) <= set(names) or any(
            name not in mine and name not in dict(base.named_buffers()) for name in names
        ):
            return None
        same = all(
            name not in mine
            or (
                mine[name].shape == teacher.shape(name)
                and torch.equal(mine[name].detach().cpu(), teacher[name].to(mine[name].dtype))
            )
            for name in names
        )
    return AdapterOff(student) if same else None


def distill_plan(config: OnPolicyDistillConfig, ctx: Any) -> dict[str, float]:
    """`stagewise plan`: the teacher (a model of the student's size) and the sampling KV cache."""
    return {
        "teacher model": ctx.stored_weights,
        "generation kv cache": ctx.batch_size * (ctx.seq_len + config.max_new_tokens) * ctx.kv_bytes_per_token,
    }


@TRAINERS.register(
    "distill",
    OnPolicyDistillConfig,
    requires=Requires(
        objectives=("lm",), formats=("instruction", "prompt_completion"), model_tasks=("causal_lm",), sharded=False
    ),
    traits=TrainerTraits(takes_loss=False, samples_examples=False),
    plan=distill_plan,
)
def on_policy_distill_trainer(config: OnPolicyDistillConfig, inputs: TrainerInputs) -> Trainer:
    """The stage's prompts (rendered as training renders them), answered by the student and scored by
    the teacher (TRL DistillationTrainer); the rows' own answers are not used."""
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    assert inputs.model_named is not None and inputs.prompts is not None  # the engine gives both
    student = inputs.pretrained
    named = inputs.weights_named(config.teacher) if inputs.weights_named else None
    teacher: Any = (adapter_off_teacher(inputs.model, named) if named is not None else None) or inputs.model_named(
        config.teacher
    )
    ours, theirs = (model.config.get_text_config().vocab_size for model in (student, teacher))
    if ours != theirs:
        raise ModelError(
            f"trainer.teacher: {config.teacher!r} has a vocabulary of {theirs} tokens, the model trained here {ours}: "
            "distillation compares their token distributions, so they must share a tokenizer"
        )
    args = inputs.args_for(
        DistillationConfig,
        beta=config.beta,
        temperature=config.temperature,
        max_completion_length=config.max_new_tokens,
        include_num_input_tokens_seen=False,
    )  # the batches hold prompts, not input_ids
    dataset = Dataset.from_list([{"prompt": prompt} for prompt in inputs.prompts()])
    return stage_trainer_class(DistillationTrainer)(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=dataset,
        processing_class=inputs.tokenizer,
        callbacks=inputs.callbacks,
        **inputs.stage_features(),
    )
