"""Command-line overrides: ``key.path=value`` with the value read as YAML."""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import RecipeError
from .yaml_lines import LineLoader


def parse_override(text: str) -> tuple[list[str], Any]:
    """``stages.0.lr=1e-4`` -> (['stages', '0', 'lr'], 1e-4); the value is parsed as YAML with the recipe
    file's loader, so a date, set or binary value is refused as it is there; text YAML cannot parse
    (``a: b: c``) stays text."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected key=value, e.g. stages.0.lr=1e-4")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r}: empty key part in {key!r}")
    try:
        value = yaml.load(raw, Loader=LineLoader) if raw else ""
    except yaml.constructor.ConstructorError as error:
        raise RecipeError(f"override {text!r}: {error.problem}") from None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(data: dict[str, Any], parts: list[str], value: Any, text: str) -> None:
    target: Any = data
    for depth, part in enumerate(parts[:-1]):
        if isinstance(target, list):
            if not part.lstrip("-").isdigit() or not -len(target) <= int(part) < len(target):
                raise RecipeError(f"override {text!r}: {'.'.join(parts[: depth + 1])} is not a valid index")
            target = target[int(part)]
        elif isinstance(target, dict):
            target = target.setdefault(part, {})
        else:
            raise RecipeError(f"override {text!r}: {'.'.join(parts[:depth])} is not a mapping or list")
    last = parts[-1]
    if isinstance(target, list):
        if not last.isdigit() or int(last) >= len(target):
            raise RecipeError(f"override {text!r}: {'.'.join(parts)} is not a valid index")
        target[int(last)] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise RecipeError(f"override {text!r}: {'.'.join(parts[:-1])} is not a mapping or list")


# ---------------------------------------------------------------- validation errors
