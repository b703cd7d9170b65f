"""YAML reading for recipes: safe (data, never code), size- and alias-bounded, every key's line recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import RecipeError


class LineLoader(yaml.SafeLoader):
    """SafeLoader (a recipe is data, never code) that records each key's line and builds JSON
    values only: a date, timestamp, set, binary or ordered-pairs value is one line naming its line."""


def _refuse(what: str) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        raise yaml.constructor.ConstructorError(
            None, None, f"{what} is not a recipe value (quote it to keep it as text)", node.start_mark
        )

    return construct


def _checked(construct: Any) -> Any:
    """A scalar constructor whose failure (``!!int abc``) is a YAML error at the value's line."""

    def build(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, TypeError, OverflowError):
            kind = node.tag.rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"{node.value!r} is not a valid {kind}", node.start_mark
            ) from None

    return build


for _tag, _what in (
    ("timestamp", "a date or time"),
    ("set", "a set"),
    ("binary", "binary data"),
    ("omap", "an ordered map"),
    ("pairs", "a list of pairs"),
):
    LineLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse(_what))
for _tag in ("int", "float", "bool"):
    LineLoader.add_constructor(
        f"tag:yaml.org,2002:{_tag}", _checked(yaml.SafeLoader.yaml_constructors[f"tag:yaml.org,2002:{_tag}"])
    )


MAX_RECIPE_BYTES = 16 * 2**20
MAX_YAML_VALUES = 200_000  # values after expanding aliases: a recipe is small, an alias bomb is not


def _compose_lines(node: yaml.Node, path: tuple, lines: dict[tuple, int], budget: list[int], source: str) -> None:
    """Record each key's line; refuse duplicate keys and alias expansions past the budget."""
    budget[0] -= 1
    if budget[0] < 0:
        raise RecipeError(f"{source}: the YAML expands to more than {MAX_YAML_VALUES} values (nested aliases?)")
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                dotted = ".".join(map(str, path + (key,)))
                raise RecipeError(f"{source} line {line}: {dotted}: duplicate key (first given on line {seen[key]})")
            seen[key] = line
            _compose_lines(value_node, path + (key,), lines, budget, source)
            lines[path + (key,)] = line
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _compose_lines(item, path + (index,), lines, budget, source)


def read_text_file(path: Path, what: str = "file") -> str:
    """UTF-8 text, or one line naming the file and the first undecodable byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(
            f"{path}: {what} is not UTF-8 text (byte {err.start} is 0x{data[err.start]:02x}); save it as UTF-8"
        ) from None


def read_yaml(text: str, source: str) -> tuple[dict[str, Any], dict[tuple, int]]:
    try:
        node = yaml.compose(text, Loader=LineLoader)
        lines: dict[tuple, int] = {}
        if node is not None:
            _compose_lines(node, (), lines, [MAX_YAML_VALUES], source)
        data = yaml.load(text, Loader=LineLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{source}{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise RecipeError(f"{source}: the YAML is nested too deeply") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: expected a mapping of recipe keys at the top level")
    return data, lines


# ---------------------------------------------------------------- overrides


def line_for(loc: tuple, lines: dict[tuple, int]) -> int | None:
    loc = tuple(int(p) if isinstance(p, str) and p.isdigit() else p for p in loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None


def read_yaml_file(path: Path, what: str) -> tuple[dict[str, Any], dict[tuple, int]]:
    """A recipe or study file: present, not oversized, UTF-8, valid YAML (with each key's line)."""
    if not path.is_file():
        raise RecipeError(f"{path}: {what} file not found")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: {what} is larger than {MAX_RECIPE_BYTES // 2**20} MiB (put rows in a data file)")
    return read_yaml(read_text_file(path, what), str(path))
