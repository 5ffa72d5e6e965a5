"""The HTML audit report and its JSON twin, rendered from the store only.

`report_data` collects every number the report shows from the store (it never
recomputes a score); `render_report` turns it into one self-contained HTML file (inline
CSS and SVG, no scripts, no network) with Jinja autoescaping on, and writes `report.json`
beside it with the same numbers.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

import fairaudit
from fairaudit.analysis.diagnose import causal_view
from fairaudit.errors import StoreError
from fairaudit.reporting.sanitize import safe_svg
from fairaudit.resources import templates_dir
from fairaudit.store import Store, safe_name
from fairaudit.svg import bar_chart, heatmap

TOP_NEURONS = 10


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _change_phrase(change: dict[str, Any], what: str, absolute: str | None = None) -> str:
    """'<what> fell by 12.0% (95% CI ...)' from a paired change and its 95% interval: relative,
    or absolute in the unit `absolute` names (for quantities whose ratio means nothing, such as
    log-probabilities)."""
    keys = ("change", "change_low", "change_high") if absolute else ("relative_change", "relative_low", "relative_high")
    value, low, high = (change[key] for key in keys)
    shown = (lambda v: f"{v:+.4f} {absolute}") if absolute else (lambda v: f"{v:+.1%}")
    size = (lambda v: f"{abs(v):.4f} {absolute}") if absolute else (lambda v: f"{abs(v):.1%}")
    if not (_finite(low) and _finite(high)):
        return f"{what} changed by {shown(value)} (no interval: too few items)"
    interval = f"95% CI {shown(low)} to {shown(high)}, {change['items']} items"
    if high < 0:
        return f"{what} fell by {size(value)} ({interval})"
    if low > 0:
        return f"{what} rose by {size(value)} ({interval})"
    return f"{what} did not change measurably ({shown(value)}; {interval} includes no change)"


def _verdict(axis: str, change: dict[str, Any] | None, what: str) -> str:
    """A plain-language line computed from a paired change and its 95% interval."""
    if not change:
        return f"{axis}: {what} was not measured before and after pruning."
    return f"{axis}: {_change_phrase(change, what)}."


FACT_METRICS = {"fact_accuracy": ("accuracy on facts that depend on a demographic word", None),
                "fact_logprob": ("the mean log-probability of the correct answer", "nats")}


def _facts_verdict(rows: list[dict[str, Any]]) -> str | None:
    """One line for the factual-knowledge control naming every metric: the overall ones always,
    a category's only when its interval excludes no change."""
    phrases = []
    for row in sorted(rows, key=lambda r: (r["axis_or_task"] != "", r["axis_or_task"], r["metric"])):
        what, unit = FACT_METRICS.get(row["metric"], (row["metric"], None))
        changed = _finite(row["relative_low"]) and (row["relative_low"] > 0 or row["relative_high"] < 0)
        if row["axis_or_task"] == "":
            phrases.append(_change_phrase(row, what, unit))
        elif changed:
            phrases.append(_change_phrase(row, f"{what} ({row['axis_or_task']})", unit))
    return f"Factual-knowledge control: {'; '.join(phrases)}." if phrases else None


def _direction_verdict(axis: str, change: dict[str, Any] | None) -> str:
    """For a signed output-level bias: did pruning move it toward zero, away, or across zero?"""
    if not change:
        return f"{axis}: output-level bias was not measured before and after pruning (no continuations)."
    before, after = change["before"], change["after"]
    low, high = change["change_low"], change["change_high"]
    significant = _finite(low) and _finite(high) and (low > 0 or high < 0)
    interval = f"change {after - before:+.4f}, 95% CI {low:+.4f} to {high:+.4f}" if _finite(low) else "no interval"
    if before * after < 0:
        what = "flipped sign (pruning overshot: the bias now points the other way)"
    elif abs(after) < abs(before):
        what = "moved toward zero"
    else:
        what = "moved away from zero"
    certainty = "" if significant else "; the interval includes no change"
    return f"{axis}: the output-level preference for the negative continuation went from {before:+.4f} to {after:+.4f}: {what} ({interval}{certainty})."


