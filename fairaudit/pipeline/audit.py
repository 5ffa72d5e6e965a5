"""The audit, stage by stage: suites -> probe -> scorers -> store -> prune -> evaluate -> report.

`audit(config)` reads top to bottom as the audit. Each axis is an independent unit of work
whose results are written atomically when it is done; `resume=RUN_ID` skips the axes already
in the store. The run record is kept by `Store.recording`: running, then complete, or failed
(or interrupted) with its error.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
from pydantic import BaseModel, ValidationError

from fairaudit.config import RunConfig, load_config
from fairaudit.errors import ConfigError, FairauditError, ModelError, PluginError, StoreError
from fairaudit.inputs.model import LoadedModel, load_model
from fairaudit.inputs.suite import Suite, resolve_suites
from fairaudit.lazy import torch
from fairaudit.measurement import metrics
from fairaudit.measurement.evaluate import divergence_rows, probe_key, remember
from fairaudit.measurement.probe import ActivationStats, screen_pairs
from fairaudit.measurement.scoring import AxisScores
from fairaudit.pipeline.evaluation import run_evaluations
from fairaudit.pipeline.pruning import prune_stage
from fairaudit.pipeline.record import AuditResult, clock, record_time, timings_of
from fairaudit.plugins import notify_stage_finished, registry
from fairaudit.store import RunRecord, Store, new_run_id, safe_name

log = logging.getLogger(__name__)
T = TypeVar("T")


def audit(
    config: RunConfig | str | Path | None = None,
    *,
    resume: str | None = None,
    run_id: str | None = None,
    labels: dict[str, Any] | None = None,
    granted: set[str] | frozenset[str] = frozenset(),
) -> AuditResult:
    """Run the audit a config describes (None: the default audit) and store its results.
    `resume`: finish a stored run; `run_id`: the id of a new run (default: time and random
    suffix); `labels`: extra entries for the run record (a sweep names its cell there);
    `granted`: capabilities of `TRUST_FLAGS` a config file or store record may use."""
    if config is None:
        config = RunConfig.default_audit()
    elif not isinstance(config, RunConfig):
        config = load_config(config, granted)
    store = Store(config.store)
    previous: dict[str, Any] = {}
    if resume:
        config, previous = _resumed(store, resume, granted)
        run_id = resume
        store.remove_temporaries(run_id)
    elif run_id is None:
        run_id = new_run_id()
    elif store.run_path(run_id).exists():
        raise StoreError(f"store {store.root} already has a run '{run_id}'; resume it or choose another id.")
    params = config.check_plugins()
    suites = resolve_suites(config.suites)
    _check_probe_pairs(suites)
    policy = _load_policy(config, suites)

    torch.manual_seed(config.seed)
    since = clock()
    log.info(f"loading {config.model.id}")
    loaded = load_model(config.model)
    _check_model_name(store, loaded.model_id)
    if config.pruning is not None:
        config = config.model_copy(update={"pruning": config.pruning.for_axes([suite.axis for suite in suites])})
        _check_selection_size(config, loaded)
    fields = _record_fields(config, suites, loaded, previous, labels)
    last = _last_timings(store, loaded.model_id, fields["config"])
    if policy is not None:
        from fairaudit.compliance.policy import policy_record

        fields["policy"] = policy_record(policy, str(config.policy))
    result = AuditResult(run_id=run_id, store=store.root, model_id=loaded.model_id)
    try:
        with store.recording("audit", run_id, **fields) as record, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")  # each library warning once per place, kept in the run record
            record_time(timings_of(record), "load_model", since)
            after = _run_stages(store, record, config, suites, loaded, params, result, last)
            record_time(timings_of(record), "total", since)
            _keep_warnings(record, caught)
    except KeyboardInterrupt as exc:
        exc.run_id, exc.store = run_id, store.root  # type: ignore[attr-defined]  # for the message that says how to resume
        raise
    if policy is not None:
        from fairaudit.compliance.policy import evaluate_policy

        result.verdicts = evaluate_policy(policy, store, run_id)
    if after is not None:
        _add_bias_section_to_card(store, run_id, Path(result.pruned["out"]))
    if config.report:
        from fairaudit.reporting.report import render_report, report_data, report_path

        result.report, _ = render_report(
            report_data(store, run_id), report_path(store.root.parent, loaded.model_id, run_id)
        )
    return result


def _resumed(store: Store, resume: str, granted: set[str] | frozenset[str]) -> tuple[RunConfig, dict[str, Any]]:
    """The config and record of a stored audit run that can be finished."""
    record = store.read_run(resume)
    if record.get("kind", "audit") != "audit" or "config" not in record:
        raise StoreError(f"run {resume} is a {record.get('kind', 'unknown')} run; only audit runs can be resumed.")
    if record.get("status") == "complete":  # its record is never downgraded by a resume
        raise StoreError(f"run {resume} is complete; there is nothing to resume. To recompute it, start a new run.")
    try:
        config = RunConfig.model_validate(record["config"])
    except ValidationError:
        raise StoreError(
            f"run {resume}: its stored config ({store.run_path(resume)}) is not a valid run config; "
            f"the record was edited or written by another version. Start a new run."
        ) from None
    return config.with_trust(granted, f"the stored config of run {resume}"), record


def _record_fields(
    config: RunConfig, suites: list[Suite], loaded: LoadedModel, previous: dict[str, Any], labels: dict[str, Any] | None
) -> dict[str, Any]:
    """What an audit's run record holds besides its status: model, suites, plugins, config, and
    (when resuming) what the interrupted run had recorded."""
    if previous and previous.get("model", {}).get("weights_hash") != loaded.provenance["weights_hash"]:
        raise ConfigError(
            f"cannot resume run {previous['run_id']}: the model's weights changed since it started (weights hash differs)."
        )
    fields: dict[str, Any] = {
        "model_id": loaded.model_id,
        "model": loaded.provenance,
        "suites": {
            suite.axis: {
                "suite": suite.suite,
                "version": suite.version,
                "sha256": suite.content_hash(),
                "definition": suite.model_dump(mode="json"),
            }
            for suite in suites
        },
        "plugins": [
            {"kind": e.kind, "name": e.name, "plugin": e.plugin, "distribution": e.distribution, "version": e.version}
            for e in registry().entries()
        ],
        "config": config.model_dump(mode="json"),
        "seed": config.seed,
        "timings": dict(previous.get("timings", {})),
        **(labels or {}),
    }
    if previous:
        fields["started"] = previous.get("started") or fields.get("started")
        fields.update({key: previous[key] for key in ("prune", "prune_skipped") if key in previous})
        fields = {key: value for key, value in fields.items() if value is not None}
    return fields


def _run_stages(
    store: Store,
    record: RunRecord,
    config: RunConfig,
    suites: list[Suite],
    loaded: LoadedModel,
    params: dict[str, BaseModel],
    result: AuditResult,
    last: dict[str, float] | None = None,
) -> LoadedModel | None:
    """Probe and score, overlap, prune, evaluate: each stage's results stored as it ends.
    Returns the pruned model (None when the run does not prune or pruned nothing). `last`: the
    timings of the last such audit (`_last_timings`), for the estimate each stage logs."""
    _probe_and_score(store, record, config, suites, loaded, params, result)
    if len(suites) >= 2:
        _store_overlap(store, loaded.model_id, record.run_id, config.overlap_top)
    if config.pruning is not None:
        _say_estimate("pruning", last, "prune")
    after, result.pruned = (
        prune_stage(store, record, config, suites, loaded) if config.pruning is not None else (None, {})
    )
    if config.evaluators:
        _say_estimate("evaluation", last, "evaluate")
        stage_started = clock()
        evaluators = [
            (ref.plugin, registry().get("evaluator", ref.plugin), params[path])
            for path, kind, ref in config.plugin_refs()
            if kind == "evaluator"
        ]
        result.evaluation_failures, result.comparisons = run_evaluations(
            store,
            record.run_id,
            suites,
            evaluators,
            loaded,
            after,
            timings_of(record),
            config.evaluator_time_limit,
            side_by_side=config.evaluate_side_by_side,
        )
        result.measurements = store.rows("evaluations", run_id=record.run_id)
        record_time(timings_of(record), "evaluate", stage_started)
        record.evaluation_failures = result.evaluation_failures
    return after


def _check_selection_size(config: RunConfig, loaded: LoadedModel) -> None:
    """Refuse, before any probing, a pruning fraction that selects no neuron of this model."""
    selection = config.pruning.selection if config.pruning is not None else None
    if selection is None:
        return
    width = loaded.adapter.mlp_weights(loaded.layers[0]).down.shape[1]  # shapes only: no weight is read
    layers = len(selection.layers) if selection.layers else len(loaded.layers)
    count = (
        int(selection.fraction * width) if selection.scope == "per_layer" else int(selection.fraction * width * layers)
    )
    if count < 1:
        where = f"{width} neurons per layer" if selection.scope == "per_layer" else f"{width * layers} neurons"
        raise ConfigError(
            f"run config field 'pruning.selection': fraction {selection.fraction} of {where} of {loaded.model_id} "
            f"selects no neuron; raise the fraction, use scope: global, or set 'pruning: null'."
        )


def _check_model_name(store: Store, model_id: str) -> None:
    """Refuse a model whose stored name is already another model's (`a/b` and `a--b` are both `a--b`)."""
    for record in store.runs():
        stored = record.get("model_id", "")
        if stored and stored != model_id and safe_name(stored) == safe_name(model_id):
            raise ConfigError(
                f"store {store.root} already holds model '{stored}', which is stored under the same name as "
                f"'{model_id}' ({safe_name(model_id)}); their results would mix. Use another store."
            )


