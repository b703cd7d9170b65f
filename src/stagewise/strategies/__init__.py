"""Strategies: one folder each, registering selectors / losses / LR rules / transforms.

Adding a strategy = a folder here, imported below, plus a recipe YAML.
"""
from . import class_balanced, hft, tempbalance  # noqa: F401  (imported for their registrations)
