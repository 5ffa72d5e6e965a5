"""The pipeline: suites -> probe -> scorers -> store. The CLI calls `audit`.

Each axis is an independent unit of work whose results are written atomically when it
is done; `resume=RUN_ID` skips the axes already in the store.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import platform
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import torch
import transformers
from pydantic import ValidationError
from tqdm.auto import tqdm

import fairaudit
from fairaudit import metrics
from fairaudit.config import RunConfig, load_config
from fairaudit.errors import ConfigError, FairauditError, ModelError, NothingToPrune, PluginError, StoreError, SuiteError
from fairaudit.evaluate import EvaluationResult, Measurement, compare, divergence_rows, probe_key, remember
from fairaudit.model import LoadedModel, ModelSpec, load_model, weights_hash
from fairaudit.plugins import notify_stage_finished, registry
from fairaudit.prune import NEURON_MAP_FILE
from fairaudit.probe import ActivationStats
from fairaudit.scoring import AxisScores
from fairaudit.store import Store, new_run_id, safe_name
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
    pruned: dict[str, Any] = field(default_factory=dict)  # out, widths, parameters (when the run prunes); or skipped: why not
    evaluation_failures: list[str] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[Any] = field(default_factory=list)  # fairaudit.policy.Verdict, when the run has a policy
    report: Path | None = None


def _load_suites(config: RunConfig) -> list[Suite]:
    suites = [resolve_suite(name) for name in config.suites]
    stored_as: dict[str, str] = {}
    for suite in suites:  # axes are folder names in the store: two that sanitise alike would share numbers
        other = stored_as.get(safe_name(suite.axis))
        if other is not None:
            same = "appears in more than one suite" if other == suite.axis else f"and '{other}' are stored under one name"
            raise ConfigError(f"run config field 'suites': axis '{suite.axis}' {same}; one suite per axis, with distinct names.")
        stored_as[safe_name(suite.axis)] = suite.axis
    return suites


def _check_selection_size(config: RunConfig, loaded: LoadedModel, axes: list[str]) -> None:
    """Refuse, before any probing, a pruning fraction that selects no neuron of this model."""
    selection = config.selection(axes)
    width = loaded.adapter.mlp_weights(loaded.layers[0]).down.shape[1]  # shapes only: no weight is read
    layers = len(selection.layers) if selection.layers else len(loaded.layers)
    count = int(selection.fraction * width) if selection.scope == "per_layer" else int(selection.fraction * width * layers)
    if count < 1:
        where = f"{width} neurons per layer" if selection.scope == "per_layer" else f"{width * layers} neurons"
        raise ConfigError(f"run config field 'pruning.selection': fraction {selection.fraction} of {where} of {loaded.model_id} "
                          f"selects no neuron; raise the fraction, use scope: global, or set 'pruning: null'.")


def _check_model_name(store: Store, model_id: str) -> None:
    """Refuse a model whose stored name is already another model's (`a/b` and `a--b` are both `a--b`)."""
    for record in store.runs():
        stored = record.get("model_id", "")
        if stored and stored != model_id and safe_name(stored) == safe_name(model_id):
            raise ConfigError(f"store {store.root} already holds model '{stored}', which is stored under the same name as "
                              f"'{model_id}' ({safe_name(model_id)}); their results would mix. Use another store.")


def _environment() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "fairaudit": fairaudit.__version__,
    }


def _clock() -> tuple[float, float]:
    """Now, as (wall seconds, CPU seconds of this process, all threads)."""
    return time.time(), time.process_time()


def _record_time(timings: dict[str, float], key: str, since: tuple[float, float]) -> None:
    """Wall seconds since `since` into timings[key], CPU seconds into timings[key + ':cpu']."""
    timings[key] = round(time.time() - since[0], 3)
    timings[f"{key}:cpu"] = round(time.process_time() - since[1], 3)


def _call_plugin(kind: str, name: str, axis: str, call):
    """Run a plugin call; anything but a user error becomes a `PluginError` naming the plugin."""
    try:
        return call()
    except FairauditError:
        raise
    except Exception as exc:
        raise PluginError(f"{kind} plugin '{name}' failed on axis '{axis}': {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}. Results stored for earlier axes are kept.") from exc


def screen_pairs(loaded: LoadedModel, suite: Suite) -> tuple[list, list, list[str]]:
    """The probe and control pairs worth probing, and a note for each kind left out: a pair
    whose two sides tokenize identically measures nothing (its bias would be 0, and identical
    controls would make every neuron look significant). A prompt longer than the model's
    context is an error: its activations would not mean what the suite says."""
    context = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    notes: list[str] = []
    kept: dict[str, list] = {}
    for kind, pairs in (("probe", suite.pairs("probe")), ("control", suite.control_pairs())):
        same = []
        kept[kind] = []
        for pair in pairs:
            ids_a, ids_b = (loaded.tokenizer(text)["input_ids"] for text in (pair.text_a, pair.text_b))
            if context and max(len(ids_a), len(ids_b)) > context:
                raise SuiteError(f"suite '{suite.suite}', pair {pair.pair_id}: a prompt is {max(len(ids_a), len(ids_b)):,} tokens, "
                                 f"longer than the model's context of {context:,} tokens; shorten it.")
            (same if ids_a == ids_b else kept[kind]).append(pair)
        if same:
            notes.append(f"axis {suite.axis}: {len(same)} {kind} pair(s) whose two sides tokenize identically for this model "
                         f"were left out (they measure nothing): {', '.join(p.pair_id for p in same[:5])}"
                         f"{' ...' if len(same) > 5 else ''}")
    if not kept["probe"]:
        raise SuiteError(f"suite '{suite.suite}': no probe pair is left once pairs whose sides tokenize identically are left "
                         f"out; its group words are not distinguished by this model's tokenizer.")
    return kept["probe"], kept["control"], notes