def _last_timings(store: Store, model_id: str, config: dict[str, Any]) -> dict[str, float] | None:
    """The timings of the latest complete audit of `model_id` in `store` run with the same
    settings (the config but its store), for a time estimate; None when there is none. Says the
    estimate: the last run's total, on whatever machine it ran."""
    same = {key: value for key, value in config.items() if key != "store"}
    for run in reversed(store.runs()):
        if (
            run.get("kind", "audit") == "audit"
            and run.get("status") == "complete"
            and run.get("model_id") == model_id
            and {key: value for key, value in run.get("config", {}).items() if key != "store"} == same
            and (run.get("timings") or {}).get("total")
        ):
            timings = run["timings"]
            log.info(
                f"the last audit of {model_id} with these settings in this store (run {run['run_id']}) took "
                f"{_duration(timings['total'])}; expect about as long on the same machine"
            )
            return timings
    return None


def _say_estimate(stage: str, last: dict[str, float] | None, key: str) -> None:
    if last and last.get(key):
        log.info(f"{stage}: {_duration(last[key])} in the last audit with these settings")


def _keep_warnings(record: RunRecord, caught: list[warnings.WarningMessage]) -> None:
    """The Python warnings libraries gave during the run, into the run record (not the console:
    they would interleave with the progress lines; `-v` logs them too), each once."""
    kept = list(
        dict.fromkeys(f"{w.category.__name__}: {str(w.message)[:300]} ({w.filename}:{w.lineno})" for w in caught)
    )
    for line in kept:
        log.debug(f"library warning: {line}")
    if kept:
        record.library_warnings = kept


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _check_probe_pairs(suites: list[Suite]) -> None:
    """Refuse, before the model loads, a suite the audit cannot probe: one with no probe pair
    (only held-out templates, or only questions, which evaluators read)."""
    for suite in suites:
        if not suite.pairs("probe"):
            what = (
                "only questions (BBQ-style)"
                if suite.questions or suite.scenarios
                else "no probe-split template or sentence pair"
            )
            raise ConfigError(
                f"suite '{suite.suite}' has {what}, so the audit has nothing to probe on axis '{suite.axis}'. "
                f"Evaluate it instead: fairaudit evaluate --model ORIGINAL --compare PRUNED --suite FILE "
                f"--evaluator output_bias."
            )


