"""The engine: the pipeline chains stages; the stage runner is the only code that trains."""

from .pipeline import RunResult, run_recipe

__all__ = ["RunResult", "run_recipe"]
