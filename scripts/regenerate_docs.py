"""Regenerate every command output the README and the docs show, from a fresh run.

A documented output is a fenced `text` block preceded by a marker naming the command that
prints it (and, for the format test, a command that prints the same format in the test
sandbox, or `none`):

    <!-- docs-output: fairaudit check fairaudit-out/store --policy default | sandbox: fairaudit check store --policy default -->

`python scripts/regenerate_docs.py` runs each command from the repository root, in page order
(the default audit's block comes first, so later commands read its store), and writes what it
printed into the block. `--check` changes nothing and exits 1 when a block differs from what its
command prints now. `--only PAGE` limits either to one page, `--command TEXT` to the blocks whose
command contains TEXT. The commands need what `make audit`
makes (fairaudit-out/store) and the real models; `tests/test_docs_blocks.py` checks the format
of each block against its sandbox command instead, on a small random model.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the default audit first: the commands after it read its store
PAGES = [
    "docs/getting-started.md",
    "README.md",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md") if p.name != "getting-started.md"),
]
OUTPUT = re.compile(
    r"<!-- docs-output: (?P<command>.*?)(?: \| sandbox: (?P<sandbox>.*?))? -->\n```text\n(?P<body>.*?)^```", re.S | re.M
)


def documented_outputs(page: str) -> list[re.Match]:
    return list(OUTPUT.finditer((ROOT / page).read_text(encoding="utf-8")))


def run(command: str) -> str:
    completed = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",  # this interpreter's fairaudit, venv activated or not
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
    )
    # a release gate's verdict (1 fail, 3 undecided) is an output of audit and check, not a failure
    gated = any(name in command for name in ("fairaudit audit", "fairaudit check"))
    if completed.returncode not in ((0, 1, 3) if gated else (0,)):
        sys.exit(f"{command!r} failed with exit status {completed.returncode}:\n{completed.stderr[-2000:]}")
    return completed.stdout.strip("\n") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block differs")
    parser.add_argument("--only", help="one page, e.g. docs/compliance.md")
    parser.add_argument("--command", help="only the blocks whose command contains this text")
    arguments = parser.parse_args()
    stale = 0
    for page in [arguments.only] if arguments.only else PAGES:
        path = ROOT / page
        printed_by = {  # in page order
            match["command"]: run(match["command"])
            for match in documented_outputs(page)
            if arguments.command is None or arguments.command in match["command"]
        }
        # the page read again after its commands ran (an audit takes minutes): edits made meanwhile stay
        text = path.read_text(encoding="utf-8")
        matches = [match for match in documented_outputs(page) if match["command"] in printed_by]
        outputs = [printed_by[match["command"]] for match in matches]
        for match, printed in reversed(
            list(zip(matches, outputs))
        ):  # replaced from the end: earlier offsets stay valid
            if printed != match["body"]:
                stale += 1
                print(f"{page}: {match['command']}: {'differs' if arguments.check else 'regenerated'}")
                text = text[: match.start("body")] + printed + text[match.end("body") :]
        if not arguments.check:
            path.write_text(text, encoding="utf-8")
    return 1 if arguments.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
