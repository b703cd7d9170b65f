"""Command-line options checked like recipe keys: typed, finite, in range, and every output path
checked before any work (a folder where a file is expected, a path under a file, a link).

A command declares its options as a :class:`~stagewise.schema.StrictModel` and reads them with
:func:`command_options`; a bad value is one line naming the ``--flag``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, ValidationError

from .errors import StagewiseError
from .io import expanded_path, file_in_the_way
from .schema import StrictModel

Options = TypeVar("Options", bound=StrictModel)


def _output_file(value: str) -> str:
    """A file stagewise may write: not a folder or a link, its folder not a file (``~`` and ``$VAR``
    expanded)."""
    value = expanded_path(value)
    path = Path(value)
    if "\x00" in value or not path.name:
        raise ValueError("expected a file path")
    if path.is_symlink():
        raise ValueError("is a link; give a plain file path")
    if path.is_dir():
        raise ValueError("is a folder; give a file path")
    blocked = file_in_the_way(path)
    if blocked is not None:
        raise ValueError(f"{blocked} is a file, not a folder")
    return value


def _output_folder(value: str) -> str:
    """A folder stagewise may write into: not a file, not under a file, not a link (``~`` and ``$VAR``
    expanded)."""
    value = expanded_path(value)
    path = Path(value)
    if "\x00" in value:
        raise ValueError("expected a folder path")
    if path.is_symlink():
        raise ValueError("is a link; give a plain folder")
    if path.exists() and not path.is_dir():
        raise ValueError("is a file; give a folder")
    blocked = file_in_the_way(path)
    if blocked is not None:
        raise ValueError(f"{blocked} is a file, not a folder")
    return value


IMAGE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "webp", "tif", "tiff", "eps")  # matplotlib's writers


def _image_file(value: str) -> str:
    """An output file whose extension names the image format matplotlib is to write."""
    suffix = Path(value).suffix.lower().lstrip(".")
    if suffix not in IMAGE_FORMATS:
        raise ValueError(f"expected an image file ending in .{', .'.join(IMAGE_FORMATS)}")
    return value


OutputFile = Annotated[str, AfterValidator(_output_file)]
ImageFile = Annotated[str, AfterValidator(_output_file), AfterValidator(_image_file)]
OutputFolder = Annotated[str, AfterValidator(_output_folder)]


def command_options(model: type[Options], args: argparse.Namespace) -> Options:
    """The command's options validated by ``model``; one line naming the flag otherwise."""
    values: dict[str, Any] = {name: getattr(args, name) for name in model.model_fields if hasattr(args, name)}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = "--" + str(error["loc"][0]).replace("_", "-") if error["loc"] else "options"
        message = error["msg"].removeprefix("Value error, ")
        got = error.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, (list, dict)) else ""
        raise StagewiseError(f"{flag}: {message}{shown}") from None
