"""Pydantic validation errors as one line naming the file, line, field and what was expected."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import RecipeError
from .yaml_lines import line_for


def _fields_at(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Known keys of the model that owns ``loc`` (for 'did you mean' hints)."""
    cls: Any = model_cls
    for part in loc[:-1]:
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            for inner in (candidate, *getattr(candidate, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    cls = inner
                    break
            else:
                continue
            break
        else:
            return []
    return list(getattr(cls, "model_fields", {}))


def _describe(err: Mapping[str, Any], model_cls: type[BaseModel], prefix: tuple) -> str:
    loc = tuple(err["loc"])
    dotted = ".".join(str(p) for p in prefix + loc)
    if err["type"] == "extra_forbidden":
        known = _fields_at(model_cls, loc)
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        maybe = f"did you mean {hint[0]!r}? " if hint else ""
        return f"{dotted}: unknown key ({maybe}expected one of: {', '.join(known)})"
    if err["type"] == "missing":
        return f"{dotted}: required key is missing"
    got = err.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
    message = err["msg"].removeprefix("Value error, ")  # a validator's own words, without pydantic's label
    if err["type"] == "entry_unknown":  # the registry's own line (unknown name, closest match)
        return f"{dotted}: {message}"
    return f"{dotted}: {message}{shown}"


def raise_validation_error(
    exc: ValidationError, source: str, lines: dict[tuple, int], model_cls: type[BaseModel], prefix: tuple = ()
) -> None:
    errors = exc.errors()
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if first["type"] == "entry_invalid":  # a registered entry's own config (schema.registered): its keys
        prefix, model_cls = prefix + tuple(first["loc"]), first["ctx"]["entry_class"]
        first = first["ctx"]["entry_errors"][0]
    loc = prefix + tuple(first["loc"])
    line = line_for(loc, lines)
    where = f"{source} line {line}" if line else source
    raise RecipeError(f"{where}: {_describe(first, model_cls, prefix)}{more}") from None


# ---------------------------------------------------------------- loading
