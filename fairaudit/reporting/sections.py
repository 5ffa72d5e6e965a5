"""The report's sections, each read from the store (nothing is recomputed): the per-axis summary
with its verdict sentences, quality, per-layer charts, top neurons, overlap, other models and
matchings, the causal plan's curve and views, diagnosis figures, generations, and the policy's
verdict table. `fairaudit.reporting.report.report_data` assembles them."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fairaudit.analysis.diagnose import causal_view
from fairaudit.reporting.sanitize import safe_svg
from fairaudit.store import Store
from fairaudit.svg import bar_chart, heatmap

TOP_NEURONS = 10
Rows = list[dict[str, Any]]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _change_phrase(change: dict[str, Any], what: str, absolute: str | None = None) -> str:
    """'<what> fell by 12.0% (95% CI ...)' from a paired change and its 95% interval: relative,
    or absolute in the unit `absolute` names (for quantities whose ratio means nothing, such as
    log-probabilities)."""
    keys = ("change", "change_low", "change_high") if absolute else ("relative_change", "relative_low", "relative_high")
    value, low, high = (change[key] for key in keys)
    shown = (lambda v: f"{v:+.4f} {absolute}") if absolute else (lambda v: f"{v:+.1%}")
    size = (lambda v: f"{abs(v):.4f} {absolute}") if absolute else (lambda v: f"{abs(v):.1%}")
    if not (is_number(low) and is_number(high)):
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


FACT_METRICS = {
    "fact_accuracy": ("accuracy on facts that depend on a demographic word", None),
    "fact_logprob": ("the mean log-probability of the correct answer", "nats"),
}


def _facts_verdict(rows: list[dict[str, Any]]) -> str | None:
    """One line for the factual-knowledge control naming every metric: the overall ones always,
    a category's only when its interval excludes no change."""
    phrases = []
    for row in sorted(rows, key=lambda r: (r["axis_or_task"] != "", r["axis_or_task"], r["metric"])):
        what, unit = FACT_METRICS.get(row["metric"], (row["metric"], None))
        changed = is_number(row["relative_low"]) and (row["relative_low"] > 0 or row["relative_high"] < 0)
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
    significant = is_number(low) and is_number(high) and (low > 0 or high < 0)
    interval = f"change {after - before:+.4f}, 95% CI {low:+.4f} to {high:+.4f}" if is_number(low) else "no interval"
    if before * after < 0:
        what = "flipped sign (pruning overshot: the bias now points the other way)"
    elif abs(after) < abs(before):
        what = "moved toward zero"
    else:
        what = "moved away from zero"
    certainty = "" if significant else "; the interval includes no change"
    return f"{axis}: the output-level preference for the negative continuation went from {before:+.4f} to {after:+.4f}: {what} ({interval}{certainty})."


AGAINST = ("random neurons of the same number per layer", "random directions of the same number and strength")


def _random_verdict(axis: str, found: dict, selected: bool | None = None, prefix: str = "", erased=False) -> str | None:
    """Did the chosen repair beat random ones of the same size (`random_baseline`: neurons per layer, or
    with `erased` directions)? Said plainly either way; `selected` False: a causal selection left this
    axis alone, so what moved it is a side effect. `prefix` "statements_" or "questions_": that format."""
    found = {key[len(prefix) :]: value for key, value in found.items() if key.startswith(prefix)}
    if "beats_random_p" not in found:
        return None
    p = found["beats_random_p"]
    outcome = "beat random selections" if p < 0.05 else "did not beat random selections"
    side = " This axis was not selected for (its bias was not distinguishable from zero on the selection templates): "
    aside = side + "the change is a side effect." if selected is False and not prefix else ""
    where = {"statements_": "in held-out statements,", "questions_": "in the question format (s_AMB),"}.get(prefix)
    where = f"{where} which no selection reads," if where else "on held-out templates"
    return (
        f"{axis}: against {AGAINST[erased]}, |output-level bias| {where} went from "
        f"{found['abs_output_bias_before']:.4f} to {found['abs_output_bias_after']:.4f} (random selections: "
        f"{found['abs_output_bias_random']:.4f}); the chosen selection {outcome} (one-sided permutation p = {p:.2g}).{aside}"
    )