def call_plugin(kind: str, name: str, axis: str, call: Callable[[], T]) -> T:
    """Run a plugin call; anything but a user error becomes a `PluginError` naming the plugin."""
    try:
        return call()
    except FairauditError:
        raise
    except Exception as exc:
        raise PluginError(
            f"{kind} plugin '{name}' failed on axis '{axis}': {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. Results stored for earlier axes are kept."
        ) from exc


def _probe_and_score(
    store: Store,
    record: RunRecord,
    config: RunConfig,
    suites: list[Suite],
    loaded: LoadedModel,
    params: dict[str, BaseModel],
    result: AuditResult,
) -> None:
    """Probe and score every axis not stored yet; each axis is written as soon as it is done."""
    run_id = record.run_id
    plugins = registry()
    probe = plugins.get("probe", config.probe.plugin)
    scorers = [
        (ref.plugin, plugins.get("scorer", ref.plugin), params[path])
        for path, kind, ref in config.plugin_refs()
        if kind == "scorer"
    ]
    for number, suite in enumerate(suites, start=1):
        if store.has_axis(loaded.model_id, suite.axis, run_id):
            result.skipped_axes.append(suite.axis)
            continue
        axis_started = clock()
        pairs, controls, notes = screen_pairs(loaded, suite)
        log.info(
            f"probing axis {number} of {len(suites)}: {suite.axis} ({len(pairs)} pairs, {len(controls)} control pairs)"
        )
        result.warnings += notes
        record.warnings = (record.warnings or []) + notes
        stats = call_plugin(
            "probe", probe.name, suite.axis, lambda: probe.run(loaded, pairs, controls, params["probe"], suite.axis)
        )
        if not isinstance(stats, ActivationStats):
            raise PluginError(
                f"probe plugin '{probe.name}' returned {type(stats).__name__} on axis '{suite.axis}', "
                f"not ActivationStats; results stored for earlier axes are kept."
            )
        _check_finite(stats, suite.axis)
        _remember_divergence(loaded, probe.name, params["probe"], stats)
        result.warnings += notify_stage_finished("probe", probe.name, suite.axis, time.time() - axis_started[0])
        scores = AxisScores(axis=suite.axis, component=config.scoring.component)
        for name, scorer, scorer_params in scorers:
            scorer_started = time.time()
            call_plugin("scorer", name, suite.axis, lambda: scorer.compute(stats, loaded, scores, scorer_params))
            _check_scores(name, suite.axis, scores, len(loaded.layers))
            result.warnings += notify_stage_finished("scorer", name, suite.axis, time.time() - scorer_started)
        if config.diagnose_top and {"attention", "mlp"} <= set(stats.components):
            _store_diagnosis(store, run_id, loaded, suite, stats, config.diagnose_top)
        store.write_axis(loaded.model_id, run_id, scores)  # its summary, written last, marks the axis complete
        record_time(timings_of(record), f"axis:{suite.axis}", axis_started)
        store.save(record)
    for suite in suites:
        summary = store.read("axis_summary", model=loaded.model_id, axis=suite.axis, run_id=run_id).to_pylist()[0]
        result.summaries[suite.axis] = {
            key: value for key, value in summary.items() if key not in ("model", "axis", "run_id")
        }