def _check_finite(stats: ActivationStats, axis: str) -> None:
    """Refuse an axis whose activations overflowed or became NaN: every score would be meaningless."""
    for name, component in stats.components.items():
        for field_name in ("abs_diff_sum", "activation_sum", "activation_sq_sum", "control_abs_diff_sum"):
            values = getattr(component, field_name)
            if values.numel() and not torch.isfinite(values).all():
                layer = int((~torch.isfinite(values)).nonzero()[0][0])
                raise ModelError(f"axis '{axis}': the model's {name} activations are not finite (NaN or infinite) from layer "
                                 f"{layer} on; no score of this axis would mean anything. Check the weights, or use float32 "
                                 f"(--dtype float32) if a half-precision run overflowed. Axes stored before are kept.")


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
            raise PluginError(f"scorer plugin '{name}' wrote neuron column '{column}' on axis '{axis}' that is not a "
                              f"[layers={layers}, units] tensor; results stored for earlier axes are kept.")
    heads = {tuple(values.shape) if isinstance(values, torch.Tensor) else None for values in scores.head.values()}
    if scores.head and (len(heads) != 1 or None in heads or len(next(iter(heads))) != 2 or next(iter(heads))[0] != layers):
        raise PluginError(f"scorer plugin '{name}' wrote head columns on axis '{axis}' that are not [layers={layers}, heads] "
                          f"tensors of one shape; results stored for earlier axes are kept.")
    for column, values in scores.layer.items():
        if not isinstance(values, torch.Tensor) or values.shape != (layers,):
            raise PluginError(f"scorer plugin '{name}' wrote layer column '{column}' on axis '{axis}' that is not a "
                              f"[layers={layers}] tensor; results stored for earlier axes are kept.")


def _probe_and_score(store: Store, run_id: str, record: dict[str, Any], config: RunConfig, suites: list[Suite],
                     loaded: LoadedModel, params: dict[str, Any], result: AuditResult, progress: bool = True) -> None:
    """Probe and score every axis not stored yet; each axis is written as soon as it is done."""
    plugins = registry()
    probe = plugins.get("probe", config.probe.plugin)
    scorers = [(ref.plugin, plugins.get("scorer", ref.plugin), params[path])
               for path, kind, ref in config.plugin_refs() if kind == "scorer"]
    for number, suite in enumerate(suites, start=1):
        if store.has_axis(loaded.model_id, suite.axis, run_id):
            result.skipped_axes.append(suite.axis)
            continue
        axis_started = _clock()
        pairs, controls, notes = screen_pairs(loaded, suite)
        say(progress, f"probing axis {number} of {len(suites)}: {suite.axis} ({len(pairs)} pairs, {len(controls)} control pairs)")
        result.warnings += notes
        record.setdefault("warnings", []).extend(notes)
        stats = _call_plugin("probe", probe.name, suite.axis, lambda: probe.run(
            loaded, pairs, controls, params["probe"], suite.axis))
        if not isinstance(stats, ActivationStats):
            raise PluginError(f"probe plugin '{probe.name}' returned {type(stats).__name__} on axis '{suite.axis}', "
                              f"not ActivationStats; results stored for earlier axes are kept.")
        _check_finite(stats, suite.axis)
        _remember_divergence(loaded, probe.name, params["probe"], stats)
        result.warnings += notify_stage_finished("probe", probe.name, suite.axis, time.time() - axis_started[0])
        scores = AxisScores(axis=suite.axis, component=config.scoring.component)
        for name, scorer, scorer_params in scorers:
            scorer_started = time.time()
            _call_plugin("scorer", name, suite.axis, lambda: scorer.compute(stats, loaded, scores, scorer_params))
            _check_scores(name, suite.axis, scores, len(loaded.layers))
            result.warnings += notify_stage_finished("scorer", name, suite.axis, time.time() - scorer_started)
        if config.diagnose_top and {"attention", "mlp"} <= set(stats.components):
            _store_diagnosis(store, run_id, loaded, suite, stats, config.diagnose_top)
        store.write_axis(loaded.model_id, run_id, scores)  # its summary, written last, marks the axis complete
        _record_time(record["timings"], f"axis:{suite.axis}", axis_started)
        store.write_run(run_id, record)
    for suite in suites:
        summary = store.read("axis_summary", model=loaded.model_id, axis=suite.axis, run_id=run_id).to_pylist()[0]
        result.summaries[suite.axis] = {key: value for key, value in summary.items() if key not in ("model", "axis", "run_id")}