def p_value_text(value: Any) -> str:
    """A p- or q-value as a reader needs it: small ones in scientific notation, never '0.0000'."""
    if not is_number(value):
        return "n/a"
    return f"{value:.2e}" if 0 < value < 1e-3 else f"{value:.4f}" if value else "0"


def _attribution_line(axis: str, row: dict[str, Any]) -> str | None:
    """The causal scorers' numbers for an axis (output_attribution and ablation), when stored."""
    if row.get("output_bias") is None:
        return None
    line = (
        f"{axis}: output-level bias on the probe templates {row['output_bias']:+.4f} (95% CI, templates resampled, "
        f"{row.get('output_bias_template_low', math.nan):+.4f} to {row.get('output_bias_template_high', math.nan):+.4f})"
    )
    checks = [
        f"{kind}s: Spearman {row[f'{kind}_attribution_spearman']:.2f} over the top {int(row[f'{kind}_attribution_verified'])}"
        for kind in ("neuron", "head")
        if row.get(f"{kind}_attribution_verified")
    ]
    if checks:
        line += "; attribution estimate against real single-unit ablation, " + ", ".join(checks)
    return line + "."


def _moved_away(change: dict[str, Any] | None) -> str | None:
    """Whether pruning moved the output-level preference away from zero: "yes" (the whole paired
    interval of |after| - |before| above 0), "no" (below 0: toward zero), "unclear", or None."""
    if not change or not is_number(change.get("abs_low")) or not is_number(change.get("abs_high")):
        return None
    return "yes" if change["abs_low"] > 0 else "no" if change["abs_high"] < 0 else "unclear"


VERDICT_RANK = {"pass": 0, "too few items": 1, "not measured": 1, "inconclusive": 1, "fail": 2}


def gate_verdicts(policy: dict[str, Any] | None) -> dict[str, str]:
    """Per axis, the worst `must` verdict on the gated model (the report's first table)."""
    worst: dict[str, str] = {}
    gated = (policy or {}).get("gate_model")
    for verdict in (policy or {}).get("verdicts", []):
        if verdict["severity"] == "must" and verdict["model"] == gated:
            known = worst.get(verdict["axis"])
            if known is None or VERDICT_RANK[verdict["verdict"]] > VERDICT_RANK[known]:
                worst[verdict["axis"]] = verdict["verdict"]
    return worst


def policy_section(
    store: Store, run_id: str, record: dict[str, Any], policy, compare_run: str | None
) -> dict[str, Any] | None:
    """The verdict table the report opens with (None when there is no policy)."""
    from fairaudit.compliance.policy import evaluate_policy, exit_status, gate_role, stored_policy, verdict_changes

    policy = policy or stored_policy(record)
    if policy is None:
        return None
    verdicts = evaluate_policy(policy, store, run_id)
    role = gate_role(verdicts)
    rules = {rule.id: rule for rule in policy.rules}
    section = {
        "name": policy.policy,
        "sha256": policy.sha256(),
        "gate_model": role,
        "exit_status": exit_status(verdicts, role),
        "verdicts": [
            {**v.as_dict(), "source": rules[v.rule].source, "anchor": f"evidence-{index}"}
            for index, v in enumerate(verdicts)
        ],
        "changes": None,
    }
    if compare_run:
        section["changes"] = {
            "baseline": compare_run,
            "rows": verdict_changes(evaluate_policy(policy, store, compare_run), verdicts),
        }
    return section


