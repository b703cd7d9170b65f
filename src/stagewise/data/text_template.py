"""``str.format`` templates from recipes and data files, bounded: only plain ``{field}`` slots.

A template is data, never code: a format spec (``{x:100000000}`` pads to 100 million characters and
never returns in practice), a conversion (``{x!r}``), attribute or index access (``{x.__class__}``)
or an automatic field (``{}``) is refused when the template is read (a recipe's templates when
it is validated, a data row's ``prompt_format`` when the row is loaded), in one line, so filling
it later is a plain ``str.format``.
"""

from __future__ import annotations

import string


def template_fields(template: str) -> list[str]:
    """The field names a template fills, in order; ValueError (one line) for anything but ``{name}``
    slots and ``{{``/``}}`` escapes."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:  # "Single '}' encountered", "unmatched '{'"
        raise ValueError(f"template {template[:60]!r}: {err} (write a literal brace as {{{{ or }}}})") from None
    fields = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        slot = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if not name.isidentifier() or spec or conversion:
            raise ValueError(
                f"template {template[:60]!r}: slot {slot[:40]!r} - only plain {{field}} slots are allowed "
                "(no format spec, conversion, attribute, index or empty {})"
            )
        fields.append(name)
    return fields
