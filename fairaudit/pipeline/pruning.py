"""The pruning step: choose neurons and heads (by a stored score, or causally by their measured
effect on the output), prune them, write a model `transformers` loads as is, and record it.

`prune_model(model, store, pruning, out)` is what `fairaudit prune` calls; `prune_stage` is the
audit's stage, which calls it with the run's own store and suites.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

import fairaudit
from fairaudit.config import CausalParams, ModelSpec, PruningConfig, RunConfig, SelectionParams
from fairaudit.errors import ConfigError, NothingToPrune, StoreError
from fairaudit.escaping import for_terminal, markdown_code, markdown_text
from fairaudit.inputs.model import LoadedModel, load_model, weights_hash
from fairaudit.inputs.suite import Suite
from fairaudit.pipeline.record import clock, record_time, timings_of
from fairaudit.pipeline.selection import plan_selection, top_heads
from fairaudit.plugins import registry
from fairaudit.repair.prune import NEURON_MAP_FILE, PruneReport, Selection
from fairaudit.store import RunRecord, Store, safe_name

log = logging.getLogger(__name__)


def prune_stage(
    store: Store, record: RunRecord, config: RunConfig, suites: list[Suite], loaded: LoadedModel
) -> tuple[LoadedModel | None, dict[str, Any]]:
    """The audit's pruning: prune by this run's scores or causally (unless a resumed run already
    saved the pruned model) and load the saved model back through the user's code path. Returns
    (the pruned model, what the record says of it); the model is None when causal selection finds
    nothing to prune (recorded as `prune_skipped`: the audit goes on unpruned)."""
    assert config.pruning is not None
    stage_started = clock()
    out_root = Path(config.pruning.out) if config.pruning.out else store.root.parent / "pruned"
    out = out_root / safe_name(record.run_id) / f"{safe_name(loaded.model_id)}-pruned"
    if record.prune_skipped is not None:  # a resumed run whose causal selection found nothing to prune
        return None, {"skipped": record.prune_skipped["reason"]}
    if (out / NEURON_MAP_FILE).exists() and record.prune is None:
        _check_owner(store, out, record.run_id)
        shutil.rmtree(out)  # saved by this run, killed before it recorded its pruning: not trusted, pruned again
    if not (out / NEURON_MAP_FILE).exists():
        pruning = config.pruning
        if (
            pruning.causal is not None and not loaded.has_lm_head
        ):  # as said: causal selection needs a language-model head
            selection = SelectionParams(axes=[s.axis for s in suites])
            pruning = pruning.model_copy(update={"causal": None, "selection": selection})
            log.info(
                f"{loaded.model_id} is an encoder: causal selection needs a language-model head, so neurons "
                f"are selected by the stored score {selection.score} instead"
            )
        try:
            outcome = prune_model(config.model, store.root, pruning, out, suites=suites, run_id=record.run_id)
        except NothingToPrune as exc:  # no axis (or budget) to prune for: the audit goes on, the original model only
            reason = str(exc).removesuffix(" Nothing was written.")
            log.info(f"{reason} The audit goes on without pruning.")
            record.prune_skipped = {"reason": reason, "causal": exc.record}
            record_time(timings_of(record), "prune", stage_started)
            store.save(record)
            return None, {"skipped": reason}
        record.prune = outcome.summary(out)
        record_time(timings_of(record), "prune", stage_started)
        store.save(record)
    pruned = record.prune or {"out": str(out)}
    return load_model(config.model.model_copy(update={"id": str(out), "gguf_file": None, "revision": None})), pruned


def _check_owner(store: Store, out: Path, run_id: str) -> None:
    """Refuse to delete a pruned-model folder that this run did not record writing (a prune run of
    this store, for this run, with this output): it may hold another run's model."""
    resolved = str(out.resolve())
    if not any(
        run.get("kind") == "prune" and run.get("output") == resolved and run.get("for_run") == run_id
        for run in store.runs()
    ):
        raise StoreError(
            f"{out} holds a pruned model that run {run_id} of {store.root} did not record writing (another run's, "
            f"or another store's); it is kept. Set pruning.out to another folder, or move that one."
        )


