"""Strategies: one folder each, registering into the extension points of ``stagewise.registry``.

Adding a strategy = a folder here, imported below, plus a recipe YAML (README: "Adding a strategy").
"""
from . import (class_balanced, dpo, eaft, gradual, hft, lora, mofo, on_policy_distill, on_policy_replay,  # noqa: F401
               osf, promot, reference_free, regularized, replay, rlhf, sdft, tempbalance, templates)  # registrations