def _random_verdict(axis: str, found: dict[str, float], selected: bool | None = None) -> str | None:
    """Did the chosen selection beat random neurons of the same number per layer (the
    `random_baseline` evaluator)? Said plainly either way; `selected` False: a causal selection
    left this axis alone, so what moved it is a side effect."""
    if "beats_random_p" not in found:
        return None
    p = found["beats_random_p"]
    outcome = "beat random selections" if p < 0.05 else "did not beat random selections"
    aside = (" This axis was not selected for (its bias was not distinguishable from zero on the selection templates): "
             "the change is a side effect." if selected is False else "")
    return (f"{axis}: against random neurons of the same number per layer, |output-level bias| on held-out templates went from "
            f"{found['abs_output_bias_before']:.4f} to {found['abs_output_bias_after']:.4f} (random selections: "
            f"{found['abs_output_bias_random']:.4f}); the chosen selection {outcome} (one-sided permutation p = {p:.2g}).{aside}")


def _p_value_text(value: Any) -> str:
    """A p- or q-value as a reader needs it: small ones in scientific notation, never '0.0000'."""
    if not _finite(value):
        return "n/a"
    return f"{value:.2e}" if 0 < value < 1e-3 else f"{value:.4f}" if value else "0"


def _attribution_line(axis: str, row: dict[str, Any]) -> str | None:
    """The causal scorers' numbers for an axis (output_attribution and ablation), when stored."""
    if row.get("output_bias") is None:
        return None
    line = (f"{axis}: output-level bias on the probe templates {row['output_bias']:+.4f} (95% CI, templates resampled, "
            f"{row.get('output_bias_template_low', math.nan):+.4f} to {row.get('output_bias_template_high', math.nan):+.4f})")
    checks = [f"{kind}s: Spearman {row[f'{kind}_attribution_spearman']:.2f} over the top {int(row[f'{kind}_attribution_verified'])}"
              for kind in ("neuron", "head") if row.get(f"{kind}_attribution_verified")]
    if checks:
        line += "; attribution estimate against real single-unit ablation, " + ", ".join(checks)
    return line + "."


def _policy_section(store: Store, run_id: str, record: dict[str, Any], policy, compare_run: str | None) -> dict[str, Any] | None:
    """The verdict table the report opens with (None when there is no policy)."""
    from fairaudit.compliance.policy import evaluate_policy, exit_status, gate_role, stored_policy, verdict_changes

    policy = policy or stored_policy(record)
    if policy is None:
        return None
    verdicts = evaluate_policy(policy, store, run_id)
    role = gate_role(verdicts)
    rules = {rule.id: rule for rule in policy.rules}
    section = {"name": policy.policy, "sha256": policy.sha256(), "gate_model": role, "exit_status": exit_status(verdicts, role),
               "verdicts": [{**v.as_dict(), "source": rules[v.rule].source, "anchor": f"evidence-{index}"}
                            for index, v in enumerate(verdicts)],
               "changes": None}
    if compare_run:
        section["changes"] = {"baseline": compare_run, "rows": verdict_changes(evaluate_policy(policy, store, compare_run), verdicts)}
    return section


