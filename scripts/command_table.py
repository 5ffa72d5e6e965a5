"""The command tables of the README and docs/getting-started.md, generated from the click
commands themselves: every option of every command, required ones bare, the others in
brackets, choices spelled out; the description is the command's own help.

`python scripts/command_table.py` rewrites the table between the markers
`<!-- commands: begin -->` and `<!-- commands: end -->` in both pages; `--check` changes
nothing and exits 1 when a table differs from the commands (`tests/test_docs.py` runs it).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/getting-started.md"]
REGION = re.compile(r"(<!-- commands: begin -->\n)(.*?)(<!-- commands: end -->)", re.S)


def _option(option: click.Option) -> str:
    flag = max(option.opts, key=len)
    if option.is_flag or option.count:
        return f"[{flag}]"
    if isinstance(option.type, click.Choice):
        text = f"{flag} {'|'.join(str(choice) for choice in option.type.choices)}"
    else:
        text = f"{flag} {option.metavar or flag.lstrip('-').upper().replace('-', '_')}"
    if option.multiple:
        text += " ..."
    return text if option.required else f"[{text}]"


def _argument(argument: click.Argument) -> str:
    text = (argument.metavar or argument.name or "").upper() + ("..." if argument.nargs == -1 else "")
    return text if argument.required else f"[{text}]"


def synopsis(path: list[str], command: click.Command) -> str:
    """`fairaudit PATH ARGS [OPTIONS]`: every parameter of the command but --help."""
    words = ["fairaudit", *path]
    words += [_argument(p) for p in command.params if isinstance(p, click.Argument)]
    words += [_option(p) for p in command.params if isinstance(p, click.Option) and p.name != "help"]
    return " ".join(words)


def rows(group: click.Group, path: list[str] | None = None) -> list[tuple[str, str]]:
    """(synopsis, description) for every command, groups expanded, in the order of `--help`."""
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += rows(command, [*(path or []), name])
        else:
            found.append((synopsis([*(path or []), name], command), command.get_short_help_str(limit=300)))
    return found


def table() -> str:
    from fairaudit.cli import main

    lines = ["| command | what it does |", "|---|---|"]
    for command, description in rows(main):
        lines.append(f"| `{command.replace('|', chr(92) + '|')}` | {description.replace('|', chr(92) + '|')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table differs")
    arguments = parser.parse_args()
    wanted, stale = table(), []
    for page in PAGES:
        path = ROOT / page
        text = path.read_text(encoding="utf-8")
        match = REGION.search(text)
        if match is None:
            sys.exit(f"{page}: no '<!-- commands: begin -->' ... '<!-- commands: end -->' region")
        if match.group(2) != wanted:
            stale.append(page)
            if not arguments.check:
                path.write_text(text[: match.start(2)] + wanted + text[match.end(2) :], encoding="utf-8")
    if stale:
        print(("differs from the commands: " if arguments.check else "rewrote: ") + ", ".join(stale))
    return 1 if stale and arguments.check else 0


if __name__ == "__main__":
    sys.exit(main())