def axis_summary(
    axes: list[str],
    summaries: dict[str, dict[str, Any]],
    change: dict[tuple[str, str, str], Any],
    measurements: Rows,
    prune: dict[str, Any] | None,
) -> Rows:
    """One row per axis: the probe's figures, the before/after changes, and the verdict sentences."""
    causal = (prune or {}).get("causal") or {}
    selected, erased = {gate["axis"]: gate["active"] for gate in causal.get("gates", [])}, "chosen_strengths" in causal
    summary = []
    for axis in axes:
        row = summaries.get(axis, {})
        random = {
            row["metric"]: row["value"]
            for row in measurements
            if row["evaluator"] == "random_baseline"
            and row["axis_or_task"] == axis
            and row["role"] == "after"
            and not row["error"]
        }
        output_change = change.get(("output_bias", axis, "stereotype_preference"))
        summary.append(
            {
                "axis": axis,
                "selected": selected.get(axis),
                "random": random,
                "moved_away": _moved_away(output_change),
                "statement_moved_away": _moved_away(change.get(("output_bias", axis, "statement_preference"))),
                "question_moved_away": _moved_away(change.get(("output_bias", axis, "bbq_bias_ambiguous"))),
                "bias_index": row.get("bias_index"),
                "bias_index_low": row.get("bias_index_low"),
                "bias_index_high": row.get("bias_index_high"),
                "optipfair_index": row.get("optipfair_index"),
                "pairs": row.get("pairs"),
                "significant_neurons": row.get("significant_neurons"),
                "probe_change": change.get(("bias_reprobe", axis, "bias_index")),
                "heldout_change": change.get(("bias_reprobe", axis, "bias_index_heldout")),
                "output_change": change.get(("output_bias", axis, "stereotype_preference")),
                "statement_change": change.get(("output_bias", axis, "statement_preference")),
                "question_change": change.get(("output_bias", axis, "bbq_bias_ambiguous")),
                "verdicts": [
                    verdict
                    for verdict in (
                        _verdict(
                            axis,
                            change.get(("bias_reprobe", axis, "bias_index_heldout")),
                            "the bias index on held-out templates",
                        ),
                        _direction_verdict(axis, change.get(("output_bias", axis, "stereotype_preference"))),
                        _random_verdict(axis, random, selected.get(axis), "", erased),
                        _random_verdict(axis, random, selected.get(axis), "statements_", erased),
                        _random_verdict(axis, random, selected.get(axis), "questions_", erased),
                    )
                    if verdict
                ]
                if prune
                else [],
                "attribution": _attribution_line(axis, row),
            }
        )
    return summary


def quality_section(comparisons: Rows, measured: Callable[[str, str, str], dict[str, Any] | None]) -> dict[str, Any]:
    """Quality before and after: the comparisons, perplexity, fidelity, and a sentence for each."""
    quality = [row for row in comparisons if row["evaluator"] in ("perplexity", "lm_eval", "facts", "fidelity")]
    perplexity = {role: measured("perplexity", "perplexity_bundled", role) for role in ("before", "after")}
    quality_verdicts = []
    if perplexity["before"] and perplexity["after"]:
        ratio = perplexity["after"]["value"] / perplexity["before"]["value"] - 1
        quality_verdicts.append(
            f"Perplexity on the bundled corpus went from {perplexity['before']['value']:.2f} to "
            f"{perplexity['after']['value']:.2f} ({ratio:+.2%})."
        )
    for row in quality:
        if row["evaluator"] == "lm_eval":
            quality_verdicts.append(
                f"lm-eval {row['axis_or_task']} {row['metric']}: {row['before']:.3f} before, {row['after']:.3f} after."
            )
    facts = _facts_verdict([row for row in comparisons if row["evaluator"] == "facts"])
    if facts:
        quality_verdicts.append(facts)
    fidelity = measured("fidelity", "embedding_cosine", "after")
    if fidelity:
        quality_verdicts.append(
            f"Embeddings of the pruned model keep a mean cosine similarity of {fidelity['value']:.4f} with the original."
        )
    return {"quality": quality, "perplexity": perplexity, "quality_verdicts": quality_verdicts, "fidelity": fidelity}


