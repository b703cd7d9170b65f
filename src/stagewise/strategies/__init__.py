"""Strategies: one folder each, registering into the extension points of ``stagewise.registry``.

Adding a strategy = a folder here, imported below, plus a recipe YAML (README: "Adding a strategy").
"""
from . import (class_balanced, dpo, eaft, gradual, hft, lora, mofo, osf, promot, reference_free,  # noqa: F401
               regularized, replay, rlhf, sdft, tempbalance, templates)  # registrations