def _prune_stage(store: Store, run_id: str, record: dict[str, Any], config: RunConfig, suites: list[Suite],
                 loaded: LoadedModel, result: AuditResult, progress: bool = True) -> LoadedModel | None:
    """Prune by this run's scores or causally (unless a resumed run already saved the pruned
    model) and load the saved model back through the user's code path. None when causal
    selection finds nothing to prune (recorded as `prune_skipped`: the audit goes on unpruned)."""
    stage_started = _clock()
    out_root = Path(config.pruning.out) if config.pruning.out else store.root.parent / "pruned"
    out = out_root / safe_name(run_id) / f"{safe_name(loaded.model_id)}-pruned"
    if "prune_skipped" in record:  # a resumed run whose causal selection found nothing to prune
        result.pruned = {"skipped": record["prune_skipped"]["reason"]}
        return None
    if (out / NEURON_MAP_FILE).exists() and "prune" not in record:
        shutil.rmtree(out)  # saved by a run killed before it recorded its pruning: not trusted, pruned again
    if not (out / NEURON_MAP_FILE).exists():
        if config.pruning.causal is not None and loaded.is_causal:
            from fairaudit.causal import CausalParams

            selection, causal_suites = CausalParams.model_validate(config.pruning.causal), suites
        else:  # a stored score; for an encoder too, as said: causal selection needs a language-model head
            selection, causal_suites = config.selection([s.axis for s in suites]), None
            if config.pruning.causal is not None:
                say(progress, f"{loaded.model_id} is an encoder: causal selection needs a language-model head, so neurons "
                              f"are selected by the stored score {selection.score} instead")
        try:
            outcome = prune_model(config.model, store.root, selection, out,
                                  run_id=run_id, pruner=config.pruning.pruner.plugin, pruner_params=config.pruning.pruner.params,
                                  save_dtype=config.pruning.save_dtype, progress=progress, causal_suites=causal_suites)
        except NothingToPrune as exc:  # no axis (or budget) to prune for: the audit goes on, the original model only
            reason = str(exc).removesuffix(" Nothing was written.")
            say(progress, f"{reason} The audit goes on without pruning.")
            record["prune_skipped"] = {"reason": reason, "causal": exc.record}
            result.pruned = {"skipped": reason}
            _record_time(record["timings"], "prune", stage_started)
            store.write_run(run_id, record)
            return None
        record["prune"] = {"run_id": outcome.run_id, "out": str(out), "removed": outcome.report.removed,
                           "zeroed": sum(len(zeroed) for zeroed in outcome.report.zeroed),
                           "neurons": sum(outcome.report.widths_before), "ranking": outcome.ranking,
                           "parameters_before": outcome.report.parameters_before,
                           "parameters_after": outcome.report.parameters_after,
                           **({"causal": outcome.causal} if outcome.causal else {}),
                           **({"heads": [list(head) for head in outcome.heads]} if outcome.heads else {})}
        _record_time(record["timings"], "prune", stage_started)
        store.write_run(run_id, record)
    result.pruned = record.get("prune", {"out": str(out)})
    return load_model(config.model.model_copy(update={"id": str(out), "gguf_file": None, "revision": None}))


def say(enabled: bool, text: str) -> None:
    """One line on stderr saying what the run does now; nothing with --quiet (progress off)."""
    if enabled:
        tqdm.write(f"fairaudit: {text}", file=sys.stderr)


def audit(config: RunConfig | str | Path | None = None, *, resume: str | None = None, run_id: str | None = None,
          labels: dict[str, Any] | None = None, granted: set[str] | frozenset[str] = frozenset()) -> AuditResult:
    """Run the audit a config describes (None: the default audit) and store its results.
    `resume`: finish a stored run; `run_id`: the id of a new run (default: time and random
    suffix); `labels`: extra entries for the run record (a sweep names its cell there);
    `granted`: capabilities of `TRUST_FLAGS` a config file or store record may use."""
    if config is None:
        config = RunConfig()
    elif not isinstance(config, RunConfig):
        config = load_config(config, granted)
    store = Store(config.store)
    if resume:
        record = store.read_run(resume)
        if record.get("kind", "audit") != "audit" or "config" not in record:
            raise StoreError(f"run {resume} is a {record.get('kind', 'unknown')} run; only audit runs can be resumed.")
        if record.get("status") == "complete":  # its record is never downgraded by a resume
            raise StoreError(f"run {resume} is complete; there is nothing to resume. To recompute it, start a new run.")
        try:
            config = RunConfig.model_validate(record["config"])
        except ValidationError:
            raise StoreError(f"run {resume}: its stored config ({store.run_path(resume)}) is not a valid run config; "
                             f"the record was edited or written by another version. Start a new run.") from None
        config = config.with_trust(granted, f"the stored config of run {resume}")
        run_id = resume
        store.remove_temporaries(run_id)
    elif run_id is None:
        run_id = new_run_id()
    elif store.run_path(run_id).exists():
        raise StoreError(f"store {store.root} already has a run '{run_id}'; resume it or choose another id.")
    params = config.check_plugins()
    suites = _load_suites(config)
    policy = _load_policy(config, suites)
    plugins = registry()

    progress = getattr(params["probe"], "progress", True)
    torch.manual_seed(config.seed)
    since = _clock()
    started = since[0]
    say(progress, f"loading {config.model.id}")
    loaded = load_model(config.model)
    _check_model_name(store, loaded.model_id)
    if config.pruning is not None and config.pruning.causal is None:
        _check_selection_size(config, loaded, [suite.axis for suite in suites])
    record: dict[str, Any] = {
        "kind": "audit",
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "model_id": loaded.model_id,
        "model": loaded.provenance,
        "suites": {suite.axis: {"suite": suite.suite, "version": suite.version, "sha256": suite.content_hash(),
                                "definition": suite.model_dump(mode="json")} for suite in suites},
        "plugins": [{"kind": e.kind, "name": e.name, "plugin": e.plugin, "distribution": e.distribution, "version": e.version}
                    for e in plugins.entries()],
        "config": config.model_dump(mode="json"),
        "seed": config.seed,
        "environment": _environment(),
        "timings": {},
        **(labels or {}),
    }
    _record_time(record["timings"], "load_model", since)
    if policy is not None:
        from fairaudit.policy import policy_record

        record["policy"] = policy_record(policy, config.policy)
    if resume:
        previous = store.read_run(run_id)
        if previous.get("model", {}).get("weights_hash") != loaded.provenance["weights_hash"]:
            raise ConfigError(f"cannot resume run {run_id}: the model's weights changed since it started (weights hash differs).")
        record["timings"] = {**previous.get("timings", {}), **record["timings"]}
        record["started"] = previous.get("started", record["started"])
        if "prune" in previous:
            record["prune"] = previous["prune"]
    store.write_run(run_id, record)

    result = AuditResult(run_id=run_id, store=store.root, model_id=loaded.model_id)
    try:
        _probe_and_score(store, run_id, record, config, suites, loaded, params, result, progress)
        if len(suites) >= 2:
            _store_overlap(store, loaded.model_id, run_id, config.overlap_top)
        after = _prune_stage(store, run_id, record, config, suites, loaded, result, progress) if config.pruning is not None else None
        if config.evaluators:
            stage_started = _clock()
            evaluators = [(ref.plugin, plugins.get("evaluator", ref.plugin), params[path])
                          for path, kind, ref in config.plugin_refs() if kind == "evaluator"]
            result.evaluation_failures, result.comparisons = run_evaluations(
                store, run_id, suites, evaluators, loaded, after, record["timings"], config.evaluator_time_limit,
                progress=progress, side_by_side=config.evaluate_side_by_side)
            result.measurements = store.rows("evaluations", run_id=run_id)
            _record_time(record["timings"], "evaluate", stage_started)
            record["evaluation_failures"] = result.evaluation_failures
        record.update(status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        _record_time(record["timings"], "total", since)
        store.write_run(run_id, record)
    except BaseException as exc:  # a failure of any kind (a full disk, a bug, Ctrl-C) is recorded, never left "running"
        record.update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                      error=str(exc) or type(exc).__name__)
        with contextlib.suppress(FairauditError):  # the store may be what failed; the original error is what matters
            store.write_run(run_id, record)
        if isinstance(exc, KeyboardInterrupt):
            exc.run_id, exc.store = run_id, store.root  # for the message that says how to resume
        raise
    if policy is not None:
        from fairaudit.policy import evaluate_policy

        result.verdicts = evaluate_policy(policy, store, run_id)
    if after is not None:
        _add_bias_section_to_card(store, run_id, Path(result.pruned["out"]))
    if config.report:
        from fairaudit.report import render_report, report_data, report_path

        result.report, _ = render_report(report_data(store, run_id), report_path(store.root.parent, loaded.model_id, run_id))
    return result


