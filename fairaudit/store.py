"""The store: a folder of hive-partitioned Parquet tables and one provenance record per run.

```
store/
  runs/run_id=R/run.json                                   provenance and status
  neuron_scores/model=M/axis=A/run_id=R/part-0.parquet     one row per (layer, component, neuron)
  head_scores/model=M/axis=A/run_id=R/part-0.parquet       one row per (layer, head), when a scorer wrote head columns
  layer_scores/model=M/axis=A/run_id=R/part-0.parquet      one row per layer
  axis_summary/model=M/axis=A/run_id=R/part-0.parquet      one row: bias index, interval, counts
```

DuckDB, Polars, pandas and pyarrow.dataset read each table folder as one table (the
partition keys become columns). Every file is written under a temporary name in its
final folder and renamed into place, so a killed run never leaves a partial part; a part
that exists is complete. Runs never share a file, so concurrent runs cannot collide.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import platform
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from fairaudit.errors import StoreError
from fairaudit.measurement.scoring import AxisScores
from fairaudit.names import safe_name  # noqa: F401 (part of the store's API)

SCHEMA_VERSION = 1
TABLES = ("neuron_scores", "layer_scores", "axis_summary")
PARTITIONS = ("model", "axis", "run_id")
RUN_KINDS = ("audit", "prune", "evaluate", "sweep", "match")
RunKind = Literal["audit", "prune", "evaluate", "sweep", "match"]
RunStatus = Literal["running", "complete", "failed", "interrupted"]


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def now() -> str:
    """The current UTC time as the run records write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def environment() -> dict[str, str]:
    """Where a run ran: host, platform and the versions that decide its numbers."""
    import torch
    import transformers

    import fairaudit

    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "fairaudit": fairaudit.__version__,
    }


class RunRecord(BaseModel):
    """A run's provenance record (`runs/run_id=R/run.json`). The fields every kind of run has
    are typed here; a kind adds its own (an audit its suites, plugins and prune outcome, a
    prune its selection and widths), kept as given. `status` is set by `Store.recording` only:
    running while the run works, then complete, failed (with `error`) or interrupted."""

    model_config = ConfigDict(extra="allow")

    run_id: str
    kind: RunKind
    status: RunStatus = "running"
    started: str = Field(default_factory=now)
    finished: str | None = None
    error: str | None = None
    model_id: str = ""
    environment: dict[str, str] | None = None
    timings: dict[str, float] | None = None  # wall and CPU seconds per stage (audit)
    warnings: list[str] | None = None  # fairaudit's own notes (pairs left out, ...)
    library_warnings: list[str] | None = None  # Python warnings libraries gave during the run, each once
    evaluation_failures: list[str] | None = None
    prune: dict[str, Any] | None = None  # an audit that pruned: its prune run, where the model went, what was removed
    prune_skipped: dict[str, Any] | None = None  # an audit whose causal selection found nothing to prune: why
    files: dict[str, str] | None = None  # sha256 of every table file the run wrote, set when it completes

    def add(self, **fields: Any) -> None:
        """Add (or replace) fields of this kind of run, such as a match's figures."""
        for name, value in fields.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        """The record as stored (fields never set left out)."""
        return self.model_dump(mode="json", exclude_none=True, exclude={"run_id"})


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write `path` through a temporary sibling and a rename; on failure leave nothing behind."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise StoreError(
            f"could not write {path}: {exc.strerror or exc}. Nothing partial was left; results written "
            f"before this one are intact. Free space or choose another store folder, then rerun with --resume."
        ) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file (UTF-8) atomically: readers see the old file or the new one, never a part."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically: readers see the old file or the new one, never a part."""
    _atomic_write(Path(path), lambda temporary: temporary.write_bytes(data))


