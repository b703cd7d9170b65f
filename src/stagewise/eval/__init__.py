"""Evaluation: score a model on target and retention probes; gain and forgetting per stage."""
from .suite import evaluate_suite, evaluate_task

__all__ = ["evaluate_suite", "evaluate_task"]