def report_data(store: Store, run_id: str, compare_run: str | None = None, policy=None) -> dict[str, Any]:
    """Everything the report shows, read from the store. `policy` (a `fairaudit.compliance.policy.Policy`)
    adds the verdict table; without it, the policy the run was audited against, if any."""
    record = store.read_run(run_id)
    if record.get("kind", "audit") != "audit":
        raise StoreError(f"run {run_id} is a {record.get('kind')} run; the report is made from an audit run.")
    model_id = record["model_id"]
    axes = list(record.get("suites", {}))
    summaries = {row["axis"]: row for row in store.rows("axis_summary", model=model_id, run_id=run_id)}
    comparisons = store.rows("comparisons", model=model_id, run_id=run_id)
    change = {(row["evaluator"], row["axis_or_task"], row["metric"]): row for row in comparisons}
    measurements = store.rows("evaluations", run_id=run_id)
    items = store.rows("evaluation_items", run_id=run_id)
    prune = record.get("prune")
    pruned_id = Path(prune["out"]).name if prune else None

    def measured(evaluator: str, metric: str, role: str) -> dict[str, Any] | None:
        return next((row for row in measurements if row["evaluator"] == evaluator and row["metric"] == metric
                     and row["role"] == role and not row["error"]), None)

    selected = {gate["axis"]: gate["active"] for gate in ((prune or {}).get("causal") or {}).get("gates", [])}
    summary = []
    for axis in axes:
        row = summaries.get(axis, {})
        summary.append({
            "axis": axis,
            "bias_index": row.get("bias_index"), "bias_index_low": row.get("bias_index_low"), "bias_index_high": row.get("bias_index_high"),
            "optipfair_index": row.get("optipfair_index"), "pairs": row.get("pairs"), "significant_neurons": row.get("significant_neurons"),
            "probe_change": change.get(("bias_reprobe", axis, "bias_index")),
            "heldout_change": change.get(("bias_reprobe", axis, "bias_index_heldout")),
            "output_change": change.get(("output_bias", axis, "stereotype_preference")),
            "verdicts": [verdict for verdict in (
                _verdict(axis, change.get(("bias_reprobe", axis, "bias_index_heldout")), "the bias index on held-out templates"),
                _direction_verdict(axis, change.get(("output_bias", axis, "stereotype_preference"))),
                _random_verdict(axis, {row["metric"]: row["value"] for row in measurements if row["evaluator"] == "random_baseline"
                                       and row["axis_or_task"] == axis and row["role"] == "after" and not row["error"]},
                                selected.get(axis)))
                if verdict] if prune else [],
            "attribution": _attribution_line(axis, row),
        })
    quality = [row for row in comparisons if row["evaluator"] in ("perplexity", "lm_eval", "facts", "fidelity")]
    perplexity = {role: measured("perplexity", "perplexity_bundled", role) for role in ("before", "after")}
    quality_verdicts = []
    if perplexity["before"] and perplexity["after"]:
        ratio = perplexity["after"]["value"] / perplexity["before"]["value"] - 1
        quality_verdicts.append(f"Perplexity on the bundled corpus went from {perplexity['before']['value']:.2f} to "
                                f"{perplexity['after']['value']:.2f} ({ratio:+.2%}).")
    for row in quality:
        if row["evaluator"] == "lm_eval":
            quality_verdicts.append(f"lm-eval {row['axis_or_task']} {row['metric']}: {row['before']:.3f} before, {row['after']:.3f} after.")
    facts = _facts_verdict([row for row in comparisons if row["evaluator"] == "facts"])
    if facts:
        quality_verdicts.append(facts)
    fidelity = measured("fidelity", "embedding_cosine", "after")
    if fidelity:
        quality_verdicts.append(f"Embeddings of the pruned model keep a mean cosine similarity of {fidelity['value']:.4f} with the original.")

    layer_rows = [row for row in items if row["evaluator"] == "bias_reprobe" and "_divergence_by_layer" in row["metric"]]
    charts = []
    for axis in axes:
        for component in ("attention", "mlp"):
            series, intervals = {}, {}
            for role, label in (("before", "before pruning"), ("after", "after pruning")):
                by_metric: dict[str, dict[int, float]] = {}  # value, _low and _high per layer
                for r in layer_rows:
                    if r["axis_or_task"] == axis and r["role"] == role and r["metric"].startswith(f"{component}_divergence_by_layer"):
                        by_metric.setdefault(r["metric"].removeprefix(f"{component}_divergence_by_layer"), {})[int(r["item"])] = r["value"]
                values, low, high = by_metric.get("", {}), by_metric.get("_low", {}), by_metric.get("_high", {})
                if values:
                    series[label] = [values.get(layer) for layer in range(max(values) + 1)]
                    intervals[label] = [(low[layer], high[layer]) if layer in low and layer in high else None
                                        for layer in range(max(values) + 1)]
            if not series:
                stored = store.rows("layer_scores", model=model_id, axis=axis, run_id=run_id)
                if stored and f"{component}_divergence" in stored[0]:
                    series["audited model"] = [r[f"{component}_divergence"] for r in sorted(stored, key=lambda r: r["layer"])]
            if series:
                layers = len(next(iter(series.values())))
                charts.append({"axis": axis, "component": component, "series": series, "svg": bar_chart(
                    f"{axis}: {component} output divergence per layer", [str(i) for i in range(layers)], series,
                    "layer", "mean |activation difference|", intervals)})

    kept = {}
    if prune:
        for row in store.rows("neuron_maps", model=pruned_id, run_id=prune.get("run_id", "")):  # this run's map only
            if not row.get("zeroed"):
                kept.setdefault(row["layer"], set()).add(row["original_index"])
    top_neurons = {}
    for axis in axes:
        rows = store.rows("neuron_scores", model=model_id, axis=axis, run_id=run_id)
        rows = sorted((r for r in rows if _finite(r.get("bias"))), key=lambda r: -r["bias"])[:TOP_NEURONS]
        top_neurons[axis] = [{"layer": r["layer"], "neuron": r["neuron"], "bias": r["bias"], "scaled_bias": r.get("scaled_bias"),
                              "q_value": r.get("q_value"), "importance": r.get("importance_ppm"), "hybrid": r.get("hybrid"),
                              "hybrid_scaled": r.get("hybrid_scaled"),
                              "status": ("pruned" if r["neuron"] not in kept.get(r["layer"], set()) else "kept") if kept else "-"}
                             for r in rows]

    overlap_pairs = store.rows("overlap_pairs", model=model_id, run_id=run_id)
    overlap_svg = None
    if overlap_pairs:
        index = {axis: i for i, axis in enumerate(axes)}
        ratio = [[None] * len(axes) for _ in axes]
        notes = [[""] * len(axes) for _ in axes]
        for row in overlap_pairs:
            if row["axis_a"] in index and row["axis_b"] in index:
                a, b = index[row["axis_a"]], index[row["axis_b"]]
                value = row["overlap"] / row["expected"] if row["expected"] else None
                for i, j in ((a, b), (b, a)):
                    ratio[i][j] = value
                    notes[i][j] = f"{row['overlap']} (exp. {row['expected']:.1f})\np={row['p_value']:.1e}"
        for axis, i in index.items():
            notes[i][i] = axis
        overlap_svg = heatmap("Top-neuron overlap between axes (observed / expected; darker = more shared)", axes, ratio, notes,
                              scale_label="observed / expected:")

    other_models = []
    for run in store.runs():
        if run.get("kind", "audit") == "audit" and run.get("status") == "complete" and run["model_id"] != model_id:
            rows = store.rows("axis_summary", model=run["model_id"], run_id=run["run_id"])
            other_models.append({"model": run["model_id"], "run_id": run["run_id"], "axes": {r["axis"]: r["bias_index"] for r in rows}})
    matched = []  # neuron matchings of this run's model with another model (fairaudit overlap --match)
    for run in store.runs():
        if run.get("kind") == "match" and run_id in (run.get("run_a"), run.get("run_b")):
            rows = store.rows("matched_overlap", run_id=run["run_id"])
            other = run["model_b"] if run.get("run_a") == run_id else run["model_id"]
            matched.append({"run_id": run["run_id"], "other": other, "model_a": run["model_id"], "model_b": run["model_b"],
                            "words": run.get("words"), "corpus": run.get("corpus"), "top": run.get("top", 0), "score": run.get("score"),
                            "self_recovery": run.get("self_match_recovery", float("nan")), "rows": rows})
    compared = None
    if compare_run:
        other = store.read_run(compare_run)
        rows = store.rows("axis_summary", model=other["model_id"], run_id=compare_run)
        compared = {"run_id": compare_run, "model": other["model_id"], "axes": {r["axis"]: r for r in rows}}

    curve = (prune or {}).get("causal", {}).get("heldout_curve") or []
    curve_svg = None
    if curve:
        from fairaudit.svg import scatter

        shown = [row for row in curve if row["heldout_abs_bias_before"] > 0]
        curve_svg = scatter("Held-out |output bias| kept at each budget, against the perplexity it costs",
                            [(row["slice_perplexity_rise"], row["heldout_abs_bias_after"] / row["heldout_abs_bias_before"]) for row in shown],
                            [f"{row['budget']:g}" for row in shown], [row["axis"] for row in shown],
                            [row["budget"] == prune["causal"]["chosen_budget"] for row in shown],
                            "perplexity change on the corpus slice (relative)", "held-out |m| after / before",
                            "Labels: budget (share of all units: MLP neurons and attention heads); ringed: the budget chosen on validation templates. "
                            "Evaluation only: the held-out figures did not inform the choice.")
    causal = {axis: entry for axis in axes if (entry := causal_view(axis, *(
        store.rows(table, model=model_id, axis=axis, run_id=run_id) for table in ("layer_scores", "neuron_scores", "head_scores"))))}

    diagnosis = {}
    for axis in axes:
        figures = store.rows("diagnosis", model=model_id, axis=axis, run_id=run_id)
        onset = store.rows("emergence", model=model_id, axis=axis, run_id=run_id)
        if figures or onset:
            # the SVG was rendered at audit time by fairaudit.svg, but a store is a folder anyone can edit:
            # it is rebuilt from an allow-list of SVG elements and attributes, never trusted as markup
            diagnosis[axis] = {"figures": [{"pair_id": f["pair_id"], "figure": f["figure"], "svg": safe_svg(f["svg"])} for f in figures],
                               "emergence": onset[0] if onset else None}

    generation_rows = store.rows("generations", run_id=run_id)
    generations: dict[tuple, dict[str, Any]] = {}
    for row in generation_rows:
        entry = generations.setdefault((row["axis_or_task"], row["pair_id"]), {"axis": row["axis_or_task"], "pair_id": row["pair_id"]})
        entry[f"prompt_{row['side']}"] = row["prompt"]
        entry[f"group_{row['side']}"] = row["group"]
        entry[f"{row['role']}_{row['side']}"] = row["continuation"]

    provenance = {key: value for key, value in record.items() if key not in ("suites",)}
    pruning = (provenance.get("config") or {}).get("pruning")
    if prune and pruning is not None:  # the selection as it was applied (defaults filled in), not as written
        effective = store.read_run(prune["run_id"]).get("selection") if store.run_path(prune["run_id"]).exists() else None
        if effective:
            key = "causal" if pruning.get("causal") is not None else "selection"
            provenance["config"] = {**provenance["config"], "pruning": {**pruning, key: effective}}
    return {
        "fairaudit_version": fairaudit.__version__,
        "run_id": run_id, "model_id": model_id, "status": record.get("status"), "started": record.get("started"),
        "policy": _policy_section(store, run_id, record, policy, compare_run),
        "summary": summary, "quality": quality, "quality_verdicts": quality_verdicts,
        "perplexity": perplexity, "fidelity": fidelity, "prune": prune, "pruned_id": pruned_id,
        "prune_skipped": record.get("prune_skipped"),
        "comparisons": comparisons, "charts": charts, "top_neurons": top_neurons,
        "overlap": overlap_pairs, "overlap_svg": overlap_svg, "matched": matched, "diagnosis": diagnosis, "causal": causal, "causal_curve_svg": curve_svg, "other_models": other_models, "compared": compared,
        "generations": sorted(generations.values(), key=lambda g: (g["axis"], g["pair_id"])),
        "failures": sorted({row["error"] for row in measurements if row["error"] and not row["error"].startswith("skipped")}),
        "provenance": provenance,
        "suites": {axis: {"sha256": entry.get("sha256"), "definition": entry.get("definition")}
                   for axis, entry in record.get("suites", {}).items()},
    }


