"""The pipeline: suites -> probe -> scorers -> store. The CLI calls `audit`.

Each axis is an independent unit of work whose results are written atomically when it
is done; `resume=RUN_ID` skips the axes already in the store.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

import fairaudit
from fairaudit.config import RunConfig, load_config
from fairaudit.errors import ConfigError
from fairaudit.model import load_model
from fairaudit.plugins import notify_stage_finished, registry
from fairaudit.scoring import AxisScores
from fairaudit.store import Store, new_run_id
from fairaudit.suite import Suite, resolve_suite


@dataclass
class AuditResult:
    """What a run produced: where it is stored, and the per-axis summaries."""

    run_id: str
    store: Path
    model_id: str
    summaries: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped_axes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _load_suites(config: RunConfig) -> list[Suite]:
    suites = [resolve_suite(name) for name in config.suites]
    axes = [suite.axis for suite in suites]
    repeated = sorted({axis for axis in axes if axes.count(axis) > 1})
    if repeated:
        raise ConfigError(f"run config field 'suites': axis {repeated} appears in more than one suite; one suite per axis.")
    return suites


def _environment() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "fairaudit": fairaudit.__version__,
    }


def audit(config: RunConfig | str | Path | None = None, *, resume: str | None = None) -> AuditResult:
    """Run the audit a config describes (None: the default audit) and store its results."""
    if config is None:
        config = RunConfig()
    elif not isinstance(config, RunConfig):
        config = load_config(config)
    store = Store(config.store)
    if resume:
        record = store.read_run(resume)
        config = RunConfig.model_validate(record["config"])
        run_id = resume
        store.remove_temporaries(run_id)
    else:
        run_id = new_run_id()
    params = config.check_plugins()
    suites = _load_suites(config)
    plugins = registry()
    probe = plugins.get("probe", config.probe.plugin)
    scorers = [(ref.plugin, plugins.get("scorer", ref.plugin), params[path])
               for path, kind, ref in config.plugin_refs() if kind == "scorer"]

    torch.manual_seed(config.seed)
    started = time.time()
    loaded = load_model(config.model)
    record: dict[str, Any] = {
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "model_id": loaded.model_id,
        "model": loaded.provenance,
        "suites": {suite.axis: {"suite": suite.suite, "version": suite.version, "sha256": suite.content_hash()} for suite in suites},
        "plugins": [{"kind": e.kind, "name": e.name, "plugin": e.plugin, "distribution": e.distribution, "version": e.version}
                    for e in plugins.entries()],
        "config": config.model_dump(mode="json"),
        "seed": config.seed,
        "environment": _environment(),
        "timings": {"load_model": round(time.time() - started, 3)},
    }
    if resume:
        previous = store.read_run(run_id)
        if previous.get("model", {}).get("weights_hash") != loaded.provenance["weights_hash"]:
            raise ConfigError(f"cannot resume run {run_id}: the model's weights changed since it started (weights hash differs).")
        record["timings"] = {**previous.get("timings", {}), **record["timings"]}
        record["started"] = previous.get("started", record["started"])
    store.write_run(run_id, record)

    result = AuditResult(run_id=run_id, store=store.root, model_id=loaded.model_id)
    for suite in suites:
        if store.has_axis(loaded.model_id, suite.axis, run_id):
            result.skipped_axes.append(suite.axis)
            continue
        axis_started = time.time()
        stats = probe.run(loaded, suite.pairs("probe"), suite.control_pairs(), params["probe"], suite.axis)
        probe_seconds = time.time() - axis_started
        result.warnings += notify_stage_finished("probe", probe.name, suite.axis, probe_seconds)
        scores = AxisScores(axis=suite.axis, component=config.scoring.component)
        for name, scorer, scorer_params in scorers:
            scorer_started = time.time()
            scorer.compute(stats, loaded, scores, scorer_params)
            result.warnings += notify_stage_finished("scorer", name, suite.axis, time.time() - scorer_started)
        store.write_axis(loaded.model_id, run_id, scores)
        record["timings"][f"axis:{suite.axis}"] = round(time.time() - axis_started, 3)
        store.write_run(run_id, record)

    for suite in suites:
        summary = store.read("axis_summary", model=loaded.model_id, axis=suite.axis, run_id=run_id).to_pylist()[0]
        result.summaries[suite.axis] = {key: value for key, value in summary.items() if key not in ("model", "axis", "run_id")}
    record.update(status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    record["timings"]["total"] = round(time.time() - started, 3)
    store.write_run(run_id, record)
    return result
