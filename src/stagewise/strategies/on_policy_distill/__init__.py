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
in) or a local model folder; it must share the student's vocabulary (checked at ``validate``).
The teacher is a second, frozen copy of the model (``stagewise plan`` counts it). We chose TRL's
``DistillationTrainer`` over the experimental ``GKDTrainer``: it is stable, fully on-policy (GKD's
``lmbda`` = 1) and computes the divergence chunk by chunk without materialising full logits.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field
from transformers import Trainer

from ...registry import TRAINERS, PluginConfig, Requires, TrainerTraits
from ...trainers import TrainerInputs, stage_trainer_class


class OnPolicyDistillConfig(PluginConfig):
    named_model_fields = ("teacher",)
    teacher: str = "base"                           # base, an earlier stage's name, or a local model folder
    beta: float = Field(default=1.0, ge=0, le=1)    # TRL default 1.0 = reverse KL; 0 forward KL, 0.5 JSD (GKD)
    temperature: float = Field(default=1.0, gt=0)   # sampling and divergence temperature (GKD and TRL: 1.0)
    max_new_tokens: int = Field(default=128, ge=1)  # completion length sampled per prompt


def distill_plan(config: OnPolicyDistillConfig, ctx: Any) -> dict[str, float]:
    """`stagewise plan`: the teacher (a model of the student's size) and the sampling KV cache."""
    return {"teacher model": ctx.stored_weights,
            "generation kv cache": ctx.batch_size * (ctx.seq_len + config.max_new_tokens) * ctx.kv_bytes_per_token}


@TRAINERS.register("distill", OnPolicyDistillConfig,
                   requires=Requires(objectives=("lm",), formats=("instruction", "prompt_completion"),
                                     model_tasks=("causal_lm",), sharded=False),
                   traits=TrainerTraits(takes_loss=False, samples_examples=False), plan=distill_plan)
def on_policy_distill_trainer(config: OnPolicyDistillConfig, inputs: TrainerInputs) -> Trainer:
    """The stage's prompts (rendered as training renders them), answered by the student and scored by
    the teacher (TRL DistillationTrainer); the rows' own answers are not used."""
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    teacher = inputs.model_named(config.teacher)
    args = inputs.args_for(DistillationConfig, beta=config.beta, temperature=config.temperature,
                           max_completion_length=config.max_new_tokens,
                           include_num_input_tokens_seen=False)  # the batches hold prompts, not input_ids
    dataset = Dataset.from_list([{"prompt": prompt} for prompt in inputs.prompts()])
    return stage_trainer_class(DistillationTrainer)(
        model=inputs.model, teacher_model=teacher, args=args, train_dataset=dataset,
        processing_class=inputs.tokenizer, callbacks=inputs.callbacks, **inputs.stage_features())
