"""Evaluation: every evaluator on the original model (and the pruned one), side by side where
an evaluator allows it, each result stored as it ends, then the paired before/after comparisons.
`fairaudit evaluate` is `evaluate_models`; the audit calls `run_evaluations`.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pyarrow as pa
from pydantic import BaseModel

from fairaudit.config import ModelSpec, PluginRef, RunConfig
from fairaudit.errors import PluginError
from fairaudit.inputs.model import LoadedModel, load_model
from fairaudit.inputs.suite import Suite, resolve_suites
from fairaudit.lazy import torch
from fairaudit.measurement.evaluate import EvaluationResult, Measurement, compare
from fairaudit.pipeline.record import AuditResult, clock, record_time, record_tokens
from fairaudit.plugins import registry
from fairaudit.store import Store, safe_name

log = logging.getLogger(__name__)
EVALUATOR_THREAD = "fairaudit-evaluator"  # the command line's exit looks for these (fairaudit.cli.entry)
T = TypeVar("T")


def _with_time_limit(call: Callable[[], T], seconds: float | None) -> T:
    """Run `call` in a daemon thread and give up after `seconds`. A plugin that overruns is
    abandoned, not killed (Python cannot stop a thread): it may keep a core busy until the
    process exits, but the audit goes on and records the timeout."""
    if not seconds or math.isinf(seconds):
        return call()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed back to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True, name=EVALUATOR_THREAD)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"did not finish within its time limit of {seconds:g} s (abandoned)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _evaluation_tables(name: str, role: str, result: EvaluationResult) -> dict[str, pa.Table]:
    measurements = [
        {
            "evaluator": name,
            "role": role,
            "axis_or_task": m.axis,
            "metric": m.metric,
            "value": m.value,
            "low": m.low,
            "high": m.high,
            "n": m.n,
            "error": m.error,
            "of_items": m.of_items,
        }
        for m in result.measurements
    ]
    items = [
        {"evaluator": name, "role": role, "axis_or_task": axis, "metric": metric, "item": item, "value": value}
        for (axis, metric), values in result.items.items()
        for item, value in values.items()
    ]
    generations = [
        {"evaluator": name, "role": role, **{("axis_or_task" if k == "axis" else k): v for k, v in row.items()}}
        for row in result.generations
    ]
    return {
        "evaluations": pa.Table.from_pylist(measurements, schema=MEASUREMENT_SCHEMA),
        "evaluation_items": pa.Table.from_pylist(items, schema=ITEM_SCHEMA),
        "generations": pa.Table.from_pylist(generations, schema=GENERATION_SCHEMA),
    }


# Evaluation tables are partitioned with axis=all (a hive partition key), so the axis (or
# lm-eval task) a row is about lives in the column `axis_or_task`.
MEASUREMENT_SCHEMA = pa.schema(
    [
        ("evaluator", pa.string()),
        ("role", pa.string()),
        ("axis_or_task", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("low", pa.float64()),
        ("high", pa.float64()),
        ("n", pa.int64()),
        ("error", pa.string()),
        ("of_items", pa.bool_()),  # value, low, high and n recomputable from its evaluation_items rows
    ]
)


ITEM_SCHEMA = pa.schema(
    [
        ("evaluator", pa.string()),
        ("role", pa.string()),
        ("axis_or_task", pa.string()),
        ("metric", pa.string()),
        ("item", pa.string()),
        ("value", pa.float64()),
    ]
)


GENERATION_SCHEMA = pa.schema(
    [
        ("evaluator", pa.string()),
        ("role", pa.string()),
        ("axis_or_task", pa.string()),
        ("pair_id", pa.string()),
        ("side", pa.string()),
        ("group", pa.string()),
        ("prompt", pa.string()),
        ("continuation", pa.string()),
    ]
)


def run_evaluations(
    store: Store,
    run_id: str,
    suites: list[Suite],
    evaluators: list[tuple[str, Any, BaseModel]],
    before: LoadedModel,
    after: LoadedModel | None,
    timings: dict[str, float] | None = None,
    time_limit: float | None = None,
    side_by_side: bool = True,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Run every evaluator on `before` (and `after`, the pruned model), store what each
    measured, then store the paired before/after comparisons. An evaluator that raises or
    returns the wrong type is recorded with its error; the others still run. Returns
    (one message per failure, the comparison rows); `timings` receives wall and CPU seconds per run.

    With `side_by_side` and two models, the evaluators that touch only the model they evaluate
    (`exclusive = False`) run in two lanes at once, one per model, each with half of torch's CPU
    threads (all of them once the other lane is done); then the exclusive ones (those that also
    read the unpruned reference, or process-wide state; any evaluator that does not say) run
    one at a time. Each lane computes what a run alone computes, with fewer threads (float32 sums
    may round differently: docs/evaluation.md)."""
    roles = [("before", before, None)] + ([("after", after, before)] if after is not None else [])
    jobs = [_Job(number, *role, *entry) for number, (role, entry) in enumerate(itertools.product(roles, evaluators), 1)]
    run = _Evaluation(store, run_id, suites, len(jobs), timings if timings is not None else {}, time_limit)
    serial = jobs
    if side_by_side and after is not None:
        lanes = [
            [job for job in jobs if job.role == role and not exclusive(job.evaluator)] for role in ("before", "after")
        ]
        serial = [job for job in jobs if exclusive(job.evaluator)]
        _in_lanes(lanes, run)
        torch.set_num_threads(run.threads)
    for job in serial:
        run.job(job, lane=False)
    stored = [row for row in store.rows("evaluations", run_id=run_id) if row["error"]]
    failures = sorted({row["error"] for row in stored if not row["error"].startswith("skipped")} | set(run.failures))
    comparisons = _comparisons(store, run_id, before.model_id, after.model_id) if after is not None else []
    if comparisons:
        store.write_part("comparisons", before.model_id, "all", run_id, pa.Table.from_pylist(comparisons))
    return failures, comparisons


