"""``stagewise study``: several arms x seeds (x a sweep) through the normal engine, compared item
by item with bootstrap intervals, at matched target gain (see stats.py for the methods)."""

from .config import Study, StudyRun, load_study, select_arms, select_seeds
from .runner import plan, run_study

__all__ = ["Study", "StudyRun", "load_study", "select_arms", "select_seeds", "plan", "run_study"]
