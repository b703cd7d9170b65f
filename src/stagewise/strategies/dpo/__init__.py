"""DPO — Direct Preference Optimization (Rafailov et al. 2023) through TRL's DPOTrainer.

``trainer: dpo`` on a stage with ``preference`` data (prompt/chosen/rejected). The reference
model is a frozen copy of the model *entering the stage* (after SFT, say), not the hub
checkpoint TRL would otherwise reload; with an adapter attached, TRL uses the
adapter-disabled model instead. Any selector and LR rule work (HFT redraws its mask for this
stage; TempBalance's per-layer groups reach DPO's optimizer through the trainer slot).
"""
from __future__ import annotations

import copy
from typing import Literal

from pydantic import Field
from transformers import Trainer

from ...addons import is_peft_model
from ...registry import TRAINERS, PluginConfig, Requires, TrainerTraits
from ...trainers import TrainerInputs, stage_trainer_class


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

    reference = None
    if not is_peft_model(inputs.model):
        reference = copy.deepcopy(inputs.model).eval()
        for param in reference.parameters():
            param.requires_grad_(False)
    args = inputs.args_for(TrlDPOConfig, beta=config.beta, loss_type=[config.loss_type])
    dataset = Dataset.from_list([{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in inputs.rows])
    return stage_trainer_class(DPOTrainer)(
        model=inputs.model, ref_model=reference, args=args, train_dataset=dataset,
        processing_class=inputs.tokenizer, callbacks=inputs.callbacks, **inputs.stage_features())
