"""DPO — Direct Preference Optimization (Rafailov et al. 2023) through TRL's DPOTrainer.

``loss: dpo`` on a stage with ``preference`` data (prompt/chosen/rejected). The reference
model is a frozen copy of the model *entering the stage* (after SFT, say), not the hub
checkpoint TRL would otherwise reload; with an adapter attached, TRL uses the
adapter-disabled model instead. Any selector works (HFT redraws its mask for this stage).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Literal

from pydantic import Field

from ...errors import RecipeError
from ...losses import LossContext
from ...registry import LOSSES, PluginConfig
from ...selection import is_peft_model


class DPOLossConfig(PluginConfig):
    beta: float = Field(default=0.1, gt=0)              # DPO paper / TRL default
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"


class DPOBuilder:
    def __init__(self, config: DPOLossConfig) -> None:
        self.config = config

    def build(self, *, model: Any, tokenizer: Any, rows: list[dict[str, Any]], callbacks: list[Any],
              args_for: Callable[..., Any]) -> Any:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        reference = None
        if not is_peft_model(model):
            reference = copy.deepcopy(model).eval()
            for param in reference.parameters():
                param.requires_grad_(False)
        args = args_for(DPOConfig, beta=self.config.beta, loss_type=[self.config.loss_type])
        dataset = Dataset.from_list([{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows])
        return DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=callbacks)


@LOSSES.register("dpo", DPOLossConfig)
def dpo(config: DPOLossConfig, context: LossContext) -> DPOBuilder:
    """Direct preference optimization on prompt/chosen/rejected rows (TRL DPOTrainer)."""
    if context.objective != "preference":
        raise RecipeError("loss 'dpo' needs a stage whose data has format: preference")
    return DPOBuilder(config)