def _load_policy(config: RunConfig, suites: list[Suite]):
    """The run's policy, checked against the config before any model loads (None: no policy)."""
    if config.policy is None:
        return None
    from fairaudit.policy import check_config, load_policy

    policy = load_policy(config.policy)
    check_config(policy, [suite.axis for suite in suites], [ref.plugin for ref in config.evaluators], config.pruning is not None,
                 "this run config")
    return policy


def _add_bias_section_to_card(store: Store, run_id: str, folder: Path) -> None:
    """Append the audit's "Bias, risks and limitations" section to the pruned model's card."""
    from fairaudit.card import bias_section
    from fairaudit.prune import MODEL_CARD_FILE
    from fairaudit.store import atomic_write_text

    card = folder / MODEL_CARD_FILE
    if card.is_file() and "## Bias, Risks, and Limitations" not in card.read_text(encoding="utf-8"):
        atomic_write_text(card, card.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + bias_section(store, run_id))


@dataclass
class PruneOutcome:
    """A pruning run: the report, where the model went, and the store records."""

    run_id: str
    source_run: str | None
    out: Path
    report: Any
    selection_params: Any
    ranking: str = ""
    causal: dict[str, Any] | None = None  # fairaudit.causal.CausalPlan.as_dict() when chosen causally
    heads: list[tuple[int, int]] = field(default_factory=list)  # (layer, head) zeroed


def _model_card(loaded, outcome_params, report, source_run: str | None, ranking: str) -> str:
    widths = sorted(set(report.widths_after))
    chosen = (f"fraction {outcome_params.fraction} ({outcome_params.scope}), scores from run `{source_run}`; neurons in the top "
              f"{outcome_params.protect:.1%} of `{outcome_params.importance}` per layer were protected" if source_run else
              "held-out templates were not used; the prune run record in the store holds every step's figures")
    return (
        f"# {loaded.model_id}, fairness-pruned with fairaudit {fairaudit.__version__}\n\n"
        f"Base model: `{loaded.provenance.get('source')}` (weights hash {loaded.provenance['weights_hash']}).\n\n"
        f"Neurons ranked by {ranking}; {chosen}.\n\n"
        f"MLP neurons removed or zeroed: {report.removed} of {sum(report.widths_before)}; MLP width now {widths}. "
        f"Parameters: {report.parameters_before:,} -> {report.parameters_after:,} "
        f"({report.parameters_removed_percent:.3f}% removed).\n\n"
        f"`fairaudit_neuron_map.json` maps each layer's pruned neuron index to its original index.\n\n"
        "Pruning changes internal activations; whether it reduced biased outputs must be checked by evaluation "
        "(bias on held-out prompts, output-level bias, quality). Activation divergence is not proof of unfair outputs.\n"
    )


def _hybrid_recipe(record: dict[str, Any], column: str):
    """The params of the `hybrid` scorer that wrote `column` in a run, or None."""
    for ref in record.get("config", {}).get("scoring", {}).get("scorers", []):
        if ref.get("plugin") == "hybrid":
            params = registry().get("scorer", "hybrid").Params.model_validate(ref.get("params", {}))
            if params.column == column:
                return params
    return None


