"""The base of every recipe section and registered entry's options.

pydantic's lax mode would take ``lr: true`` as 1.0 and ``epochs: .inf`` as a number;
a recipe value that is a boolean where a number is expected, or not finite, is refused
here with the field's name, before anything runs.
"""
from __future__ import annotations

import re
import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

# A name that becomes a path component (stage folders, dataset files, probe files):
# letters, digits and _ . + -, not starting with '.', so never '..' or a hidden file.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
SAFE_NAME_HINT = "letters, digits, '_', '.', '+' or '-', not starting with '.' (it names a file or folder)"


def is_safe_name(name: Any) -> bool:
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None and len(name) <= 128


def _accepts_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return any(_accepts_bool(arg) for arg in get_args(annotation))
    if origin is not None and str(origin).endswith("Literal"):
        return any(isinstance(arg, bool) for arg in get_args(annotation))
    # containers (list, dict) and models validate their own items
    return origin is not None or (isinstance(annotation, type) and issubclass(annotation, BaseModel))


class StrictModel(BaseModel):
    """Unknown keys are errors; numbers are finite and never booleans."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            if not _accepts_bool(cls.model_fields[info.field_name].annotation):
                raise ValueError(f"expected a {_kind(cls.model_fields[info.field_name].annotation)}, got a boolean")
        return value


def _kind(annotation: Any) -> str:
    names = {a.__name__ for a in (annotation, *get_args(annotation)) if isinstance(a, type)}
    if names & {"int", "float"}:
        return "number"
    return "string" if "str" in names else "value of another type"
