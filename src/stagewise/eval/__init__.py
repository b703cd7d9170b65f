"""Evaluation: score a model on target and retention probes; gain and forgetting per stage.
Metrics register into ``registry.METRICS`` (built-ins in ``suite``, log-likelihood probes in ``likelihood``,
lm-eval in ``lm_eval_probe``)."""

from . import likelihood, lm_eval_probe  # noqa: F401  (register answer_logprob, choice, lm_eval)
from .evaluator import Evaluator
from .suite import evaluate_suite, evaluate_task

__all__ = ["Evaluator", "evaluate_suite", "evaluate_task"]
