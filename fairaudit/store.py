"""The store: a folder of hive-partitioned Parquet tables and one provenance record per run.

```
store/
  runs/run_id=R/run.json                                   provenance and status
  neuron_scores/model=M/axis=A/run_id=R/part-0.parquet     one row per (layer, component, neuron)
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
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from fairaudit.errors import StoreError
from fairaudit.scoring import AxisScores

SCHEMA_VERSION = 1
TABLES = ("neuron_scores", "layer_scores", "axis_summary")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, limit: int = 96) -> str:
    """A file-system-safe partition value: no separators, no leading dots, bounded length."""
    cleaned = _UNSAFE.sub("-", text.replace("/", "--")).strip(".-") or "unnamed"
    return cleaned[:limit]


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
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


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file (UTF-8) atomically: readers see the old file or the new one, never a part."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically: readers see the old file or the new one, never a part."""
    _atomic_write(Path(path), lambda temporary: temporary.write_bytes(data))


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

    def read_run(self, run_id: str) -> dict[str, Any]:
        path = self.run_path(run_id)
        if not path.exists():
            known = ", ".join(record["run_id"] for record in self.runs()) or "(none)"
            raise StoreError(f"store {self.root} has no run '{run_id}'. Runs in it: {known}.")
        return json.loads(path.read_text(encoding="utf-8"))

    def runs(self) -> list[dict[str, Any]]:
        """Every run record, oldest first."""
        records = []
        for path in sorted((self.root / "runs").glob("run_id=*/run.json")):
            try:
                records.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError):
                continue
        return sorted(records, key=lambda record: record.get("started", ""))

    def remove_temporaries(self, run_id: str) -> int:
        """Delete the temporary files a killed writer of `run_id` left (never complete parts)."""
        pattern = f"run_id={safe_name(run_id)}/.*.tmp-*"
        stale = [path for path in self.root.glob(f"*/**/{pattern}")] + list(self.root.glob(f"runs/{pattern}"))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    # --- tables ---------------------------------------------------------------------

    def part_path(self, table: str, model: str, axis: str, run_id: str, part: str = "0") -> Path:
        folder = self.root / table / f"model={safe_name(model)}" / f"axis={safe_name(axis)}" / f"run_id={safe_name(run_id)}"
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
        folder = self.root / table
        if not folder.exists():
            raise StoreError(f"store {self.root} has no table '{table}' yet; run 'fairaudit probe' or 'fairaudit audit' first.")
        keys = pa.schema([("model", pa.string()), ("axis", pa.string()), ("run_id", pa.string())])
        return ds.dataset(folder, format="parquet", partitioning=ds.partitioning(keys, flavor="hive"), ignore_prefixes=[".", "_"])

    def read(self, table: str, **equal: str) -> pa.Table:
        """Rows of `table` whose partition columns equal the given values (safe-named)."""
        dataset = self.dataset(table)
        condition = None
        for column, value in equal.items():
            term = ds.field(column) == safe_name(value)
            condition = term if condition is None else condition & term
        return dataset.to_table(filter=condition)

    def write_axis(self, model: str, run_id: str, scores: AxisScores) -> None:
        """Write the three tables of one axis; the summary last, so it marks completeness."""
        for table, data in (("neuron_scores", neuron_table(scores)), ("layer_scores", layer_table(scores)),
                            ("axis_summary", summary_table(scores))):
            self.write_part(table, model, scores.axis, run_id, data)


def write_tables(folder: str | Path, tables: dict[str, pa.Table]) -> list[Path]:
    """Write each table as NAME.parquet and NAME.csv in `folder`, atomically; return the paths."""
    import pyarrow.csv as pcsv

    written = []
    for name, table in tables.items():
        base = Path(folder) / safe_name(name, limit=200)
        parquet, csv = base.with_name(base.name + ".parquet"), base.with_name(base.name + ".csv")
        _atomic_write(parquet, lambda path, table=table: pq.write_table(table, path))
        _atomic_write(csv, lambda path, table=table: pcsv.write_csv(table, path))
        written += [parquet, csv]
    return written


def neuron_table(scores: AxisScores) -> pa.Table:
    """One row per (layer, neuron) of `scores.component`; scores as float32."""
    if not scores.neuron:
        return pa.table({"layer": pa.array([], pa.int16()), "component": pa.array([], pa.string()), "neuron": pa.array([], pa.int32())})
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


def layer_table(scores: AxisScores) -> pa.Table:
    layers = len(next(iter(scores.layer.values()))) if scores.layer else 0
    columns: dict[str, pa.Array] = {"layer": pa.array(range(layers), pa.int16())}
    for name, values in scores.layer.items():
        columns[name] = pa.array(values.float().numpy(), pa.float32())
    return pa.table(columns)


def summary_table(scores: AxisScores) -> pa.Table:
    return pa.table({name: pa.array([float(value)], pa.float64()) for name, value in scores.summary.items()} or {"pairs": pa.array([0.0])})