@dataclass
class PruneOutcome:
    """A pruning run: the report, where the model went, and the store records."""

    run_id: str
    source_run: str | None
    out: Path
    report: PruneReport
    pruning: PruningConfig  # as applied: the selection's axes filled in
    ranking: str = ""
    causal: dict[str, Any] | None = None  # fairaudit.repair.causal.CausalPlan.as_dict() when chosen causally
    heads: list[tuple[int, int]] = field(default_factory=list)  # (layer, head) zeroed or removed
    erasure: Any = None  # fairaudit.repair.erasure.Erasure folded into the weights, or None

    def summary(self, out: Path) -> dict[str, Any]:
        """What an audit's run record says of its pruning."""
        return {
            "run_id": self.run_id,
            "out": str(out),
            "removed": self.report.removed,
            "zeroed": sum(len(zeroed) for zeroed in self.report.zeroed),
            "neurons": sum(self.report.widths_before),
            "ranking": self.ranking,
            "parameters_before": self.report.parameters_before,
            "parameters_after": self.report.parameters_after,
            **({"causal": self.causal} if self.causal else {}),
            **({"heads": [list(head) for head in self.heads]} if self.heads else {}),
        }


def _model_card(
    loaded: LoadedModel,
    pruning: PruningConfig,
    report: PruneReport,
    source_run: str | None,
    ranking: str,
    heads: list[tuple[int, int]],
) -> str:
    widths = sorted(set(report.widths_after))
    selection = pruning.selection
    chosen = (
        f"fraction {selection.fraction} ({selection.scope}), scores from run {markdown_code(source_run)}; neurons in "
        f"the top {selection.protect:.1%} of {markdown_code(selection.importance)} per layer were protected"
        if selection and source_run
        else "held-out templates were not used; the prune run record in the store holds every step's figures"
    )
    return (
        f"# {markdown_text(loaded.model_id)}, fairness-pruned with fairaudit {fairaudit.__version__}\n\n"
        f"Base model: {markdown_code(loaded.provenance.get('source'))} (weights hash {loaded.provenance['weights_hash']}).\n\n"
        f"Neurons ranked by {for_terminal(ranking)}; {chosen}.\n\n"
        f"MLP neurons removed or zeroed: {report.removed} of {sum(report.widths_before)}; MLP width now {widths}. "
        f"Parameters: {report.parameters_before:,} -> {report.parameters_after:,} "
        f"({report.parameters_removed_percent:.3f}% removed).\n\n"
        f"`fairaudit_neuron_map.json` maps each layer's pruned neuron index to its original index.\n\n"
        "Pruning changes internal activations; whether it reduced biased outputs must be checked by evaluation "
        "(bias on held-out prompts, output-level bias, quality). Activation divergence is not proof of unfair outputs.\n"
    ) + _heads_paragraph(pruning, heads)


def _heads_paragraph(pruning: PruningConfig, heads: list[tuple[int, int]]) -> str:
    if not heads:
        return ""
    how = (
        "removed by {} (the attention projections lost their rows and columns; the config's head counts follow)"
        if pruning.remove_heads
        else "zeroed by {} (their columns of the attention output projection are 0; shapes unchanged)"
    )
    by = f"`{pruning.heads.score}`" if pruning.heads else "the causal selection"
    return (
        f"\nAttention heads {how.format(by)}, as (layer, head): "
        f"{', '.join(f'({layer}, {head})' for layer, head in heads)}.\n"
    )


def _erasure_file(erasure: Any) -> dict[str, str]:
    """The erasure's file beside the model (U, strengths, axes), for the random baseline and readers."""
    if erasure is None:
        return {}
    from fairaudit.repair.erasure import ERASURE_FILE

    return {ERASURE_FILE: json.dumps(erasure.as_dict())}


