"""Audit sweeps: a grid of ordinary audit runs (models x suites x pruning settings x ...)
written to one store, run one after another in this process or as Ray tasks.

```yaml
sweep: budgets                       # the sweep's id in the store
base: audit.yaml                     # a run config file (relative to this file), or
config: {evaluators: [output_bias]}  # ... an inline one (both: the inline keys win)
store: out/store                     # default: the base config's store
grid:                                # dotted paths into the run config -> the values to try
  model: [smollm2-135m, ./my-finetune]
  suites: [[race], [gender]]
  pruning.selection.fraction: [0.002, 0.01]
resources: {num_cpus: 1}             # per cell, for Ray (num_gpus defaults to 1 on a cuda device)
```

Each cell is one audit run whose id is derived from the sweep id and the cell's whole config
(the base's included), so a rerun of the same sweep finds the cells that are complete in the
store and skips them, and resumes the ones a killed sweep left unfinished; a cell whose config
changed (a base edited, a suite added) is a new cell, run anew. Paths are relative to the file
that names them: the base's to the base file, the sweep's (`store`, `config`, grid values) to
the sweep file. A cell that fails is recorded in the
store with its error; the other cells still run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fairaudit.config import RunConfig
from fairaudit.errors import ConfigError, FairauditError
from fairaudit.store import Store
from fairaudit.yamlio import read_model, read_yaml

MAX_CELLS = 10_000


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float | None = Field(default=None, ge=0, description="default: 1 when the model's device is cuda, else 0")


class SweepFile(BaseModel):
    """A sweep file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    sweep: str = Field(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    base: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    store: str | None = None
    grid: dict[str, list[Any]] = Field(min_length=1)
    resources: Resources = Field(default_factory=Resources)

    @field_validator("grid")
    @classmethod
    def _values(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"grid key '{key}' has no values")
            if not all(part.isidentifier() for part in key.split(".")):
                raise ValueError(
                    f"grid key '{key}' is not a dotted path into the run config (e.g. pruning.selection.fraction)"
                )
        return grid

    @model_validator(mode="after")
    def _bounded(self) -> SweepFile:
        cells = 1
        for values in self.grid.values():
            cells *= len(values)
        if cells > MAX_CELLS:
            raise ValueError(f"the grid has {cells:,} cells; a sweep has at most {MAX_CELLS:,}")
        return self


@dataclass
class Cell:
    """One run of the grid: its run id, the grid values it sets, its whole run config."""

    run_id: str
    values: dict[str, Any]
    config: RunConfig

    def label(self) -> str:
        return ", ".join(f"{key}={_short(value)}" for key, value in self.values.items())


@dataclass
class CellOutcome:
    run_id: str
    status: str  # complete, skipped (already complete), failed
    seconds: float = 0.0
    error: str = ""


@dataclass
class SweepResult:
    sweep_id: str
    store: Path
    cells: list[Cell]
    outcomes: list[CellOutcome] = field(default_factory=list)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _set(document: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    target = document
    for key in keys[:-1]:
        if target.get(key) is None:
            target[key] = {}
        if not isinstance(target[key], dict):
            raise ConfigError(f"grid key '{dotted}': '{key}' is not a section of the run config.")
        target = target[key]
    if keys == ["model"] and isinstance(value, str) and isinstance(target.get("model"), dict):
        target["model"] = {**target["model"], "id": value}  # a model id keeps the base's dtype, device...
    else:
        target[keys[-1]] = value


def _absolute(name: Any, folder: Path) -> Any:
    """A path-looking string made absolute, relative to `folder` (the folder of the file that
    names it); a built-in name such as `race` or a hub id stays as it is."""
    if not isinstance(name, str):
        return name
    candidate = Path(name) if Path(name).is_absolute() else folder / name
    if Path(name).suffix in (".yaml", ".yml", ".gguf") or candidate.exists():
        return str(candidate.resolve())
    return name


def _absolute_paths(document: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Paths a run config names, made absolute relative to the file that names them (so that a
    Ray worker finds them wherever it starts, and a sweep means the same from any folder)."""
    if isinstance(document.get("model"), str):
        document["model"] = {"id": document["model"]}
    if isinstance(document.get("model"), dict):
        document["model"]["id"] = _absolute(document["model"].get("id"), folder)
    if isinstance(document.get("suites"), list):
        document["suites"] = [_absolute(name, folder) for name in document["suites"]]
    for key in ("store", "policy"):
        if isinstance(document.get(key), str) and (key == "store" or document[key].endswith((".yaml", ".yml"))):
            document[key] = str((folder / document[key]).resolve())
    if isinstance(document.get("pruning"), dict) and isinstance(document["pruning"].get("out"), str):
        document["pruning"]["out"] = str((folder / document["pruning"]["out"]).resolve())
    return document


def load_sweep(path: str | Path, granted: set[str] | frozenset[str] = frozenset()) -> tuple[SweepFile, list[Cell]]:
    """Read a sweep file and expand its grid into validated cells (every cell's config is
    checked, plugins included, before anything runs). `granted`: see `RunConfig.with_trust`."""
    document, sweep = read_model(path, SweepFile, ConfigError, "sweep", "sweep, base or config, grid")
    base: dict[str, Any] = {}
    if sweep.base:
        base_path = Path(sweep.base) if Path(sweep.base).is_absolute() else Path(path).parent / sweep.base
        base_document = read_yaml(base_path, ConfigError, "run config")
        if not isinstance(base_document.data, dict):
            raise ConfigError(f"run config file {base_path} (the sweep's base): expected a mapping.")
        base = _absolute_paths(dict(base_document.data), base_path.parent)  # relative to the base file
    folder = Path(path).parent
    base = {**base, **_absolute_paths(dict(sweep.config), folder)}
    if sweep.store:
        base["store"] = str((folder / sweep.store).resolve())
    keys = list(sweep.grid)
    cells = []
    for combination in itertools.product(*(sweep.grid[key] for key in keys)):
        values = dict(zip(keys, combination))
        config_document = json.loads(json.dumps(base))
        for key, value in values.items():
            _set(config_document, key, value)
        try:
            config = RunConfig.model_validate(_absolute_paths(config_document, folder))
        except ValidationError as exc:
            problem = "; ".join(f"'{'.'.join(str(p) for p in e['loc'])}': {e['msg']}" for e in exc.errors()[:3])
            raise ConfigError(
                f"sweep file {document.path}: the cell {values} is not a valid run config: {problem}."
            ) from None
        # a cell is its whole config: a changed base makes new cells (a rerun never reports old suites)
        digest = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:10]
        config = config.with_trust(granted, f"sweep file {document.path}, cell {values}")
        config.check_plugins(source=f"sweep file {document.path}, cell {values}")
        cells.append(Cell(run_id=f"{sweep.sweep}-{digest}", values=values, config=config))
    stores = {cell.config.store for cell in cells}
    if len(stores) != 1:
        raise ConfigError(
            f"sweep file {document.path}: every cell must write to one store; the grid gives {sorted(stores)}."
        )
    return sweep, cells


def run_cell(
    config: dict[str, Any],
    run_id: str,
    sweep_id: str,
    values: dict[str, Any],
    cwd: str | None = None,
    granted: list[str] | None = None,
) -> dict[str, Any]:
    """Run one cell as an ordinary audit (resuming it when a killed sweep left it unfinished)
    and return {run_id, status, seconds, error}. Every failure is recorded in the store.
    This is the function a Ray task runs; it takes and returns plain data."""
    from fairaudit.pipeline.audit import audit

    if cwd and Path(cwd).is_dir():
        os.chdir(cwd)  # a Ray worker of a local cluster: relative paths mean what they meant to the sweep
    run_config = RunConfig.model_validate(config)
    store = Store(run_config.store)
    started = time.time()
    previous = store.read_run(run_id) if store.run_path(run_id).exists() else None
    if previous and previous.get("status") == "complete":
        return {"run_id": run_id, "status": "skipped", "seconds": 0.0, "error": ""}
    labels = {"sweep": {"id": sweep_id, "values": values}}
    try:
        resumable = previous is not None and "config" in previous and previous.get("kind", "audit") == "audit"
        if previous is not None and not resumable:
            store.run_path(run_id).unlink()  # a record of a cell that failed before its model loaded: start afresh
        audit(
            run_config.model_copy(update={"report": False}),
            resume=run_id if resumable else None,
            run_id=None if resumable else run_id,
            labels=labels,
            granted=frozenset(granted or ()),
        )
        return {"run_id": run_id, "status": "complete", "seconds": round(time.time() - started, 3), "error": ""}
    except BaseException as exc:  # a failed cell must not stop the sweep; it is recorded with its error
        error = str(exc) if isinstance(exc, FairauditError) else f"{type(exc).__name__}: {exc}"
        record: dict[str, Any] = (
            store.read_run(run_id)
            if store.run_path(run_id).exists()
            else {
                "kind": "audit",
                "model_id": run_config.model.id,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            }
        )
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        record.update(status=status, error=error or type(exc).__name__, **labels)
        if not isinstance(exc, FairauditError):
            record["traceback"] = traceback.format_exc(limit=20)
        store.write_run(run_id, record)
        if isinstance(exc, KeyboardInterrupt):
            raise
        return {
            "run_id": run_id,
            "status": "failed",
            "seconds": round(time.time() - started, 3),
            "error": record["error"],
        }


def run_sweep(
    path: str | Path,
    backend: Literal["local", "ray"] = "local",
    address: str | None = None,
    num_cpus: int | None = None,
    progress=None,
    granted: set[str] | frozenset[str] = frozenset(),
) -> SweepResult:
    """Run every cell of a sweep file not yet complete in its store. `backend` "ray" submits each
    cell as a Ray task (`address`: an existing cluster, e.g. ray://host:10001; none: a local
    cluster of `num_cpus` CPUs). `progress(outcome)` is called as each cell ends."""
    sweep, cells = load_sweep(path, granted)
    store = Store(cells[0].config.store)
    if store.run_path(sweep.sweep).exists() and store.read_run(sweep.sweep).get("kind") != "sweep":
        raise ConfigError(f"store {store.root} has a run named '{sweep.sweep}' that is not a sweep; rename the sweep.")
    result = SweepResult(sweep_id=sweep.sweep, store=store.root, cells=cells)
    with store.recording(
        "sweep", sweep.sweep, grid=sweep.grid, cells=[{"run_id": cell.run_id, "values": cell.values} for cell in cells]
    ) as record:
        _run_cells(sweep, cells, store, backend, address, num_cpus, progress or (lambda outcome: None), granted, result)
        record.add(outcomes=[outcome.__dict__ for outcome in result.outcomes])
        failed = sum(outcome.status == "failed" for outcome in result.outcomes)
        record.error = f"{failed} of {len(cells)} cells failed" if failed else None
    return result


def _run_cells(
    sweep: SweepFile,
    cells: list[Cell],
    store: Store,
    backend: str,
    address: str | None,
    num_cpus: int | None,
    report: Any,
    granted: set[str] | frozenset[str],
    result: SweepResult,
) -> None:
    """Run the cells on the backend; their outcomes, in the cells' order, go to `result`."""
    if backend == "local":
        for cell in cells:
            outcome = CellOutcome(
                **run_cell(
                    cell.config.model_dump(mode="json"), cell.run_id, sweep.sweep, cell.values, granted=sorted(granted)
                )
            )
            result.outcomes.append(outcome)
            report(outcome)
    elif backend == "ray":
        result.outcomes = _run_on_ray(sweep, cells, store, address, num_cpus, report, sorted(granted))
    else:
        raise ConfigError(f"unknown sweep backend '{backend}'; use local or ray.")
    order = {cell.run_id: index for index, cell in enumerate(cells)}
    result.outcomes.sort(key=lambda outcome: order[outcome.run_id])


def _run_on_ray(
    sweep: SweepFile,
    cells: list[Cell],
    store: Store,
    address: str | None,
    num_cpus: int | None,
    report,
    granted: list[str],
) -> list[CellOutcome]:
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray backend needs Ray: pip install 'fairaudit[ray]' (or use --backend local).") from None
    outcomes = []
    pending = []
    for cell in cells:  # cells already complete are not sent to the cluster at all
        if store.run_path(cell.run_id).exists() and store.read_run(cell.run_id).get("status") == "complete":
            outcome = CellOutcome(cell.run_id, "skipped")
            outcomes.append(outcome)
            report(outcome)
        else:
            pending.append(cell)
    if not pending:
        return outcomes
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address is None and num_cpus is not None:
            options["num_cpus"] = num_cpus
        try:
            ray.init(address=address, **options)
        except Exception as exc:
            raise ConfigError(
                f"could not start or reach Ray{f' at {address}' if address else ''}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
    try:
        futures = {}
        for cell in pending:
            gpus = sweep.resources.num_gpus
            if gpus is None:
                gpus = 1 if cell.config.model.device.startswith("cuda") else 0
            task = ray.remote(run_cell).options(num_cpus=sweep.resources.num_cpus, num_gpus=gpus, max_retries=0)
            futures[
                task.remote(
                    cell.config.model_dump(mode="json"), cell.run_id, sweep.sweep, cell.values, os.getcwd(), granted
                )
            ] = cell
        while futures:
            done, _ = ray.wait(list(futures), num_returns=1)
            cell = futures.pop(done[0])
            try:
                outcome = CellOutcome(**ray.get(done[0]))
            except Exception as exc:  # the worker died (out of memory, killed): record it like any failed cell
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                record = store.read_run(cell.run_id) if store.run_path(cell.run_id).exists() else {"kind": "audit"}
                store.write_run(
                    cell.run_id,
                    {**record, "status": "failed", "error": error, "sweep": {"id": sweep.sweep, "values": cell.values}},
                )
                outcome = CellOutcome(cell.run_id, "failed", error=error)
            outcomes.append(outcome)
            report(outcome)
    finally:
        if started_here:
            ray.shutdown()
    return outcomes
