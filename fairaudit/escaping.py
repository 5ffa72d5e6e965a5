"""Text read from files and stores (model ids, policy, suite and member names), escaped in one
place for where it is shown: a terminal, where a control character would move the cursor or fake
a line, and Markdown, where a backtick or a bar would let a name out of its code span or cell."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def for_terminal(text: object) -> str:
    """`text` with every control character (newlines, ESC, BEL, C1 codes) shown as `\\xNN`."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", str(text))


def markdown_code(text: object) -> str:
    """`text` as one Markdown code span, safe in a table cell: control characters escaped, a
    fence longer than any run of backticks inside, and `|` escaped (GFM tables split on it)."""
    shown = for_terminal(text).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", shown)), default=0) + 1)
    padding = " " if shown.startswith("`") or shown.endswith("`") or not shown.strip() else ""
    return f"{fence}{padding}{shown}{padding}{fence}"


_MARKUP = re.compile(r"[`<>|\[\]\\*]")


def markdown_text(text: object) -> str:
    """`text` as it reads in Markdown prose or a table cell: as is when it holds nothing Markdown
    or HTML would act on, else as a code span (`markdown_code`)."""
    shown = str(text)
    return markdown_code(shown) if _MARKUP.search(shown) or _CONTROL.search(shown) else shown