def layer_charts(store: Store, model_id: str, run_id: str, axes: list[str], items: Rows) -> Rows:
    """Per axis and component, the divergence per layer before and after pruning (or as audited)."""
    layer_rows = [
        row for row in items if row["evaluator"] == "bias_reprobe" and "_divergence_by_layer" in row["metric"]
    ]
    charts = []
    for axis in axes:
        for component in ("attention", "mlp"):
            series, intervals = {}, {}
            for role, label in (("before", "before pruning"), ("after", "after pruning")):
                by_metric: dict[str, dict[int, float]] = {}  # value, _low and _high per layer
                for r in layer_rows:
                    if (
                        r["axis_or_task"] == axis
                        and r["role"] == role
                        and r["metric"].startswith(f"{component}_divergence_by_layer")
                    ):
                        by_metric.setdefault(r["metric"].removeprefix(f"{component}_divergence_by_layer"), {})[
                            int(r["item"])
                        ] = r["value"]
                values, low, high = by_metric.get("", {}), by_metric.get("_low", {}), by_metric.get("_high", {})
                if values:
                    series[label] = [values.get(layer) for layer in range(max(values) + 1)]
                    intervals[label] = [
                        (low[layer], high[layer]) if layer in low and layer in high else None
                        for layer in range(max(values) + 1)
                    ]
            if not series:
                stored = store.rows("layer_scores", model=model_id, axis=axis, run_id=run_id)
                if stored and f"{component}_divergence" in stored[0]:
                    series["audited model"] = [
                        r[f"{component}_divergence"] for r in sorted(stored, key=lambda r: r["layer"])
                    ]
            if series:
                layers = len(next(iter(series.values())))
                charts.append(
                    {
                        "axis": axis,
                        "component": component,
                        "series": series,
                        "svg": bar_chart(
                            f"{axis}: {component} output divergence per layer",
                            [str(i) for i in range(layers)],
                            series,
                            "layer",
                            "mean |activation difference|",
                            intervals,
                        ),
                    }
                )
    return charts


def top_neurons(
    store: Store, model_id: str, run_id: str, axes: list[str], prune: dict[str, Any] | None, pruned_id: str | None
) -> dict[str, Rows]:
    """Each axis' most biased neurons, and whether pruning removed them."""
    kept: dict[int, set[int]] = {}
    if prune and pruned_id:
        for row in store.rows("neuron_maps", model=pruned_id, run_id=prune.get("run_id", "")):  # this run's map only
            if not row.get("zeroed"):
                kept.setdefault(row["layer"], set()).add(row["original_index"])
    found = {}
    for axis in axes:
        rows = store.rows("neuron_scores", model=model_id, axis=axis, run_id=run_id)
        rows = sorted((r for r in rows if is_number(r.get("bias"))), key=lambda r: -r["bias"])[:TOP_NEURONS]
        found[axis] = [
            {
                "layer": r["layer"],
                "neuron": r["neuron"],
                "bias": r["bias"],
                "scaled_bias": r.get("scaled_bias"),
                "q_value": r.get("q_value"),
                "importance": r.get("importance_ppm"),
                "hybrid": r.get("hybrid"),
                "hybrid_scaled": r.get("hybrid_scaled"),
                "status": ("pruned" if r["neuron"] not in kept.get(r["layer"], set()) else "kept") if kept else "-",
            }
            for r in rows
        ]
    return found


def overlap_heatmap(overlap_pairs: Rows, axes: list[str]) -> str | None:
    """The observed / expected overlap of top neurons between axes, as a heat map."""
    overlap_svg = None
    if overlap_pairs:
        index = {axis: i for i, axis in enumerate(axes)}
        ratio: list[list[float | None]] = [[None] * len(axes) for _ in axes]
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
        overlap_svg = heatmap(
            "Top-neuron overlap between axes (observed / expected; darker = more shared)",
            axes,
            ratio,
            notes,
            scale_label="observed / expected:",
        )
    return overlap_svg


