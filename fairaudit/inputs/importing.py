"""Suite importers: what an importer plugin returns, and writing the suites it makes."""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import yaml

from fairaudit.errors import StoreError
from fairaudit.inputs.suite import Suite
from fairaudit.names import safe_name


@dataclass(frozen=True)
class SkippedRow:
    """A row that could not be imported: its number in the file, its id, and why."""

    row: int
    row_id: str
    reason: str


@dataclass
class ImportResult:
    suites: list[Suite]
    skipped: list[SkippedRow] = field(default_factory=list)
    rows: int = 0

    @property
    def imported(self) -> int:
        return sum(len(suite.sentence_pairs) + len(suite.templates) + len(suite.questions) for suite in self.suites)


class Importer(Protocol):
    """What an importer plugin provides."""

    name: str
    description: str

    def import_file(self, path: Path, params) -> ImportResult:
        """Read a data set file into suites; raise `SuiteError` if the file as a whole is unusable."""


def write_suites(suites: list[Suite], folder: str | Path) -> list[Path]:
    """Write each suite as SUITE.yaml in `folder` (atomically); return the paths."""
    folder = Path(folder)
    written = []
    for suite in suites:
        path = folder / f"{safe_name(suite.suite)}.yaml"
        data = suite.model_dump(mode="json", exclude_defaults=True)
        data = {"suite": suite.suite, "axis": suite.axis, **data}
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            temporary.write_text(
                yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=1000), encoding="utf-8"
            )
            os.replace(temporary, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise StoreError(f"could not write suite {path}: {exc.strerror or exc}.") from None
        written.append(path)
    return written