def _prose(text: str) -> Markup:
    """A sentence for the page: escaped, with `code` spans (Markdown backticks) set as <code>."""
    pieces = str(text).split("`")
    if len(pieces) % 2 == 0:  # an unmatched backtick: show it as it is
        return Markup(escape(text))
    return Markup("".join(f"<code>{escape(piece)}</code>" if index % 2 else str(escape(piece)) for index, piece in enumerate(pieces)))


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items() if k not in ("svg", "overlap_svg")}
    if isinstance(value, Markup):
        return None
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def render_report_text(data: dict[str, Any], template: str = "base.html.j2") -> tuple[str, str]:
    """The report's HTML and its JSON twin, as text."""
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(templates_dir()), autoescape=True,
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["num"] = lambda v, digits=4: "n/a" if not _finite(v) else f"{v:.{digits}f}"
    environment.filters["pval"] = _p_value_text
    environment.filters["pct"] = lambda v: "n/a" if not _finite(v) else f"{100 * v:+.1f}%"
    environment.filters["raw"] = lambda v: "" if not _finite(v) else repr(float(v))
    environment.filters["prose"] = _prose
    html = environment.get_template(template).render(**data)
    return html, json.dumps(_json_ready(data), indent=2, default=str)


def _is_report_twin(path: Path) -> bool:
    """True when `path` holds the JSON twin of a fairaudit report (so replacing it loses nothing of the user's)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return head.lstrip().startswith(b"{") and b'"fairaudit_version"' in head


def render_report(data: dict[str, Any], out: str | Path, template: str = "base.html.j2", force: bool = False) -> tuple[Path, Path]:
    """Write the HTML report and `report.json` next to it, each atomically (a symlink in the way is
    replaced, never written through); return both paths. The twin's name is derived, not given:
    an existing file there that is not a fairaudit report twin is kept unless `force`."""
    out = Path(out)
    if "\x00" in str(out):
        raise StoreError("the report path contains a NUL byte.")
    twin = out.with_name(out.stem + ".json") if out.suffix == ".html" else out.with_name(out.name + ".json")
    if twin.exists() and not force and (twin.is_symlink() or not _is_report_twin(twin)):
        raise StoreError(f"{twin} exists and is not the JSON twin of a fairaudit report; the report would replace it. Choose "
                         f"another --out, move that file, or pass --force.")
    html, twin_text = render_report_text(data, template)
    for path, text in ((out, html), (twin, twin_text)):
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            raise StoreError(f"could not write the report to {path}: {exc.strerror or exc}.") from None
    return out, twin


def report_path(folder: str | Path, model_id: str, run_id: str) -> Path:
    """Where `fairaudit audit` writes its report: a safe file name inside `folder`."""
    return Path(folder) / f"report-{safe_name(model_id, 60)}-{safe_name(run_id, 40)}.html"


# --- the grid report of a sweep ---------------------------------------------------------------

def _pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """Which (cost, reduction) points no other point beats: lower or equal cost and higher or
    equal reduction, one of them strictly."""
    return [not any(c <= cost and r >= reduction and (c < cost or r > reduction) for c, r in points)
            for cost, reduction in points]


def sweep_data(store: Store, sweep_id: str) -> dict[str, Any]:
    """Everything the grid report shows: per cell and axis, the output-level bias before and
    after, the held-out bias index change, the perplexity cost, and for each model and axis
    the Pareto front of bias reduction against perplexity cost."""
    from fairaudit.svg import scatter

    record = store.read_run(sweep_id)
    if record.get("kind") != "sweep":
        raise StoreError(f"run {sweep_id} is a {record.get('kind', 'audit')} run, not a sweep; see 'fairaudit store ls'.")
    varying = [key for key in record.get("grid", {}) if key not in ("model", "model.id", "suites")]
    rows = []
    for cell in record.get("cells", []):
        run_id, values = cell["run_id"], cell["values"]
        run = store.read_run(run_id) if store.run_path(run_id).exists() else {"status": "not run"}
        setting = ", ".join(f"{key}={values[key] if isinstance(values[key], str) else json.dumps(values[key])}" for key in varying) or "-"
        measured = {(r["evaluator"], r["metric"], r["role"], r["axis_or_task"]): r
                    for r in store.rows("evaluations", run_id=run_id) if not r["error"]}
        changes = {(r["evaluator"], r["metric"], r["axis_or_task"]): r for r in store.rows("comparisons", run_id=run_id)}
        # the model as the sweep file names it (two folders can share a name), else as stored
        model = values.get("model", values.get("model.id", run.get("model_id", "?")))
        model = model if isinstance(model, str) else json.dumps(model)
        perplexity = changes.get(("perplexity", "nll_per_token_bundled", ""))
        cost = {key: math.expm1(perplexity[field]) if perplexity and _finite(perplexity[field]) else math.nan
                for key, field in (("value", "change"), ("low", "change_low"), ("high", "change_high"))}
        for axis in run.get("suites", {}) or ["-"]:
            before = measured.get(("output_bias", "stereotype_preference", "before", axis))
            after = measured.get(("output_bias", "stereotype_preference", "after", axis))
            heldout = changes.get(("bias_reprobe", "bias_index_heldout", axis))
            reduction = abs(before["value"]) - abs(after["value"]) if before and after else math.nan
            if not _finite(reduction) and heldout:
                reduction = -heldout["relative_change"]
            rows.append({"model": model, "axis": axis, "setting": setting, "run_id": run_id,
                         "status": run.get("status"), "error": run.get("error", ""), "before": before, "after": after,
                         "heldout": heldout, "cost": cost, "reduction": reduction, "removed": (run.get("prune") or {}).get("removed")})
    fronts = []
    for model, axis in dict.fromkeys((row["model"], row["axis"]) for row in rows):
        chosen = [row for row in rows if (row["model"], row["axis"]) == (model, axis) and _finite(row["reduction"])]
        if not chosen:
            continue
        uses_cost = all(_finite(row["cost"]["value"]) for row in chosen)
        points = [(row["cost"]["value"] if uses_cost else 0.0, row["reduction"]) for row in chosen]
        on_front = _pareto_front(points)
        fronts.append({"model": model, "axis": axis, "svg": scatter(
            f"{model}, {axis}: bias reduction vs quality cost", points, [row["setting"] for row in chosen],
            ["on the Pareto front" if front else "dominated" for front in on_front], on_front,
            "perplexity change (relative)" if uses_cost else "(no perplexity measured: cost 0)",
            "bias reduction", "ringed: no other setting has both a lower cost and a larger reduction"),
            "points": [{"setting": row["setting"], "cost": point[0], "reduction": point[1], "front": front}
                       for row, point, front in zip(chosen, points, on_front)]})
    return {"fairaudit_version": fairaudit.__version__, "sweep_id": sweep_id, "status": record.get("status"),
            "grid": record.get("grid", {}), "rows": rows, "fronts": fronts,
            "reduction_definition": "|output-level preference| before minus after (nats); where output-level bias was not "
                                    "measured, minus the relative change of the held-out bias index"}


def render_sweep_report(data: dict[str, Any], out: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write the grid report of a sweep and its JSON twin."""
    return render_report(data, out, template="sweep.html.j2", force=force)