def _erasure_paragraph(erasure: Any) -> str:
    if erasure is None:
        return ""
    from fairaudit.repair.erasure import ERASURE_FILE

    return (
        f"\nEvery layer's attention output and MLP down projection W, from each direction's first layer on, was "
        f"replaced by (I - U diag(s) U^T) W: {erasure.rank} direction(s) U fitted on the probe pairs of "
        f"{', '.join(dict.fromkeys(erasure.axes))}, strengths s = {', '.join(f'{s:g}' for s in erasure.strengths)}, "
        f"first layers {', '.join(str(f) for f in erasure.first_layers)} (`{ERASURE_FILE}` holds U, s, each "
        "direction's axis and first layer). Shapes are unchanged.\n"
    )


def prune_model(
    model: ModelSpec | str,
    store_path: str | Path,
    pruning: PruningConfig,
    out: str | Path,
    *,
    suites: list[Suite] | None = None,
    run_id: str | None = None,
) -> PruneOutcome:
    """Choose neurons (and heads) as `pruning` says, prune them, save the pruned model to `out` (a
    new folder) and record the neuron map and a provenance record in the store.

    `pruning.causal`: chosen by `fairaudit.repair.causal.plan` on `suites` (no stored score is
    read). `pruning.selection`: by a stored score of run `run_id` (default: the model's latest
    complete run), which must describe these very weights; its axes default to the suites'.
    `pruning.heads`: also the attention heads with the largest stored head score.
    `pruning.remove_heads`: remove the chosen heads instead of zeroing them, where
    `fairaudit.repair.prune.remove_heads` allows it (checked before anything is written)."""
    store = Store(store_path)
    if not store.root.is_dir():
        raise StoreError(f"{store.root} is not a store folder (it does not exist).")
    out = Path(out)
    if out.exists() and (not out.is_dir() or out.is_symlink() or any(out.iterdir())):
        raise StoreError(f"--out {out} exists and is not an empty folder; name a new folder for the pruned model.")
    pruning = pruning.for_axes([suite.axis for suite in suites or []])
    if pruning.causal is not None and not suites:
        raise ConfigError("causal selection plans on suites; name at least one (--axis with a suite name or file).")
    if pruning.selection is not None and not pruning.selection.axes:
        raise ConfigError("a selection by stored score needs the axes whose scores select neurons (--axis).")
    plugin = registry().get("pruner", pruning.pruner.plugin)
    try:
        params = plugin.Params.model_validate(pruning.pruner.params)
    except ValidationError as exc:
        raise ConfigError(
            f"pruner '{pruning.pruner.plugin}' parameters: {exc.errors()[0]['msg']} at "
            f"{'.'.join(map(str, exc.errors()[0]['loc']))}"
        ) from None
    loaded, source_run = _load_for_pruning(
        model, store, run_id if pruning.causal is None else None, pruning.causal is not None
    )
    dtype = loaded.provenance.get("source_dtype") if pruning.save_dtype == "source" else pruning.save_dtype
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(
            f"cannot save the pruned model in its source dtype: {loaded.model_id}'s checkpoint declares "
            f"{dtype or 'none'}. Choose float32, bfloat16 or float16."
        )
    selection, causal_record, axes = _choose(loaded, store, source_run, pruning, suites or [])
    chosen_heads = (
        top_heads(store, loaded, source_run, axes, pruning.heads.count, pruning.heads.score, pruning.heads.scope)
        if pruning.heads and source_run  # heads go with a stored-score selection (PruningConfig says so)
        else []
    )
    log.info(
        f"pruning {loaded.model_id}: {sum(len(p) for p in selection.pruned)} neurons selected ({selection.ranking})"
        + (
            f", and {len(chosen_heads)} attention heads by {pruning.heads.score}"
            if pruning.heads and chosen_heads
            else ""
        )
        + (f", and {len(selection.heads)} attention heads" if selection.heads else "")
    )
    chosen_heads = sorted(set(chosen_heads) | set(selection.heads))
    report = _apply(plugin, loaded, selection, params)
    if chosen_heads:
        _prune_heads(loaded, report, chosen_heads, pruning.remove_heads)
    outcome = PruneOutcome(
        run_id="",
        source_run=source_run,
        out=out,
        report=report,
        pruning=pruning,
        ranking=selection.ranking,
        causal=causal_record,
        heads=chosen_heads,
        erasure=selection.erasure,
    )
    outcome.run_id = _write_pruned(store, loaded, outcome, axes, str(dtype), run_id)
    return outcome