def _check_finite(stats: ActivationStats, axis: str) -> None:
    """Refuse an axis whose activations overflowed or became NaN: every score would be meaningless."""
    for name, component in stats.components.items():
        for field_name in ("abs_diff_sum", "activation_sum", "activation_sq_sum", "control_abs_diff_sum"):
            values = getattr(component, field_name)
            if values.numel() and not torch.isfinite(values).all():
                layer = int((~torch.isfinite(values)).nonzero()[0][0])
                raise ModelError(
                    f"axis '{axis}': the model's {name} activations are not finite (NaN or infinite) from layer "
                    f"{layer} on; no score of this axis would mean anything. Check the weights, or use float32 "
                    f"(--dtype float32) if a half-precision run overflowed. Axes stored before are kept."
                )


def _remember_divergence(loaded: LoadedModel, probe_name: str, probe_params, stats: ActivationStats) -> None:
    """Leave the built-in probe's per-pair divergences on the model for the bias re-probe,
    keyed by the weights hash (the model is as loaded: nothing changes it before probing)."""
    if probe_name != "activations" or getattr(probe_params, "padding_side", "right") != "right":
        return
    if not set(metrics.INDEX_COMPONENTS) <= set(stats.components):
        return
    remember(loaded, probe_key(stats.axis, stats.position), divergence_rows(stats), loaded.provenance["weights_hash"])