def plan_selection(store: Store, model_id: str, source_run: str, params):
    """The neurons `params` select from a run's stored columns (nothing is pruned). With
    `combine: pooled` over several axes and a score written by the hybrid scorer, the hybrid
    is recomputed once on the axes' mean bias (`fairaudit.prune.pooled_hybrid`)."""
    from fairaudit.overlap import load_scores
    from fairaudit.prune import pooled_hybrid, select

    def columns(name: str) -> dict[str, torch.Tensor]:
        stored = load_scores(store, model_id, name, source_run).by_axis
        missing = [axis for axis in params.axes if axis not in stored]
        if missing:
            hint = " (axes without negative and neutral continuations have none)" if name == params.push else ""
            raise StoreError(f"axis {missing} has no '{name}' in run {source_run}{hint}; axes stored with it: "
                             f"{', '.join(sorted(stored)) or 'none'}.")
        return {axis: torch.from_numpy(stored[axis]) for axis in params.axes}

    skipped = []
    if params.only_biased_axes:
        summaries = {row["axis"]: row for row in store.rows("axis_summary", model=model_id, run_id=source_run)}
        unmeasured = [axis for axis in params.axes if summaries.get(axis, {}).get("output_bias_template_low") is None]
        if unmeasured:
            raise StoreError(f"only_biased_axes needs the output-level bias of every axis; axes {unmeasured} of run {source_run} "
                             f"have none (add the 'output_attribution' scorer, and continuations to their suites).")
        biased = [axis for axis in params.axes if summaries[axis]["output_bias_template_low"] > 0
                  or summaries[axis]["output_bias_template_high"] < 0]
        skipped = [axis for axis in params.axes if axis not in biased]
        if not biased:
            raise FairauditError(f"no axis of {params.axes} has an output-level bias whose template-resampled 95% interval "
                                 f"excludes 0 in run {source_run}: there is nothing to remove. Nothing was pruned or written.")
        params = params.model_copy(update={"axes": biased})
    recipe = _hybrid_recipe(store.read_run(source_run), params.score) if params.combine == "pooled" and len(params.axes) > 1 else None
    if recipe is None:
        scores = columns(params.score)
    else:
        weights = next(iter(columns(recipe.importance).values()))  # weight importance: the same on every axis
        scores = {"pooled": pooled_hybrid(columns(recipe.bias), weights, recipe.weight)}
    importance = next(iter(columns(params.importance).values())) if params.protect > 0 else None
    push = None
    if params.direction == "pro":
        push = columns(params.push)
        if recipe is not None:
            push = {"pooled": torch.stack([value.double() for value in push.values()]).mean(dim=0)}
    selection = select(scores, params, importance, push)
    if recipe is not None:
        selection.ranking = (f"hybrid (weight {recipe.weight}) of the mean over axes {', '.join(params.axes)} of "
                             f"`{recipe.bias}`, with importance `{recipe.importance}` (combine: pooled)")
    elif len(params.axes) == 1:
        selection.ranking = f"`{params.score}` on axis {params.axes[0]}"
    else:
        how = "mean" if params.combine == "pooled" else params.combine  # a column the hybrid scorer did not write
        selection.ranking = f"{how} over axes {', '.join(params.axes)} of `{params.score}` (combine: {params.combine})"
    if skipped:
        selection.ranking += f"; axes left out, their output-level bias interval containing 0: {', '.join(skipped)}"
    return selection


