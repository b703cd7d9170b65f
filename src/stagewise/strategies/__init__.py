"""Strategies: one folder each, registering into the extension points of ``stagewise.registry``.

Every folder here is imported by ``registry.load_plugins`` (no list to keep): adding a strategy is a
folder plus a recipe YAML (README: "Adding a strategy").
"""