def _apply(plugin: Any, loaded: LoadedModel, selection: Selection, params: Any) -> PruneReport:
    """The pruner's removal of the selected neurons, then the selection's erasure folded into the
    weights (a plain weight edit of the same shapes, whatever the pruner)."""
    report = plugin.apply(loaded, selection, params)
    if selection.erasure is not None:
        from fairaudit.repair.erasure import fold

        fold(loaded, selection.erasure)
    return report


def _load_for_pruning(
    model: ModelSpec | str, store: Store, run_id: str | None, causal: bool
) -> tuple[LoadedModel, str | None]:
    """The model to prune, loaded whole in CPU memory where it was split, and the run whose
    stored scores select its neurons (None for causal selection)."""
    from fairaudit.analysis.overlap import latest_run

    spec = model if isinstance(model, ModelSpec) else ModelSpec(id=model)
    if spec.device_map:  # surgery changes shapes, which offloaded weights cannot take: prune a whole copy in CPU memory
        spec = spec.model_copy(update={"device_map": None, "max_memory": None, "offload_folder": None, "device": "cpu"})
    loaded = load_model(spec)
    if causal:
        return loaded, None
    source_run = run_id or latest_run(store, loaded.model_id)
    record = store.read_run(source_run)
    if record.get("model", {}).get("weights_hash") != loaded.provenance["weights_hash"]:
        stored_dtype = record.get("model", {}).get("dtype")
        hint = (
            f" (the run loaded it in {stored_dtype}, this prune in {spec.dtype}: pass --dtype {stored_dtype})"
            if stored_dtype not in (None, spec.dtype)
            else ""
        )
        raise StoreError(
            f"run {source_run} in {store.root} was computed on other weights than {loaded.model_id} "
            f"(weights hash {record.get('model', {}).get('weights_hash', '?')[:12]}... vs "
            f"{loaded.provenance['weights_hash'][:12]}...); scores of one model cannot prune another{hint}."
        )
    return loaded, source_run


def _choose(
    loaded: LoadedModel, store: Store, source_run: str | None, pruning: PruningConfig, suites: list[Suite]
) -> tuple[Selection, dict[str, Any] | None, list[str]]:
    """(selection, the causal plan's record, the axes selected for)."""
    if pruning.causal is not None:
        return _causal_selection(loaded, suites, pruning.causal)
    assert pruning.selection is not None and pruning.selection.axes and source_run is not None
    return plan_selection(store, loaded.model_id, source_run, pruning.selection), None, pruning.selection.axes


def _prune_heads(loaded: LoadedModel, report: PruneReport, heads: list[tuple[int, int]], remove: bool) -> None:
    """Zero the chosen heads (exact, shapes unchanged), or remove them from the weights."""
    from fairaudit.repair.prune import heads_by_layer, remove_heads, zero_heads

    per_layer = heads_by_layer(heads, len(loaded.layers))
    if remove:
        remove_heads(loaded, per_layer)
        report.removed_heads = per_layer
        report.parameters_after = sum(p.numel() for p in loaded.model.parameters())
    else:
        zero_heads(loaded, per_layer)
        report.zeroed_heads = per_layer