def _run_record(path: Path) -> dict[str, Any]:
    """A run record read and checked: a JSON object with a known kind and a status."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StoreError(
            f"run record {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); it is corrupt or "
            f"truncated. Other runs of the store are not affected."
        ) from None
    if (
        not isinstance(record, dict)
        or record.get("kind", "audit") not in RUN_KINDS
        or not isinstance(record.get("status"), str)
        or not isinstance(record.get("run_id", ""), str)
        or not isinstance(record.get("model_id", ""), str)
    ):
        raise StoreError(
            f"run record {path} is not a fairaudit run record (it needs a kind among {', '.join(RUN_KINDS)}, a status "
            f"and string ids). Other runs of the store are not affected."
        )
    return record


def writer_alive(temporary: Path) -> bool:
    """True when the process named in a temporary file's name (`.NAME.tmp-PID-HEX`) is running."""
    match = re.search(r"\.tmp-(\d+)-", temporary.name)
    if match is None:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return int(match.group(1)) != 0


class Store:
    """A store folder (created on first write)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # --- runs -----------------------------------------------------------------------

    def run_path(self, run_id: str) -> Path:
        return self.root / "runs" / f"run_id={safe_name(run_id)}" / "run.json"

    def write_run(self, run_id: str, record: dict[str, Any]) -> None:
        text = json.dumps({"schema_version": SCHEMA_VERSION, "run_id": run_id, **record}, indent=2, default=str)
        _atomic_write(self.run_path(run_id), lambda path: path.write_text(text, encoding="utf-8"))

    def save(self, record: RunRecord) -> None:
        """Write a run record (atomically, like every file of the store)."""
        self.write_run(record.run_id, record.as_dict())

    @contextlib.contextmanager
    def recording(self, kind: RunKind, run_id: str | None = None, **fields: Any) -> Iterator[RunRecord]:
        """A run recorded from start to end: its record is written "running" now, and "complete"
        when the block ends; an exception marks it "failed" with its error, Ctrl-C or a
        termination signal (which the command line turns into `KeyboardInterrupt`)
        "interrupted". The block may change the record and `save` it as it goes; a block that ends
        normally but sets `error` (a sweep with a failed cell) leaves the run "failed"."""
        record = RunRecord(run_id=run_id or new_run_id(), kind=kind, environment=environment(), **fields)
        self.save(record)
        try:
            yield record
        except BaseException as exc:
            record.status = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed"
            record.error = str(exc) or type(exc).__name__
            with contextlib.suppress(StoreError):  # the store may be what failed; the original error is what matters
                self.save(record)
            raise
        record.status, record.finished = ("failed" if record.error else "complete"), now()
        record.files = self.run_files(record.run_id)
        self.save(record)

    def run_files(self, run_id: str) -> dict[str, str]:
        """The sha256 of every table file a run wrote (its parts in every table), by path relative
        to the store."""
        found = {}
        for path in sorted(self.root.glob(f"*/**/run_id={safe_name(run_id)}/*")):
            relative = path.relative_to(self.root)
            if path.is_file() and not path.name.startswith(".") and relative.parts[0] != "runs":
                found[relative.as_posix()] = _sha256(path)
        return found

    def verify(self, run_id: str) -> dict[str, Any]:
        """A complete run's record, once every table file it wrote is checked against the hashes
        recorded when it completed: a changed, missing or added file is refused, named; so is one of
        the prune run whose model an audit evaluated (its neuron map). (A record
        rewritten together with its files is not detected; a bundle pinned by its manifest's
        hash is: docs/trust.md.)"""
        record = self.read_run(run_id)
        if record.get("status") != "complete":
            return record  # nothing was promised: no verdict, card or bundle is made of it
        recorded = record.get("files")
        if not isinstance(recorded, dict):
            raise StoreError(
                f"run {run_id} in {self.root} has no manifest of its files (a record written by hand, or by an "
                f"earlier fairaudit): its tables cannot be shown to be the ones it wrote. Rerun it."
            )
        current = self.run_files(run_id)
        changed = sorted(name for name in recorded if name in current and current[name] != recorded[name])
        missing = sorted(name for name in recorded if name not in current)
        added = sorted(name for name in current if name not in recorded)
        for problem, names in (("changed", changed), ("missing", missing), ("added", added)):
            if names:
                raise StoreError(
                    f"run {run_id}: {len(names)} table file(s) {problem} since the run completed, e.g. "
                    f"{self.root / names[0]}; its results cannot be trusted. Rerun the audit."
                )
        prune_run = (record.get("prune") or {}).get("run_id")
        if prune_run and prune_run != run_id and self.run_path(prune_run).exists():
            self.verify(prune_run)
        return record

    def read_run(self, run_id: str) -> dict[str, Any]:
        path = self.run_path(run_id)
        if not path.exists():
            known = ", ".join(record["run_id"] for record in self.runs()) or "(none)"
            raise StoreError(f"store {self.root} has no run '{run_id}'. Runs in it: {known}.")
        return _run_record(path)

    def runs(self) -> list[dict[str, Any]]:
        """Every readable run record, oldest first (an unreadable one is skipped: it must not
        hide the others; reading it by id says what is wrong with it)."""
        records = []
        for path in sorted((self.root / "runs").glob("run_id=*/run.json")):
            try:
                records.append(_run_record(path))
            except StoreError:
                continue
        return sorted(records, key=lambda record: str(record.get("started", "")))

    def remove_temporaries(self, run_id: str) -> int:
        """Delete the temporary files that dead writers of `run_id` left (never complete parts,
        never the temporaries of a writer that is still running: its pid is in their name)."""
        pattern = f"run_id={safe_name(run_id)}/.*.tmp-*"
        stale = [
            path
            for path in list(self.root.glob(f"*/**/{pattern}")) + list(self.root.glob(f"runs/{pattern}"))
            if not writer_alive(path)
        ]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    # --- tables ---------------------------------------------------------------------

    def part_path(self, table: str, model: str, axis: str, run_id: str, part: str = "0") -> Path:
        folder = (
            self.root / table / f"model={safe_name(model)}" / f"axis={safe_name(axis)}" / f"run_id={safe_name(run_id)}"
        )
        return folder / f"part-{safe_name(part)}.parquet"

    def write_part(self, table: str, model: str, axis: str, run_id: str, data: pa.Table, part: str = "0") -> Path:
        metadata = {**(data.schema.metadata or {}), b"fairaudit.schema_version": str(SCHEMA_VERSION).encode()}
        data = data.replace_schema_metadata(metadata)
        path = self.part_path(table, model, axis, run_id, part)
        _atomic_write(path, lambda temporary: pq.write_table(data, temporary))
        return path

    def has_axis(self, model: str, axis: str, run_id: str) -> bool:
        """True when every table of this (model, axis, run) is complete on disk."""
        return all(self.part_path(table, model, axis, run_id).exists() for table in TABLES)

    def dataset(self, table: str) -> ds.Dataset:
        """The whole table as a pyarrow dataset (for DuckDB-style analysis; every part must be readable)."""
        folder = self.root / table
        if not folder.exists():
            raise StoreError(
                f"store {self.root} has no table '{table}' yet; run 'fairaudit probe' or 'fairaudit audit' first."
            )
        keys = pa.schema([(key, pa.string()) for key in PARTITIONS])
        return ds.dataset(
            folder, format="parquet", partitioning=ds.partitioning(keys, flavor="hive"), ignore_prefixes=[".", "_"]
        )

    def read(self, table: str, **equal: str) -> pa.Table:
        """Rows of `table` whose partition columns (model, axis, run_id) equal the given values
        (safe-named). Only the parts of the matching partitions are opened, so a corrupt or stray
        file elsewhere in the store does not matter; a corrupt matching part is an error naming it."""
        if not (self.root / table).is_dir():
            raise StoreError(
                f"store {self.root} has no table '{table}' yet; run 'fairaudit probe' or 'fairaudit audit' first."
            )
        return self._read_parts(table, equal)

    def rows(self, table: str, **equal: str) -> list[dict[str, Any]]:
        """`read` as a list of row dicts; a table the store does not have yet gives no rows."""
        if not (self.root / table).is_dir():
            return []
        return self._read_parts(table, equal).to_pylist()

    def _read_parts(self, table: str, equal: dict[str, str]) -> pa.Table:
        unknown = sorted(set(equal) - set(PARTITIONS))
        if unknown:
            raise ValueError(f"not partition columns: {unknown}")
        pattern = "/".join(
            f"{key}={glob.escape(safe_name(equal[key]))}" if key in equal else f"{key}=*" for key in PARTITIONS
        )
        parts = []
        for path in sorted((self.root / table).glob(f"{pattern}/*.parquet")):
            if path.name.startswith((".", "_")) or not path.is_file():
                continue
            try:
                data = pq.read_table(path)
            except (pa.ArrowException, OSError) as exc:
                raise StoreError(
                    f"store file {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); it is "
                    f"corrupt, truncated or not a fairaudit part. Move it out of the store (other runs are not "
                    f"affected) and rerun the run that wrote it."
                ) from None
            values = {
                part.split("=", 1)[0]: part.split("=", 1)[1] for part in path.relative_to(self.root / table).parts[:-1]
            }
            for key in PARTITIONS:
                data = data.drop_columns([key]) if key in data.column_names else data
                data = data.append_column(key, pa.array([values[key]] * data.num_rows, pa.string()))
            parts.append(data)
        if not parts:
            return pa.table({key: pa.array([], pa.string()) for key in PARTITIONS})
        try:
            return pa.concat_tables(parts, promote_options="permissive")
        except pa.ArrowException as exc:
            raise StoreError(
                f"the parts of table '{table}' in {self.root} do not fit together ({exc}); a part was replaced "
                f"by a file of another table."
            ) from None

    def write_axis(self, model: str, run_id: str, scores: AxisScores) -> None:
        """Write the three tables of one axis; the summary last, so it marks completeness."""
        tables = [("neuron_scores", neuron_table(scores)), ("layer_scores", layer_table(scores))]
        if scores.head:
            tables.append(("head_scores", head_table(scores)))
        for table, data in (*tables, ("axis_summary", summary_table(scores))):
            self.write_part(table, model, scores.axis, run_id, data)


def write_tables(folder: str | Path, tables: dict[str, pa.Table]) -> list[Path]:
    """Write each table as NAME.parquet and NAME.csv in `folder`, atomically; return the paths."""
    import pyarrow.csv as pcsv

    written = []
    for name, table in tables.items():
        base = Path(folder) / safe_name(name, limit=200)
        parquet, csv = base.with_name(base.name + ".parquet"), base.with_name(base.name + ".csv")
        _atomic_write(parquet, functools.partial(pq.write_table, table))
        _atomic_write(csv, functools.partial(pcsv.write_csv, table))
        written += [parquet, csv]
    return written


def neuron_table(scores: AxisScores) -> pa.Table:
    """One row per (layer, neuron) of `scores.component`; scores as float32."""
    if not scores.neuron:
        return pa.table(
            {
                "layer": pa.array([], pa.int16()),
                "component": pa.array([], pa.string()),
                "neuron": pa.array([], pa.int32()),
            }
        )
    first = next(iter(scores.neuron.values()))
    layers, units = first.shape
    columns: dict[str, pa.Array] = {
        "layer": pa.array([layer for layer in range(layers) for _ in range(units)], pa.int16()),
        "component": pa.array([scores.component] * (layers * units), pa.string()).dictionary_encode(),
        "neuron": pa.array(list(range(units)) * layers, pa.int32()),
    }
    for name, values in scores.neuron.items():
        columns[name] = pa.array(values.float().flatten().numpy(), pa.float32())
    return pa.table(columns)


def head_table(scores: AxisScores) -> pa.Table:
    """One row per (layer, attention head); scores as float32."""
    layers, heads = next(iter(scores.head.values())).shape
    columns: dict[str, pa.Array] = {
        "layer": pa.array([layer for layer in range(layers) for _ in range(heads)], pa.int16()),
        "head": pa.array(list(range(heads)) * layers, pa.int32()),
    }
    for name, values in scores.head.items():
        columns[name] = pa.array(values.float().flatten().numpy(), pa.float32())
    return pa.table(columns)


def layer_table(scores: AxisScores) -> pa.Table:
    layers = len(next(iter(scores.layer.values()))) if scores.layer else 0
    columns: dict[str, pa.Array] = {"layer": pa.array(range(layers), pa.int16())}
    for name, values in scores.layer.items():
        columns[name] = pa.array(values.float().numpy(), pa.float32())
    return pa.table(columns)


def summary_table(scores: AxisScores) -> pa.Table:
    return pa.table(
        {name: pa.array([float(value)], pa.float64()) for name, value in scores.summary.items()}
        or {"pairs": pa.array([0.0])}
    )