def _check_scores(name: str, axis: str, scores: AxisScores, layers: int) -> None:
    """Catch a scorer that wrote columns of the wrong type or shape before they reach the store."""
    for column, values in scores.neuron.items():
        if not isinstance(values, torch.Tensor) or values.dim() != 2 or values.shape[0] != layers:
            raise PluginError(
                f"scorer plugin '{name}' wrote neuron column '{column}' on axis '{axis}' that is not a "
                f"[layers={layers}, units] tensor; results stored for earlier axes are kept."
            )
    heads = {tuple(values.shape) if isinstance(values, torch.Tensor) else None for values in scores.head.values()}
    if scores.head and (
        len(heads) != 1 or None in heads or len(next(iter(heads))) != 2 or next(iter(heads))[0] != layers
    ):
        raise PluginError(
            f"scorer plugin '{name}' wrote head columns on axis '{axis}' that are not [layers={layers}, heads] "
            f"tensors of one shape; results stored for earlier axes are kept."
        )
    for column, values in scores.layer.items():
        if not isinstance(values, torch.Tensor) or values.shape != (layers,):
            raise PluginError(
                f"scorer plugin '{name}' wrote layer column '{column}' on axis '{axis}' that is not a "
                f"[layers={layers}] tensor; results stored for earlier axes are kept."
            )


def _load_policy(config: RunConfig, suites: list[Suite]) -> Any:
    """The run's policy, checked against the config before any model loads (None: no policy)."""
    if config.policy is None:
        return None
    from fairaudit.compliance.policy import check_config, load_policy

    policy = load_policy(config.policy)
    check_config(
        policy,
        [suite.axis for suite in suites],
        [ref.plugin for ref in config.evaluators],
        config.pruning is not None,
        "this run config",
    )
    return policy


def _add_bias_section_to_card(store: Store, run_id: str, folder: Path) -> None:
    """Append the audit's "Bias, risks and limitations" section to the pruned model's card."""
    from fairaudit.compliance.card import bias_section
    from fairaudit.repair.prune import MODEL_CARD_FILE
    from fairaudit.store import atomic_write_text

    card = folder / MODEL_CARD_FILE
    if card.is_file() and "## Bias, Risks, and Limitations" not in card.read_text(encoding="utf-8"):
        atomic_write_text(card, card.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + bias_section(store, run_id))


def _store_diagnosis(
    store: Store, run_id: str, loaded: LoadedModel, suite: Suite, stats: ActivationStats, top: int
) -> None:
    """The axis' emergence summary and the diagnosis figures of its most divergent pairs, for the report."""
    from fairaudit.analysis.diagnose import diagnose_pair, emergence, render_view

    summary = emergence(stats)
    pairs = {pair.pair_id: pair for pair in suite.pairs("probe")}
    ranking = metrics.pair_bias_index(stats).argsort(descending=True)[:top].tolist()
    rows = []
    for index in ranking:
        view = diagnose_pair(loaded, pairs[stats.pair_ids[index]], summary.mlp_peak)
        rows += [
            {"pair_id": view.pair.pair_id, "figure": name, "svg": str(svg)} for name, svg in render_view(view).items()
        ]
    store.write_part("diagnosis", loaded.model_id, suite.axis, run_id, pa.Table.from_pylist(rows))
    store.write_part(
        "emergence",
        loaded.model_id,
        suite.axis,
        run_id,
        pa.table(
            {
                "attention_onset_layer": pa.array([summary.attention_onset], pa.int32()),
                "mlp_peak_layer": pa.array([summary.mlp_peak], pa.int32()),
                "amplification": [summary.amplification],
                "amplification_low": [summary.amplification_low],
                "amplification_high": [summary.amplification_high],
            }
        ),
    )


def _store_overlap(store: Store, model_id: str, run_id: str, top: float) -> None:
    """The cross-axis overlap of this run's neurons, stored for the report."""
    from fairaudit.analysis.overlap import DEFAULT_SCORE, axis_overlap, load_scores

    try:
        scores = load_scores(store, model_id, DEFAULT_SCORE, run_id)
    except FairauditError:
        return  # the configured scorers did not produce the overlap score
    result = axis_overlap(scores, top)
    for name, table in (
        ("overlap_pairs", result.pairs),
        ("overlap_per_layer", result.per_layer),
        ("overlap_shared", result.shared),
    ):
        table = table.drop_columns([c for c in ("model",) if c in table.column_names])  # the partition key holds it
        store.write_part(
            name, model_id, "all", run_id, table.append_column("top", pa.array([top] * table.num_rows, pa.float64()))
        )
