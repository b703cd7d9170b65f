"""DPO — Direct Preference Optimization (Rafailov et al. 2023) through TRL's DPOTrainer, and
KTO (Ethayarajh et al. 2024) on unpaired good/bad answers, both against the entering model.

``trainer: dpo`` on a stage with ``preference`` data (prompt/chosen/rejected). The reference
model is a frozen copy of the model *entering the stage* (after SFT, say), not the hub
checkpoint TRL would otherwise reload; with an adapter attached, TRL uses the
adapter-disabled model instead. Any selector and LR rule work (HFT redraws its mask for this
stage; TempBalance's per-layer groups reach DPO's optimizer through the trainer slot).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from transformers import Trainer

from ...protocols import TrainerInputs
from ...registry import TRAINERS, PluginConfig, Requires, TrainerTraits
from ...trainers import frozen_reference, stage_trainer_class


class DPOConfig(PluginConfig):
    beta: float = Field(default=0.1, gt=0)  # DPO paper / TRL default
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    # score every pair under the entering model once, before training (TRL), so no frozen copy of
    # the model stays resident while it trains (with an adapter there is no copy either way)
    precompute_ref_log_probs: bool = False


def precomputed_reference_problem(config: Any, formats: set[str], stage: Any = None) -> tuple[str, str] | None:
    """Precomputed reference scores exist for the training rows only: a held-out ``eval`` would need the
    reference model that precomputation let go."""
    if getattr(config, "precompute_ref_log_probs", False) and stage is not None and stage.eval is not None:
        return "precompute_ref_log_probs", (
            "the stage's held-out eval needs the reference model after training, "
            "which precomputation frees; drop eval or precompute_ref_log_probs"
        )
    return None


OWN_BATCHES = TrainerTraits(takes_loss=False, samples_examples=False, check=precomputed_reference_problem)


def reference_plan(config: Any, ctx: Any) -> dict[str, float]:
    """`stagewise plan`: a frozen copy in the storage dtype, unless an adapter or precomputed scores stand in."""
    return {"reference model": 0.0 if ctx.has_adapter or config.precompute_ref_log_probs else ctx.stored_weights}


def reference_for(config: Any, model: Any) -> Any:
    """The frozen reference: none with precomputed scores (TRL scores the entering model before it trains)."""
    return None if config.precompute_ref_log_probs else frozen_reference(model)


@TRAINERS.register(
    "dpo",
    DPOConfig,
    requires=Requires(objectives=("preference",), model_tasks=("causal_lm",), sharded=False),
    traits=OWN_BATCHES,
    plan=reference_plan,
)
def dpo_trainer(config: DPOConfig, inputs: TrainerInputs) -> Trainer:
    """Direct preference optimization on prompt/chosen/rejected rows (TRL DPOTrainer)."""
    from datasets import Dataset
    from trl import DPOConfig as TrlDPOConfig
    from trl import DPOTrainer

    args = inputs.args_for(
        TrlDPOConfig,
        beta=config.beta,
        loss_type=[config.loss_type],
        precompute_ref_log_probs=config.precompute_ref_log_probs,
    )
    dataset = Dataset.from_list([{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in inputs.rows])
    return stage_trainer_class(DPOTrainer)(
        model=inputs.pretrained,
        ref_model=reference_for(config, inputs.model),
        args=args,
        train_dataset=dataset,
        processing_class=inputs.tokenizer,
        callbacks=inputs.callbacks,
        **inputs.stage_features(),
    )


class KTOConfig(PluginConfig):
    beta: float = Field(default=0.1, gt=0)  # KTO paper / TRL default
    desirable_weight: float = Field(default=1.0, gt=0)  # λ_D; the paper keeps λ_D·n_D / λ_U·n_U in [1, 4/3]
    undesirable_weight: float = Field(default=1.0, gt=0)  # λ_U
    precompute_ref_log_probs: bool = False  # as DPO's: no resident reference copy


@TRAINERS.register(
    "kto",
    KTOConfig,
    requires=Requires(objectives=("feedback",), model_tasks=("causal_lm",), sharded=False),
    traits=OWN_BATCHES,
    plan=reference_plan,
)
def kto_trainer(config: KTOConfig, inputs: TrainerInputs) -> Trainer:
    """KTO (Ethayarajh et al., ICML 2024): unpaired good/bad answers (``feedback`` rows: prompt,
    completion, label true/false) against the frozen model entering the stage (TRL KTOTrainer)."""
    from datasets import Dataset
    from trl.experimental.kto import KTOConfig as TrlKTOConfig
    from trl.experimental.kto import KTOTrainer

    args = inputs.args_for(
        TrlKTOConfig,
        beta=config.beta,
        desirable_weight=config.desirable_weight,
        undesirable_weight=config.undesirable_weight,
        precompute_ref_log_probs=config.precompute_ref_log_probs,
    )
    dataset = Dataset.from_list([{k: row[k] for k in ("prompt", "completion", "label")} for row in inputs.rows])
    return stage_trainer_class(KTOTrainer)(
        model=inputs.pretrained,
        ref_model=reference_for(config, inputs.model),
        args=args,
        train_dataset=dataset,
        processing_class=inputs.tokenizer,
        callbacks=inputs.callbacks,
        **inputs.stage_features(),
    )