def prune_model(model: ModelSpec | str, store_path: str | Path, selection_params, out: str | Path,
                run_id: str | None = None, pruner: str = "structured", pruner_params: dict[str, Any] | None = None,
                save_dtype: str = "float32", progress: bool = True, causal_suites: list[Suite] | None = None,
                heads: int = 0, head_score: str = "output_bias_reduction", head_scope: str = "global",
                remove_heads: bool = False) -> PruneOutcome:
    """Select neurons from a store's scores for `model`, prune them, save the pruned model
    and record the neuron map and a provenance record in the store. `save_dtype`: float32,
    bfloat16, float16, or "source" (the dtype the checkpoint's config declares).
    `causal_suites`: select by `fairaudit.causal.plan` on these suites instead (then
    `selection_params` is a `CausalParams`; no stored scores are read). `heads`: also zero the
    attention heads with the largest `head_score` (summed over the axes) from the run's
    `head_scores` table, over the whole model or (`head_scope` "per_layer") in every layer (exact,
    shapes unchanged). `remove_heads`: remove the chosen heads instead of zeroing them, where
    `fairaudit.prune.remove_heads` allows it (checked before anything is written)."""
    from fairaudit.overlap import latest_run
    from fairaudit.prune import save_pruned, saved_bytes

    store = Store(store_path)
    if not store.root.is_dir():
        raise StoreError(f"{store.root} is not a store folder (it does not exist).")
    out = Path(out)
    if out.exists() and (not out.is_dir() or out.is_symlink() or any(out.iterdir())):
        raise StoreError(f"--out {out} exists and is not an empty folder; name a new folder for the pruned model.")
    plugin = registry().get("pruner", pruner)
    try:
        params = plugin.Params.model_validate(pruner_params or {})
    except ValidationError as exc:
        raise ConfigError(f"pruner '{pruner}' parameters: {exc.errors()[0]['msg']} at {'.'.join(map(str, exc.errors()[0]['loc']))}") from None
    spec = model if isinstance(model, ModelSpec) else ModelSpec(id=model)
    if spec.device_map:  # surgery changes shapes, which offloaded weights cannot take: prune a whole copy in CPU memory
        spec = spec.model_copy(update={"device_map": None, "max_memory": None, "offload_folder": None, "device": "cpu"})
    loaded = load_model(spec)
    source_run = None
    if causal_suites is None:  # scores from a stored run, which must describe these very weights
        source_run = run_id or latest_run(store, loaded.model_id)
        record = store.read_run(source_run)
        if record.get("model", {}).get("weights_hash") != loaded.provenance["weights_hash"]:
            stored_dtype = record.get("model", {}).get("dtype")
            hint = f" (the run loaded it in {stored_dtype}, this prune in {spec.dtype}: pass --dtype {stored_dtype})" \
                if stored_dtype not in (None, spec.dtype) else ""
            raise StoreError(
                f"run {source_run} in {store.root} was computed on other weights than {loaded.model_id} "
                f"(weights hash {record.get('model', {}).get('weights_hash', '?')[:12]}... vs "
                f"{loaded.provenance['weights_hash'][:12]}...); scores of one model cannot prune another{hint}."
            )
    dtype = loaded.provenance.get("source_dtype") if save_dtype == "source" else save_dtype
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"cannot save the pruned model in its source dtype: {loaded.model_id}'s checkpoint declares "
                          f"{dtype or 'none'}. Choose float32, bfloat16 or float16.")
    causal_record = None
    if causal_suites is not None:
        selection, causal_record, axes = _causal_selection(loaded, causal_suites, selection_params, progress)
    else:
        selection, axes = plan_selection(store, loaded.model_id, source_run, selection_params), selection_params.axes
    chosen_heads = _top_heads(store, loaded, source_run, axes, heads, head_score, head_scope) if heads else []
    say(progress, f"pruning {loaded.model_id}: {sum(len(p) for p in selection.pruned)} neurons selected ({selection.ranking})"
                  + (f", and {len(chosen_heads)} attention heads by {head_score}" if chosen_heads else "")
                  + (f", and {len(selection.heads)} attention heads" if selection.heads else ""))
    chosen_heads = sorted(set(chosen_heads) | set(selection.heads))
    report = plugin.apply(loaded, selection, params)
    if chosen_heads:
        from fairaudit.prune import heads_by_layer, remove_heads as remove, zero_heads

        per_layer = heads_by_layer(chosen_heads, len(loaded.layers))
        if remove_heads:
            remove(loaded, per_layer)
            report.removed_heads = per_layer
            report.parameters_after = sum(p.numel() for p in loaded.model.parameters())
        else:
            zero_heads(loaded, per_layer)
            report.zeroed_heads = per_layer

    # The record is written first ("running") and completed last, like an axis' summary: a prune
    # that is killed or fails leaves a record saying so, never a model or map that seems complete.
    prune_run, pruned_id = new_run_id(), out.name
    prune_record = {
        "kind": "prune", "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_id": pruned_id, "base_model_id": loaded.model_id, "source_run": source_run, "pruner": pruner,
        "pruner_params": params.model_dump(mode="json"),
        "selection": selection_params.model_dump(mode="json"), "ranking": selection.ranking, "output": str(out.resolve()),
        **({"causal": causal_record} if causal_record else {}),
        **({"heads": [list(head) for head in chosen_heads], "head_score": head_score if heads else "causal"} if chosen_heads else {}),
        "widths_before": report.widths_before, "widths_after": report.widths_after,
        "parameters_before": report.parameters_before, "parameters_after": report.parameters_after,
        "environment": _environment(),
    }
    store.write_run(prune_run, prune_record)
    created = not out.exists()
    say(progress, f"writing the pruned model to {out}: about {saved_bytes(loaded, dtype) / 2**20:,.0f} MiB in {dtype}")
    try:
        card = _model_card(loaded, selection_params, report, source_run, selection.ranking)
        if chosen_heads:
            how = ("removed by {} (the attention projections lost their rows and columns; the config's head counts follow)"
                   if remove_heads else "zeroed by {} (their columns of the attention output projection are 0; shapes unchanged)")
            card += (f"\nAttention heads {how.format(f'`{head_score}`' if heads else 'the causal selection')}, as (layer, head): "
                     f"{', '.join(f'({layer}, {head})' for layer, head in chosen_heads)}.\n")
        save_pruned(loaded, report, out, card, dtype)
        rows = [(layer, position, original, original in set(report.zeroed[layer]))
                for layer, kept in enumerate(report.neuron_map) for position, original in enumerate(kept)]
        neuron_map = pa.table({"layer": pa.array([r[0] for r in rows], pa.int16()),
                               "pruned_index": pa.array([r[1] for r in rows], pa.int32()),
                               "original_index": pa.array([r[2] for r in rows], pa.int32()),
                               "zeroed": pa.array([r[3] for r in rows], pa.bool_())})
        store.write_part("neuron_maps", pruned_id, "+".join(axes), prune_run, neuron_map)
        store.write_run(prune_run, {**prune_record, "status": "complete", "weights_hash": weights_hash(loaded.model)})
    except BaseException as exc:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        with contextlib.suppress(FairauditError):
            store.write_run(prune_run, {**prune_record, "status": "failed" if isinstance(exc, Exception) else "interrupted",
                                        "error": str(exc) or type(exc).__name__})
        raise
    return PruneOutcome(run_id=prune_run, source_run=source_run, out=out, report=report, selection_params=selection_params,
                        ranking=selection.ranking, causal=causal_record, heads=chosen_heads)


def _top_heads(store: Store, loaded: LoadedModel, source_run: str | None, axes: list[str], count: int, column: str,
               scope: str = "global") -> list[tuple[int, int]]:
    """The `count` (layer, head) with the largest `column` summed over `axes` in a run's head_scores
    (`scope` "per_layer": `count` in every layer)."""
    if source_run is None:
        raise ConfigError("--heads selects by a stored head score; with --causal the planner chooses heads itself "
                          "(--causal-heads; causal option heads: true).")
    totals: dict[tuple[int, int], float] = {}
    for axis in axes:
        rows = store.rows("head_scores", model=loaded.model_id, axis=axis, run_id=source_run)
        if not rows or column not in rows[0]:
            raise StoreError(f"run {source_run} has no head score '{column}' for axis {axis}; head scores come from the "
                             f"'output_attribution' scorer (columns output_attribution, output_attribution_abs, output_bias_reduction).")
        for row in rows:
            if math.isfinite(row[column]):
                key = (row["layer"], row["head"])
                totals[key] = totals.get(key, 0.0) + row[column]
    ranked = sorted(totals, key=lambda key: -totals[key])
    if scope == "per_layer":
        return sorted(key for layer in sorted({layer for layer, _ in totals}) for key in [k for k in ranked if k[0] == layer][:count])
    return sorted(ranked[:count])


