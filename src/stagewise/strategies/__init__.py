"""Strategies: one folder each, registering selectors / losses / LR rules / transforms.

Adding a strategy = a folder here, imported below, plus a recipe YAML.
"""
from . import adapters, class_balanced, dpo, gradual, hft, sdft, tempbalance  # noqa: F401  (registrations)
