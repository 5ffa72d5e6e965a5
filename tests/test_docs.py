"""The front door: a short README, links that resolve, and a documentation site that builds
with `mkdocs build --strict` (broken links and bad references fail)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert text.index("make audit") < text.index("make test") < 400


@pytest.mark.parametrize("page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_relative_links_resolve(page):
    path = ROOT / page
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (path.parent / target).exists(), f"{page} links to {target}, which does not exist"


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason="mkdocs and mkdocs-material are not installed (pip install -e '.[docs]')",
)
def test_the_documentation_site_builds_strictly(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "site" / "attribution" / "index.html").exists() and (
        tmp_path / "site" / "api" / "index.html"
    ).exists()


def test_the_command_tables_are_the_commands_own():
    """README's and getting-started's command tables are generated from the click commands
    (`python scripts/command_table.py`): every option of every command, as `--help` has it."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from command_table import PAGES, REGION, table

    wanted = table()
    for page in PAGES:
        region = REGION.search((ROOT / page).read_text(encoding="utf-8"))
        assert region is not None and region.group(2) == wanted, f"{page}: run python scripts/command_table.py"
    assert "--save-dtype" in wanted and "--one-at-a-time" in wanted and "--allow-task-code" in wanted
