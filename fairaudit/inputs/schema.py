"""What every item of a suite shares: strict models, identifiers, placeholders."""

from __future__ import annotations

import string

from pydantic import BaseModel, ConfigDict

IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def placeholders(text: str) -> list[str]:
    """Placeholder names used in a template text (`{group}` -> `group`), in order."""
    try:
        parsed = [
            (name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(text) if name is not None
        ]
    except ValueError as exc:
        raise ValueError(
            f"malformed placeholder in {text[:200]!r}: {exc} (write a literal brace as '{{{{' or '}}}}')"
        ) from None
    for name, spec, conversion in parsed:
        if (
            not name.isidentifier() or spec or conversion
        ):  # a format spec such as {group:>1000000000} could fill gigabytes
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec[:20]}" if spec else "")
            raise ValueError(
                f"placeholder {{{shown}}} in {text[:200]!r} is not a plain name like {{group}} "
                f"(format specs and conversions are not allowed)"
            )
    return [name for name, _, _ in parsed]