class _Job(NamedTuple):
    number: int
    role: str
    loaded: LoadedModel
    reference: LoadedModel | None
    name: str
    evaluator: Any
    params: Any


@dataclass
class _Evaluation:
    """The state the evaluation's jobs share: where results go, the failures so far, and the
    lanes still running (which decides each lane's share of torch's threads)."""

    store: Store
    run_id: str
    suites: list[Suite]
    total: int
    timings: dict[str, float]
    time_limit: float | None
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: int = field(default_factory=torch.get_num_threads)
    lanes_running: int = 0

    def job(self, job: _Job, lane: bool) -> None:
        """Run one evaluator on one model and store what it measured (or its failure)."""
        if self.store.part_path("evaluations", job.loaded.model_id, "all", self.run_id, job.name).exists():
            return  # stored by an interrupted run being resumed
        estimate = self._estimate(job, lane)
        with self.lock:
            log.info(
                f"evaluating {job.number} of {self.total}: {job.name} on the "
                f"{'original' if job.role == 'before' else 'pruned'} model{estimate}"
            )
        started, spent, counted = clock(), list[float](), job.loaded.tokens.snapshot()
        result = EvaluationResult()
        if getattr(job.evaluator, "requires_causal", False) and not job.loaded.has_lm_head:
            result.measurements.append(
                Measurement(job.name, "", "skipped", math.nan, error="skipped: the model has no language-model head")
            )
        else:
            try:
                result = _with_time_limit(lambda: self._evaluate(job, lane, spent), self.time_limit)
                if not isinstance(result, EvaluationResult):
                    raise PluginError(f"returned {type(result).__name__}, not an EvaluationResult")
            except Exception as exc:  # a plugin's failure must not take the other results with it
                message = f"{job.name} on {job.role} model: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                with self.lock:
                    self.failures.append(message)
                result = EvaluationResult(measurements=[Measurement(job.name, "", "failed", math.nan, error=message)])
        tables = _evaluation_tables(job.name, job.role, result)
        with self.lock:
            record_time(self.timings, f"evaluate:{job.name}:{job.role}", started)
            if lane:  # the thread's CPU seconds and its model's tokens (the process' count the other lane's too)
                self.timings[f"evaluate:{job.name}:{job.role}:cpu"] = round(spent[0], 3) if spent else math.nan
                forward, with_grad = job.loaded.tokens.snapshot()
                record_tokens(
                    self.timings, f"evaluate:{job.name}:{job.role}", forward - counted[0], with_grad - counted[1]
                )
            for table in (
                "evaluation_items",
                "generations",
                "evaluations",
            ):  # the measurements last: they mark completion
                self.store.write_part(table, job.loaded.model_id, "all", self.run_id, tables[table], part=job.name)

    def _estimate(self, job: _Job, lane: bool) -> str:
        """The log line's ", about N s": the token positions the evaluator says it will forward (its optional
        `planned_tokens`) at the throughput this run has measured so far, in a lane at its share of
        the threads; "" when either is unknown. An estimate never stops an evaluation."""
        rate, planned = throughput(self.timings), getattr(job.evaluator, "planned_tokens", None)
        if (
            rate is None
            or planned is None
            or (getattr(job.evaluator, "requires_causal", False) and not job.loaded.has_lm_head)
        ):
            return ""
        try:
            tokens = planned(job.loaded, self.suites, job.params, job.reference)
        except Exception:  # noqa: BLE001 - a plugin's estimate is advice
            return ""
        if lane:
            rate *= max(1, self.threads // max(self.lanes_running, 1)) / self.threads
        if not tokens:
            return ""
        seconds = tokens / rate
        return f", about {seconds:.0f} s" if seconds < 90 else f", about {seconds / 60:.0f} min"

    def _evaluate(self, job: _Job, lane: bool, spent: list[float]) -> EvaluationResult:
        if not lane:
            return job.evaluator.evaluate(job.loaded, self.suites, job.params, job.reference)
        # this thread's share of the cores: set here, since torch reads it per thread
        with self.lock:
            share = max(1, self.threads // max(self.lanes_running, 1))
        torch.set_num_threads(share)
        cpu = time.thread_time()
        try:
            return job.evaluator.evaluate(job.loaded, self.suites, job.params, job.reference)
        finally:
            spent.append(time.thread_time() - cpu)


def throughput(timings: dict[str, float]) -> float | None:
    """Token positions per second that this run's probe and pruning stages forwarded, every thread
    busy (a position with gradients counts three times, forward and backward, as
    `benchmarks/audit_stages.py` counts it); None before any was measured."""
    stages = [key for key in timings if key.startswith("axis:") and key.count(":") == 1 or key == "prune"]
    cost = sum(timings.get(f"{key}:tokens", 0) + 2 * timings.get(f"{key}:grad_tokens", 0) for key in stages)
    wall = sum(timings[key] for key in stages)
    return cost / wall if cost and wall else None


def exclusive(evaluator: Any) -> bool:
    """Whether an evaluator must run alone: it says `exclusive = False` only when it reads no
    model but the one it evaluates and no process-wide state (global random generators)."""
    return getattr(evaluator, "exclusive", True) is not False


def _in_lanes(lanes: list[list[_Job]], run: _Evaluation) -> None:
    """Run each lane's jobs in order, the lanes at once (one thread each); `run.lanes_running`
    counts the lanes not yet done. An error that escapes a job (a store failure) is raised after both stop."""
    lanes = [lane for lane in lanes if lane]
    if not lanes:
        return
    started, errors = clock(), []
    run.lanes_running = len(lanes)

    def work(lane: list[_Job]) -> None:
        try:
            for job in lane:
                run.job(job, lane=True)
        except BaseException as exc:
            errors.append(exc)
        finally:
            with run.lock:
                run.lanes_running -= 1

    workers = [threading.Thread(target=work, args=(lane,), daemon=True, name=EVALUATOR_THREAD) for lane in lanes]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    record_time(run.timings, "evaluate:side_by_side", started)
    if errors:
        raise errors[0]


def _comparisons(store: Store, run_id: str, before_id: str, after_id: str) -> list[dict[str, Any]]:
    """Paired before/after changes of every per-item metric, read back from the store."""
    grouped: dict[tuple[str, str, str], dict[str, dict[str, float]]] = {}
    for row in store.rows("evaluation_items", run_id=run_id):
        if row["model"] not in (safe_name(before_id), safe_name(after_id)):
            continue
        key = (row["evaluator"], row["axis_or_task"], row["metric"])
        grouped.setdefault(key, {"before": {}, "after": {}})[row["role"]][row["item"]] = row["value"]
    rows = []
    for (evaluator, axis, metric), values in sorted(grouped.items()):
        change = compare(values["before"], values["after"])
        if change.get("items"):
            rows.append(
                {
                    "evaluator": evaluator,
                    "axis_or_task": axis,
                    "metric": metric,
                    "model_before": before_id,
                    "model_after": after_id,
                    **change,
                }
            )
    return rows


def evaluate_models(
    model: ModelSpec | str,
    compare_with: ModelSpec | str | None,
    suite_names: list[str],
    evaluator_refs: list[str | PluginRef],
    store_path: str | Path,
    time_limit: float | None = 3600.0,
    side_by_side: bool = True,
) -> AuditResult:
    """Evaluate a model (and a pruned version of it) without probing or pruning: a run of
    kind "evaluate" in the store, with measurements and paired comparisons."""
    config = RunConfig.model_validate(
        {
            "model": model if isinstance(model, str) else model.model_dump(),
            "suites": suite_names,
            "pruning": None,
            "evaluators": evaluator_refs,
            "store": str(store_path),
            "report": False,
        }
    )
    params = config.check_plugins()
    suites = resolve_suites(config.suites)
    store = Store(config.store)
    before = load_model(config.model)
    after = load_model(compare_with) if compare_with is not None else None
    evaluators = [
        (ref.plugin, registry().get("evaluator", ref.plugin), params[path])
        for path, kind, ref in config.plugin_refs()
        if kind == "evaluator"
    ]
    with store.recording(
        "evaluate",
        model_id=before.model_id,
        model=before.provenance,
        compare=after.provenance if after else None,
        config=config.model_dump(mode="json"),
    ) as record:
        result = AuditResult(run_id=record.run_id, store=store.root, model_id=before.model_id)
        result.evaluation_failures, result.comparisons = run_evaluations(
            store, record.run_id, suites, evaluators, before, after, time_limit=time_limit, side_by_side=side_by_side
        )
        result.measurements = store.rows("evaluations", run_id=record.run_id)
        record.evaluation_failures = result.evaluation_failures
    return result
