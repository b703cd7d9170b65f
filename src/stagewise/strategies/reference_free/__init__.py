"""Preference objectives without a reference model, through TRL (``trl.experimental``):

- ``orpo`` — ORPO (Hong et al., EMNLP 2024): SFT loss on the chosen answer plus β times the
  log odds-ratio loss of chosen over rejected;
- ``cpo`` — CPO (Xu et al., ICML 2024): a sigmoid preference loss on the policy's own
  log-probabilities plus an NLL term on the chosen answer (``cpo_alpha``);
- ``simpo`` — SimPO (Meng et al., NeurIPS 2024): length-normalised log-probability margins
  with a target margin γ (TRL's CPOTrainer with ``loss_type: simpo`` and no NLL term).

Each is a trainer entry on ``preference`` rows (prompt/chosen/rejected), like ``dpo``; every
selector, LR rule and regularizer reaches it through the trainer slot.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from transformers import Trainer

from ...protocols import TrainerInputs
from ...registry import TRAINERS, PluginConfig, Requires, TrainerTraits
from ...trainers import stage_trainer_class

PREFERENCE = Requires(objectives=("preference",), model_tasks=("causal_lm",), sharded=False)  # TRL trainer
OWN_BATCHES = TrainerTraits(takes_loss=False, samples_examples=False)


class ORPOConfig(PluginConfig):
    beta: float = Field(default=0.1, gt=0)  # λ of the odds-ratio term (paper: 0.1 on Mistral/Llama-2)


class CPOConfig(PluginConfig):
    beta: float = Field(default=0.1, gt=0)  # TRL / CPO paper default
    cpo_alpha: float = Field(default=1.0, ge=0)  # weight of the NLL term on the chosen answer


class SimPOConfig(PluginConfig):
    beta: float = Field(default=2.0, gt=0)  # SimPO paper: β in 2.0-2.5
    gamma_beta_ratio: float = Field(default=0.5, ge=0)  # SimPO paper: γ/β = 0.5 (TRL's simpo_gamma = γ)


def preference_trainer(trainer_cls: Any, config_cls: Any, inputs: TrainerInputs, **settings: Any) -> Trainer:
    from datasets import Dataset

    dataset = Dataset.from_list([{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in inputs.rows])
    return stage_trainer_class(trainer_cls)(
        model=inputs.pretrained,
        args=inputs.args_for(config_cls, **settings),
        train_dataset=dataset,
        processing_class=inputs.tokenizer,
        callbacks=inputs.callbacks,
        **inputs.stage_features(),
    )


@TRAINERS.register("orpo", ORPOConfig, requires=PREFERENCE, traits=OWN_BATCHES)
def orpo_trainer(config: ORPOConfig, inputs: TrainerInputs) -> Trainer:
    """ORPO: odds-ratio preference optimisation, no reference model (TRL ORPOTrainer)."""
    from trl.experimental.orpo import ORPOConfig as TrlConfig
    from trl.experimental.orpo import ORPOTrainer

    return preference_trainer(ORPOTrainer, TrlConfig, inputs, beta=config.beta)


@TRAINERS.register("cpo", CPOConfig, requires=PREFERENCE, traits=OWN_BATCHES)
def cpo_trainer(config: CPOConfig, inputs: TrainerInputs) -> Trainer:
    """CPO: contrastive preference optimisation with an NLL term (TRL CPOTrainer)."""
    from trl.experimental.cpo import CPOConfig as TrlConfig
    from trl.experimental.cpo import CPOTrainer

    return preference_trainer(
        CPOTrainer, TrlConfig, inputs, beta=config.beta, cpo_alpha=config.cpo_alpha, loss_type="sigmoid"
    )


@TRAINERS.register("simpo", SimPOConfig, requires=PREFERENCE, traits=OWN_BATCHES)
def simpo_trainer(config: SimPOConfig, inputs: TrainerInputs) -> Trainer:
    """SimPO: length-normalised margins with a target margin, no reference (TRL CPOTrainer)."""
    from trl.experimental.cpo import CPOConfig as TrlConfig
    from trl.experimental.cpo import CPOTrainer

    return preference_trainer(
        CPOTrainer,
        TrlConfig,
        inputs,
        beta=config.beta,
        loss_type="simpo",
        cpo_alpha=0.0,
        simpo_gamma=config.gamma_beta_ratio * config.beta,
    )
