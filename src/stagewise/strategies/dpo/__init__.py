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

from ...registry import TRAINERS, PluginConfig, Requires, TrainerTraits
from ...trainers import TrainerInputs, frozen_reference, stage_trainer_class


class DPOConfig(PluginConfig):
    beta: float = Field(default=0.1, gt=0)              # DPO paper / TRL default
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"


@TRAINERS.register("dpo", DPOConfig, requires=Requires(objectives=("preference",), model_tasks=("causal_lm",)),
                   traits=TrainerTraits(takes_loss=False, samples_examples=False))
def dpo_trainer(config: DPOConfig, inputs: TrainerInputs) -> Trainer:
    """Direct preference optimization on prompt/chosen/rejected rows (TRL DPOTrainer)."""
    from datasets import Dataset
    from trl import DPOConfig as TrlDPOConfig
    from trl import DPOTrainer

    args = inputs.args_for(TrlDPOConfig, beta=config.beta, loss_type=[config.loss_type])
    dataset = Dataset.from_list([{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in inputs.rows])
    return stage_trainer_class(DPOTrainer)(
        model=inputs.model, ref_model=frozen_reference(inputs.model), args=args, train_dataset=dataset,
        processing_class=inputs.tokenizer, callbacks=inputs.callbacks, **inputs.stage_features())


class KTOConfig(PluginConfig):
    beta: float = Field(default=0.1, gt=0)                # KTO paper / TRL default
    desirable_weight: float = Field(default=1.0, gt=0)    # λ_D; the paper keeps λ_D·n_D / λ_U·n_U in [1, 4/3]
    undesirable_weight: float = Field(default=1.0, gt=0)  # λ_U


@TRAINERS.register("kto", KTOConfig, requires=Requires(objectives=("feedback",), model_tasks=("causal_lm",)),
                   traits=TrainerTraits(takes_loss=False, samples_examples=False))
def kto_trainer(config: KTOConfig, inputs: TrainerInputs) -> Trainer:
    """KTO (Ethayarajh et al., ICML 2024): unpaired good/bad answers (``feedback`` rows: prompt,
    completion, label true/false) against the frozen model entering the stage (TRL KTOTrainer)."""
    from datasets import Dataset
    from trl.experimental.kto import KTOConfig as TrlKTOConfig
    from trl.experimental.kto import KTOTrainer

    args = inputs.args_for(TrlKTOConfig, beta=config.beta, desirable_weight=config.desirable_weight,
                           undesirable_weight=config.undesirable_weight)
    dataset = Dataset.from_list([{k: row[k] for k in ("prompt", "completion", "label")} for row in inputs.rows])
    return stage_trainer_class(KTOTrainer)(
        model=inputs.model, ref_model=frozen_reference(inputs.model), args=args, train_dataset=dataset,
        processing_class=inputs.tokenizer, callbacks=inputs.callbacks, **inputs.stage_features())