def _causal_selection(loaded: LoadedModel, suites: list[Suite], params, progress: bool):
    """(selection, record, axes) of `fairaudit.causal.plan`; refuses, before anything is
    written, when it finds nothing to prune."""
    from fairaudit.causal import plan
    from fairaudit.resources import corpus_path

    corpus = loaded.tokenizer(corpus_path().read_text(encoding="utf-8"))["input_ids"]
    found = plan(loaded, suites, params, corpus, say=lambda text: say(progress, text))
    if found.selection is None:
        why = ("no axis has an output-level bias whose 95% interval on the selection templates excludes 0"
               if not any(gate.active for gate in found.gates) else
               "no budget reduced the validation templates' output-level bias within the perplexity limit")
        measured = ", ".join(f"{gate.axis} {gate.bias:+.3f} [{gate.template_low:+.3f}, {gate.template_high:+.3f}]" for gate in found.gates)
        raise NothingToPrune(f"causal selection found nothing to prune: {why} (selection-part output bias, 95% CI with templates "
                             f"resampled: {measured}). Nothing was written.", found.as_dict())
    record = found.as_dict()
    if params.heldout_curve:
        from fairaudit.causal import heldout_curve

        say(progress, "measuring each budget's held-out output bias (evaluation only: the choice is made)")
        record["heldout_curve"] = heldout_curve(loaded, suites, found)
    return found.selection, record, [gate.axis for gate in found.gates if gate.active]


# --- evaluation ---------------------------------------------------------------------------

def _with_time_limit(call, seconds: float | None):
    """Run `call` in a daemon thread and give up after `seconds`. A plugin that overruns is
    abandoned, not killed (Python cannot stop a thread): it may keep a core busy until the
    process exits, but the audit goes on and records the timeout."""
    if not seconds:
        return call()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed back to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"did not finish within its time limit of {seconds:g} s (abandoned)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _evaluation_tables(name: str, role: str, result: EvaluationResult) -> dict[str, pa.Table]:
    measurements = [{"evaluator": name, "role": role, "axis_or_task": m.axis, "metric": m.metric, "value": m.value, "low": m.low,
                     "high": m.high, "n": m.n, "error": m.error} for m in result.measurements]
    items = [{"evaluator": name, "role": role, "axis_or_task": axis, "metric": metric, "item": item, "value": value}
             for (axis, metric), values in result.items.items() for item, value in values.items()]
    generations = [{"evaluator": name, "role": role, **{("axis_or_task" if k == "axis" else k): v for k, v in row.items()}}
                   for row in result.generations]
    return {"evaluations": pa.Table.from_pylist(measurements, schema=MEASUREMENT_SCHEMA),
            "evaluation_items": pa.Table.from_pylist(items, schema=ITEM_SCHEMA),
            "generations": pa.Table.from_pylist(generations, schema=GENERATION_SCHEMA)}


# Evaluation tables are partitioned with axis=all (a hive partition key), so the axis (or
# lm-eval task) a row is about lives in the column `axis_or_task`.
MEASUREMENT_SCHEMA = pa.schema([("evaluator", pa.string()), ("role", pa.string()), ("axis_or_task", pa.string()), ("metric", pa.string()),
                                ("value", pa.float64()), ("low", pa.float64()), ("high", pa.float64()), ("n", pa.int64()),
                                ("error", pa.string())])
ITEM_SCHEMA = pa.schema([("evaluator", pa.string()), ("role", pa.string()), ("axis_or_task", pa.string()), ("metric", pa.string()),
                         ("item", pa.string()), ("value", pa.float64())])
GENERATION_SCHEMA = pa.schema([("evaluator", pa.string()), ("role", pa.string()), ("axis_or_task", pa.string()), ("pair_id", pa.string()),
                               ("side", pa.string()), ("group", pa.string()), ("prompt", pa.string()), ("continuation", pa.string())])