def _write_pruned(
    store: Store, loaded: LoadedModel, outcome: PruneOutcome, axes: list[str], dtype: str, for_run: str | None
) -> str:
    """Save the pruned model and its neuron map under a prune run; returns the run's id.

    The record is written first ("running") and completed last, like an axis' summary: a prune
    that is killed or fails leaves a record saying so, never a model or map that seems complete."""
    from fairaudit.repair.prune import save_pruned, saved_bytes

    out, report, pruning = outcome.out, outcome.report, outcome.pruning
    heads = {
        "heads": [list(head) for head in outcome.heads],
        "head_score": pruning.heads.score if pruning.heads else "causal",
    }
    fields: dict[str, Any] = {
        "model_id": out.name,
        "base_model_id": loaded.model_id,
        "source_run": outcome.source_run,
        "for_run": for_run,  # the run it was pruned for: the audit's, or the one whose scores it read
        "pruner": pruning.pruner.plugin,
        "pruning": pruning.model_dump(mode="json"),
        "ranking": outcome.ranking,
        "output": str(out.resolve()),
        **({"causal": outcome.causal} if outcome.causal else {}),
        **(heads if outcome.heads else {}),
        "widths_before": report.widths_before,
        "widths_after": report.widths_after,
        "parameters_before": report.parameters_before,
        "parameters_after": report.parameters_after,
    }
    created = not out.exists()
    try:
        with store.recording("prune", **fields) as record:
            log.info(
                f"writing the pruned model to {out}: about {saved_bytes(loaded, dtype) / 2**20:,.0f} MiB in {dtype}"
            )
            card = _model_card(loaded, pruning, report, outcome.source_run, outcome.ranking, outcome.heads)
            card += _erasure_paragraph(outcome.erasure)
            save_pruned(loaded, report, out, card, dtype, extra=_erasure_file(outcome.erasure))
            rows = [
                (layer, position, original, original in set(report.zeroed[layer]))
                for layer, kept in enumerate(report.neuron_map)
                for position, original in enumerate(kept)
            ]
            neuron_map = pa.table(
                {
                    "layer": pa.array([r[0] for r in rows], pa.int16()),
                    "pruned_index": pa.array([r[1] for r in rows], pa.int32()),
                    "original_index": pa.array([r[2] for r in rows], pa.int32()),
                    "zeroed": pa.array([r[3] for r in rows], pa.bool_()),
                }
            )
            store.write_part("neuron_maps", out.name, "+".join(axes), record.run_id, neuron_map)
            record.add(weights_hash=weights_hash(loaded.model))
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return record.run_id


def _causal_selection(
    loaded: LoadedModel, suites: list[Suite], params: CausalParams
) -> tuple[Selection, dict[str, Any], list[str]]:
    """(selection, record, axes) of `fairaudit.repair.causal.plan`; refuses, before anything is
    written, when it finds nothing to prune."""
    from fairaudit.repair.causal import plan
    from fairaudit.resources import corpus_path

    corpus = loaded.tokenizer(corpus_path().read_text(encoding="utf-8"))["input_ids"]
    found = plan(loaded, suites, params, corpus, say=log.info)
    if found.selection is None:
        why = (
            "no axis has an output-level bias whose 95% interval on the selection templates excludes 0"
            if not any(gate.active for gate in found.gates)
            else "no budget reduced the validation templates' output-level bias within the perplexity limit"
        )
        measured = ", ".join(
            f"{gate.axis} {gate.bias:+.3f} [{gate.template_low:+.3f}, {gate.template_high:+.3f}]"
            for gate in found.gates
        )
        raise NothingToPrune(
            f"causal selection found nothing to prune: {why} (selection-part output bias, 95% CI with templates "
            f"resampled: {measured}). Nothing was written.",
            found.as_dict(),
        )
    record = found.as_dict()
    if params.heldout_curve and params.method == "erase":
        log.info("the held-out curve is measured for neuron budgets only; the erasure's strengths have none")
    elif params.heldout_curve:
        from fairaudit.repair.causal import heldout_curve

        log.info("measuring each budget's held-out output bias (evaluation only: the choice is made)")
        record["heldout_curve"] = heldout_curve(loaded, suites, found)
    return found.selection, record, [gate.axis for gate in found.gates if gate.active]