def other_runs(store: Store, model_id: str, run_id: str, compare_run: str | None) -> dict[str, Any]:
    """Other models' complete audits, this model's neuron matchings, and the run compared with."""
    other_models = []
    for run in store.runs():
        if run.get("kind", "audit") == "audit" and run.get("status") == "complete" and run["model_id"] != model_id:
            rows = store.rows("axis_summary", model=run["model_id"], run_id=run["run_id"])
            other_models.append(
                {"model": run["model_id"], "run_id": run["run_id"], "axes": {r["axis"]: r["bias_index"] for r in rows}}
            )
    matched = []  # neuron matchings of this run's model with another model (fairaudit overlap --match)
    for run in store.runs():
        if run.get("kind") == "match" and run_id in (run.get("run_a"), run.get("run_b")):
            rows = store.rows("matched_overlap", run_id=run["run_id"])
            other = run["model_b"] if run.get("run_a") == run_id else run["model_id"]
            matched.append(
                {
                    "run_id": run["run_id"],
                    "other": other,
                    "model_a": run["model_id"],
                    "model_b": run["model_b"],
                    "words": run.get("words"),
                    "corpus": run.get("corpus"),
                    "top": run.get("top", 0),
                    "score": run.get("score"),
                    "self_recovery": run.get("self_match_recovery", float("nan")),
                    "rows": rows,
                }
            )
    compared = None
    if compare_run:
        other = store.read_run(compare_run)
        rows = store.rows("axis_summary", model=other["model_id"], run_id=compare_run)
        compared = {"run_id": compare_run, "model": other["model_id"], "axes": {r["axis"]: r for r in rows}}
    return {"other_models": other_models, "matched": matched, "compared": compared}


def causal_curve(prune: dict[str, Any] | None) -> str | None:
    """The held-out |output bias| kept at each budget against its perplexity cost (evaluation only)."""
    plan = (prune or {}).get("causal") or {}
    curve = plan.get("heldout_curve") or []
    curve_svg = None
    if curve:
        from fairaudit.svg import scatter

        shown = [row for row in curve if row["heldout_abs_bias_before"] > 0]
        curve_svg = scatter(
            "Held-out |output bias| kept at each budget, against the perplexity it costs",
            [
                (row["slice_perplexity_rise"], row["heldout_abs_bias_after"] / row["heldout_abs_bias_before"])
                for row in shown
            ],
            [f"{row['budget']:g}" for row in shown],
            [row["axis"] for row in shown],
            [row["budget"] == plan["chosen_budget"] for row in shown],
            "perplexity change on the corpus slice (relative)",
            "held-out |m| after / before",
            "Labels: budget (share of all units: MLP neurons and attention heads); ringed: the budget chosen on validation templates. "
            "Evaluation only: the held-out figures did not inform the choice.",
        )
    return curve_svg


def causal_views(store: Store, model_id: str, run_id: str, axes: list[str]) -> dict[str, Any]:
    """Per axis, where its output-level bias is carried (`causal_view`)."""
    return {
        axis: entry
        for axis in axes
        if (
            entry := causal_view(
                axis,
                *(
                    store.rows(table, model=model_id, axis=axis, run_id=run_id)
                    for table in ("layer_scores", "neuron_scores", "head_scores")
                ),
            )
        )
    }


def diagnosis_figures(store: Store, model_id: str, run_id: str, axes: list[str]) -> dict[str, Any]:
    """Per axis, its diagnosis figures (rebuilt from an allow-list) and emergence summary."""
    diagnosis = {}
    for axis in axes:
        figures = store.rows("diagnosis", model=model_id, axis=axis, run_id=run_id)
        onset = store.rows("emergence", model=model_id, axis=axis, run_id=run_id)
        if figures or onset:
            # the SVG was rendered at audit time by fairaudit.svg, but a store is a folder anyone can edit:
            # it is rebuilt from an allow-list of SVG elements and attributes, never trusted as markup
            diagnosis[axis] = {
                "figures": [
                    {"pair_id": f["pair_id"], "figure": f["figure"], "svg": safe_svg(f["svg"])} for f in figures
                ],
                "emergence": onset[0] if onset else None,
            }
    return diagnosis


def generation_pairs(store: Store, run_id: str) -> Rows:
    """Each generation prompt's pair of continuations, before and after pruning."""
    generation_rows = store.rows("generations", run_id=run_id)
    generations: dict[tuple, dict[str, Any]] = {}
    for row in generation_rows:
        entry = generations.setdefault(
            (row["axis_or_task"], row["pair_id"]), {"axis": row["axis_or_task"], "pair_id": row["pair_id"]}
        )
        entry[f"prompt_{row['side']}"] = row["prompt"]
        entry[f"group_{row['side']}"] = row["group"]
        entry[f"{row['role']}_{row['side']}"] = row["continuation"]
    return sorted(generations.values(), key=lambda g: (g["axis"], g["pair_id"]))
