"""The base of every recipe section and registered entry's options.

pydantic's lax mode would take ``lr: true`` as 1.0 and ``epochs: .inf`` as a number;
a recipe value that is a boolean where a number is expected, or not finite, is refused
here with the field's name, before anything runs.
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator

# A name that becomes a path component (stage folders, dataset files, probe files):
# letters, digits and _ . + -, not starting with '.', so never '..' or a hidden file.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
SAFE_NAME_HINT = "letters, digits, '_', '.', '+' or '-', not starting with '.' (it names a file or folder)"


def is_safe_name(name: Any) -> bool:
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None and len(name) <= 128


def _check_safe_name(value: str) -> str:
    if not is_safe_name(value):
        raise ValueError(f"expected {SAFE_NAME_HINT}")
    return value


SafeName = Annotated[str, AfterValidator(_check_safe_name)]  # a recipe name that becomes a path component


def _misplaced_bool(value: Any, annotation: Any) -> bool:
    """True where ``value`` is (or holds, in a list or dict) a boolean that ``annotation`` does not take."""
    if annotation is Any or annotation is bool:
        return False
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Union or origin is types.UnionType:
        return all(_misplaced_bool(value, arg) for arg in args)
    if origin is not None and str(origin).endswith("Literal"):
        return isinstance(value, bool) and not any(isinstance(arg, bool) for arg in args)
    if isinstance(value, bool):
        return not (isinstance(annotation, type) and issubclass(annotation, BaseModel))
    if origin in (list, set, tuple) and args and isinstance(value, (list, tuple, set)):
        return any(_misplaced_bool(item, args[0]) for item in value)
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return any(_misplaced_bool(item, args[1]) for item in value.values())
    return False


class StrictModel(BaseModel):
    """Unknown keys are errors; numbers are finite and never booleans."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is not None and _misplaced_bool(value, cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a {_kind(cls.model_fields[info.field_name].annotation)}, got a boolean")
        return value


def _types(annotation: Any) -> set[str]:
    """Names of the plain types inside an annotation (through lists, unions and Annotated)."""
    found = {annotation.__name__} if isinstance(annotation, type) else set()
    for arg in get_args(annotation):
        found |= _types(arg)
    return found


def _kind(annotation: Any) -> str:
    names = _types(annotation)
    if names & {"int", "float"}:
        return "number"
    return "string" if "str" in names else "value of another type"
