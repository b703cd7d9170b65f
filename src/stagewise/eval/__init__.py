"""Evaluation: score a model on target and retention probes; gain and forgetting per stage.
Metrics register into ``registry.METRICS`` (built-ins in ``suite``, lm-eval in ``lm_eval_probe``)."""
from . import lm_eval_probe  # noqa: F401  (registers metric lm_eval)
from .evaluator import Evaluator
from .suite import evaluate_suite, evaluate_task

__all__ = ["Evaluator", "evaluate_suite", "evaluate_task"]