def run_evaluations(store: Store, run_id: str, suites: list[Suite], evaluators: list[tuple[str, Any, Any]],
                    before: LoadedModel, after: LoadedModel | None,
                    timings: dict[str, float] | None = None, time_limit: float | None = None,
                    progress: bool = True, side_by_side: bool = True) -> tuple[list[str], list[dict[str, Any]]]:
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
    failures: list[str] = []
    timings = timings if timings is not None else {}
    roles = [("before", before, None)] + ([("after", after, before)] if after is not None else [])
    jobs = [_Job(number, *role, *entry) for number, (role, entry) in enumerate(itertools.product(roles, evaluators), 1)]
    lock = threading.Lock()
    threads = torch.get_num_threads()
    lanes_running = [0]

    def run(job: _Job, lane: bool) -> None:
        number, role, loaded, reference, name, evaluator, params = job
        if store.part_path("evaluations", loaded.model_id, "all", run_id, name).exists():
            return  # stored by an interrupted run being resumed
        with lock:
            say(progress, f"evaluating {number} of {len(jobs)}: {name} on the {'original' if role == 'before' else 'pruned'} model")
        started, spent = _clock(), []

        def call() -> EvaluationResult:
            if not lane:
                return evaluator.evaluate(loaded, suites, params, reference)
            # this thread's share of the cores: set here, since torch reads it per thread
            with lock:
                share = max(1, threads // max(lanes_running[0], 1))
            torch.set_num_threads(share)
            cpu = time.thread_time()
            try:
                return evaluator.evaluate(loaded, suites, params, reference)
            finally:
                spent.append(time.thread_time() - cpu)

        result = EvaluationResult()
        if getattr(evaluator, "requires_causal", False) and not loaded.is_causal:
            result.measurements.append(Measurement(name, "", "skipped", math.nan, error="skipped: the model has no language-model head"))
        else:
            try:
                result = _with_time_limit(call, time_limit)
                if not isinstance(result, EvaluationResult):
                    raise PluginError(f"returned {type(result).__name__}, not an EvaluationResult")
            except Exception as exc:  # a plugin's failure must not take the other results with it
                message = f"{name} on {role} model: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                with lock:
                    failures.append(message)
                result = EvaluationResult(measurements=[Measurement(name, "", "failed", math.nan, error=message)])
        tables = _evaluation_tables(name, role, result)
        with lock:
            _record_time(timings, f"evaluate:{name}:{role}", started)
            if lane:  # CPU seconds of the thread that ran it (the process' would count the other lane's too)
                timings[f"evaluate:{name}:{role}:cpu"] = round(spent[0], 3) if spent else math.nan
            for table in ("evaluation_items", "generations", "evaluations"):  # the measurements last: they mark completion
                store.write_part(table, loaded.model_id, "all", run_id, tables[table], part=name)

    serial = jobs
    if side_by_side and after is not None:
        lanes = [[job for job in jobs if job.role == role and not exclusive(job.evaluator)] for role in ("before", "after")]
        serial = [job for job in jobs if exclusive(job.evaluator)]
        _in_lanes(lanes, run, lanes_running, lock, timings)
        torch.set_num_threads(threads)
    for job in serial:
        run(job, lane=False)
    stored = [row for row in store.rows("evaluations", run_id=run_id) if row["error"]]
    failures = sorted({row["error"] for row in stored if not row["error"].startswith("skipped")} | set(failures))
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


def exclusive(evaluator: Any) -> bool:
    """Whether an evaluator must run alone: it says `exclusive = False` only when it reads no
    model but the one it evaluates and no process-wide state (global random generators)."""
    return getattr(evaluator, "exclusive", True) is not False


def _in_lanes(lanes: list[list], run, running: list[int], lock: threading.Lock, timings: dict[str, float]) -> None:
    """Run each lane's jobs in order, the lanes at once (one thread each); `running[0]` counts
    the lanes not yet done. An error that escapes a job (a store failure) is raised after both stop."""
    lanes = [lane for lane in lanes if lane]
    if not lanes:
        return
    started, errors = _clock(), []
    running[0] = len(lanes)

    def work(lane: list) -> None:
        try:
            for job in lane:
                run(job, lane=True)
        except BaseException as exc:
            errors.append(exc)
        finally:
            with lock:
                running[0] -= 1

    workers = [threading.Thread(target=work, args=(lane,), daemon=True) for lane in lanes]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    _record_time(timings, "evaluate:side_by_side", started)
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
            rows.append({"evaluator": evaluator, "axis_or_task": axis, "metric": metric, "model_before": before_id, "model_after": after_id, **change})
    return rows


def evaluate_models(model: ModelSpec | str, compare_with: ModelSpec | str | None, suite_names: list[str],
                    evaluator_refs: list, store_path: str | Path, time_limit: float | None = 3600.0,
                    progress: bool = True, side_by_side: bool = True) -> AuditResult:
    """Evaluate a model (and a pruned version of it) without probing or pruning: a run of
    kind "evaluate" in the store, with measurements and paired comparisons."""
    config = RunConfig.model_validate({"model": model if isinstance(model, str) else model.model_dump(), "suites": suite_names,
                                       "pruning": None, "evaluators": evaluator_refs, "store": str(store_path), "report": False})
    params = config.check_plugins()
    suites = _load_suites(config)
    store = Store(config.store)
    run_id = new_run_id()
    before = load_model(config.model)
    after = load_model(compare_with) if compare_with is not None else None
    record = {"kind": "evaluate", "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "model_id": before.model_id, "model": before.provenance, "compare": after.provenance if after else None,
              "config": config.model_dump(mode="json"), "environment": _environment()}
    store.write_run(run_id, record)
    evaluators = [(ref.plugin, registry().get("evaluator", ref.plugin), params[path])
                  for path, kind, ref in config.plugin_refs() if kind == "evaluator"]
    result = AuditResult(run_id=run_id, store=store.root, model_id=before.model_id)
    result.evaluation_failures, result.comparisons = run_evaluations(store, run_id, suites, evaluators, before, after,
                                                                     time_limit=time_limit, progress=progress,
                                                                     side_by_side=side_by_side)
    result.measurements = store.rows("evaluations", run_id=run_id)
    store.write_run(run_id, {**record, "status": "complete", "evaluation_failures": result.evaluation_failures})
    return result


def _store_diagnosis(store: Store, run_id: str, loaded: LoadedModel, suite: Suite, stats: ActivationStats, top: int) -> None:
    """The axis' emergence summary and the diagnosis figures of its most divergent pairs, for the report."""
    from fairaudit.diagnose import diagnose_pair, emergence, render_view

    summary = emergence(stats)
    pairs = {pair.pair_id: pair for pair in suite.pairs("probe")}
    ranking = metrics.pair_bias_index(stats).argsort(descending=True)[:top].tolist()
    rows = []
    for index in ranking:
        view = diagnose_pair(loaded, pairs[stats.pair_ids[index]], summary.mlp_peak)
        rows += [{"pair_id": view.pair.pair_id, "figure": name, "svg": str(svg)} for name, svg in render_view(view).items()]
    store.write_part("diagnosis", loaded.model_id, suite.axis, run_id, pa.Table.from_pylist(rows))
    store.write_part("emergence", loaded.model_id, suite.axis, run_id, pa.table({
        "attention_onset_layer": pa.array([summary.attention_onset], pa.int32()), "mlp_peak_layer": pa.array([summary.mlp_peak], pa.int32()),
        "amplification": [summary.amplification], "amplification_low": [summary.amplification_low],
        "amplification_high": [summary.amplification_high]}))


def _store_overlap(store: Store, model_id: str, run_id: str, top: float) -> None:
    """The cross-axis overlap of this run's neurons, stored for the report."""
    from fairaudit.overlap import DEFAULT_SCORE, axis_overlap, load_scores

    try:
        scores = load_scores(store, model_id, DEFAULT_SCORE, run_id)
    except FairauditError:
        return  # the configured scorers did not produce the overlap score
    result = axis_overlap(scores, top)
    for name, table in (("overlap_pairs", result.pairs), ("overlap_per_layer", result.per_layer), ("overlap_shared", result.shared)):
        table = table.drop_columns([c for c in ("model",) if c in table.column_names])  # the partition key holds it
        store.write_part(name, model_id, "all", run_id, table.append_column("top", pa.array([top] * table.num_rows, pa.float64())))
