"""Causal pruning on a real model: choose MLP neurons and attention heads by their attributed
share of each axis' output-level bias (`fairaudit.repair.causal.plan`, what `fairaudit prune --causal`
runs), and measure the chosen selection on held-out templates against random neurons and heads of
the same number per layer (issue 23's benchmark).

Held-out discipline: `plan` sees the probe templates only (a selection part for attribution, every
fourth template for choosing the budget); the held-out templates are used once, here, for the
final table. An axis whose selection-part output bias has a 95% interval (templates resampled, by
default) containing 0 gets no neuron.

Usage: python benchmarks/causal_pruning.py [--model smollm2-135m] [--budgets 0.0005,0.001,0.002]
       [--rounds 2] [--seeds 5] [--gate templates|pairs|none] [--guard 0.003] [--heads]
       [--crows crows_pairs_anonymized.csv] [--dtype bfloat16 [--plan-in model]] [--json OUT]
       [--method erase [--rank 1] [--strengths 0.25,0.5,0.75,1.0] [--erase-from 0,0.33]] [--questions] [--axes race,religion]

--crows: also the CrowS-Pairs categories that match the axes (race-color, gender, religion,
nationality), imported from the file and evaluated before and after beside the suites' own
figures: evidence, not a tuning set (the planner never reads them).
Prints a table; CPU minutes on SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from audit_stages import machine  # this folder: the CPU model and cores

from fairaudit.inputs.model import ModelSpec, load_model
from fairaudit.inputs.suite import resolve_suite
from fairaudit.measurement import metrics
from fairaudit.measurement.attribution import head_count, output_bias_values
from fairaudit.repair import erasure
from fairaudit.repair.causal import CausalParams, plan
from fairaudit.repair.prune import masked
from fairaudit.repair.units import random_selection
from fairaudit.repair.validation import corpus_perplexity
from fairaudit.resources import corpus_path

AXES = ("race", "gender", "religion", "nationality")


CROWS_CATEGORIES = {"race-color": "race", "gender": "gender", "religion": "religion", "nationality": "nationality"}


def held_out_row(
    loaded, name: str, pairs: list, selection, randoms: list, selected_on: bool, values=None, templates=None
) -> dict:
    """An evaluation set's output bias m before and after `selection`, against the `randoms`:
    means with 95% intervals resampling templates (a sentence pair is its own template), |m|
    reductions, the permutation p-value, and the share of pairs with m > 0. `values(loaded,
    pairs)`: another per-item quantity (default m); `templates`: the items' clusters."""
    templates = templates or [pair.template_id or pair.pair_id for pair in pairs]
    values = values or output_bias_values

    def measured(chosen=None):
        if chosen is None:
            return values(loaded, pairs)
        with masked(loaded, chosen):
            return values(loaded, pairs)

    before, after = measured(), measured(selection)
    random = torch.stack([measured(chosen) for chosen in randoms])
    low_b, high_b = metrics.cluster_bootstrap_interval(before, templates)
    low_a, high_a = metrics.cluster_bootstrap_interval(after, templates)
    abs_before, abs_after = abs(float(before.mean())), abs(float(after.mean()))
    abs_random = float(random.mean(dim=1).abs().mean())
    return {
        "axis": name,
        "pairs": len(pairs),
        "templates": len(set(templates)),
        "before": float(before.mean()),
        "before_low": low_b,
        "before_high": high_b,
        "after": float(after.mean()),
        "after_low": low_a,
        "after_high": high_a,
        "random_after": float(random.mean()),
        "reduction": 1 - abs_after / abs_before if abs_before else math.nan,
        "random_reduction": 1 - abs_random / abs_before if abs_before else math.nan,
        "beats_random_p": metrics.beats_random_p(after, random),
        "selected_on": selected_on,
        "pct_before": float((before > 0).double().mean()),
        "pct_after": float((after > 0).double().mean()),
    }


def table_lines(table: list[dict], crows: list[dict]) -> list[str]:
    """The printed held-out table (and the CrowS-Pairs rows under it)."""
    width = max(len(row["axis"]) for row in table + crows)
    lines = [
        f"{'axis':<{width}} {'pairs':>5} {'before [95% CI, templates]':>30} {'after [95% CI]':>28} {'random':>8} "
        f"{'|m| reduction':>14} {'random':>8} {'p vs random':>12}",
        " ".join("-" * n for n in (width, 5, 30, 28, 8, 14, 8, 12)),
    ]
    for row in table + crows:
        lines.append(
            f"{row['axis']:<{width}} {row['pairs']:>5} {row['before']:>+8.3f} [{row['before_low']:+.3f}, {row['before_high']:+.3f}]"
            f"{'' if row['selected_on'] else ' *':>3} {row['after']:>+8.3f} [{row['after_low']:+.3f}, {row['after_high']:+.3f}] "
            f"{row['random_after']:>+8.3f} {row['reduction']:>14.1%} {row['random_reduction']:>8.1%} {row['beats_random_p']:>12.4f}"
            + (f"   share with m > 0: {row['pct_before']:.3f} -> {row['pct_after']:.3f}" if row in crows else "")
        )
    lines.append("(* nothing was chosen for this axis: its selection-part interval contains 0)")
    lines.append(
        "(statements: the axis' held-out statement pairs, a format the selection never reads and the budget reads only "
        "probe statements of; intervals resample statements)"
    )
    if any(row["axis"].startswith("questions:") for row in table):
        lines.append(
            "(questions: the ambiguous questions of the axis, a third format; m = s_AMB, the mean of +1 (the "
            "stereotyped person), -1 (the other), 0 (unknown); intervals resample scenarios)"
        )
    if crows:
        lines.append(
            "(crows: the CrowS-Pairs category of the axis; m = log p(more stereotyping) - log p(less), intervals resample pairs)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budgets", default="0.0005,0.001,0.002", help="shares of all units (MLP neurons and heads)")
    parser.add_argument("--heads", action="store_true", help="attention heads are candidates beside MLP neurons")
    parser.add_argument("--crows", default=None, help="a CrowS-Pairs CSV: its matching categories are evaluated too")
    parser.add_argument("--rounds", type=int, default=2, help="re-score after each share of the largest budget")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-perplexity-rise", type=float, default=0.02)
    parser.add_argument(
        "--guard",
        type=float,
        default=0.003,
        help="skip a candidate whose removal alone raises perplexity on a held-aside corpus slice by more than this",
    )
    parser.add_argument(
        "--gate",
        choices=["templates", "pairs", "none"],
        default="templates",
        help="an axis is pruned for when its selection-part interval (resampling templates, or pairs) excludes 0",
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument(
        "--plan-in",
        choices=["float32", "model"],
        default="float32",
        help="model: plan a bfloat16 or float16 model in its own dtype instead of casting it up",
    )
    parser.add_argument(
        "--method",
        choices=["neurons", "erase"],
        default="neurons",
        help="erase: fold the gated axes' counterfactual directions out of every layer's writes "
        "(against random directions of the same rank and strength)",
    )
    parser.add_argument("--rank", type=int, default=1, help="--method erase: directions per gated axis")
    parser.add_argument(
        "--strengths", default="0.25,0.5,0.75,1.0", help="--method erase: shares of the directions removed"
    )
    parser.add_argument(
        "--erase-from", default="0,0.33", help="--method erase: where the fold may start, as shares of the depth"
    )
    parser.add_argument(
        "--questions",
        action="store_true",
        help="also the ambiguous questions: s_AMB (the mean of +1 biased, -1 other, 0 unknown answers), "
        "intervals resampling scenarios",
    )
    parser.add_argument("--axes", default=",".join(AXES), help="built-in suites, comma-separated")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    started = time.time()
    print(f"machine: {machine()}, torch {torch.__version__}")
    loaded = load_model(ModelSpec(id=args.model, dtype=args.dtype))
    ids = loaded.tokenizer(corpus_path().read_text(encoding="utf-8"))["input_ids"]
    suites = [resolve_suite(axis) for axis in args.axes.split(",")]
    params = CausalParams(
        budgets=[float(b) for b in args.budgets.split(",")],
        rounds=args.rounds,
        guard=args.guard,
        max_perplexity_rise=args.max_perplexity_rise,
        gate=args.gate,
        heads=args.heads,
        float32=args.plan_in == "float32",
        method=args.method,
        rank=args.rank,
        strengths=[float(s) for s in args.strengths.split(",")],
        erase_from=[float(s) for s in args.erase_from.split(",")],
    )
    found = plan(loaded, suites, params, ids, say=print)
    for gate in found.gates:
        print(
            f"{gate.axis}: selection-part output bias {gate.bias:+.3f}, 95% CI resampling templates [{gate.template_low:+.3f}, "
            f"{gate.template_high:+.3f}], pairs [{gate.pair_low:+.3f}, {gate.pair_high:+.3f}] ({gate.selection_pairs} pairs), "
            f"validation {gate.validation_pairs} pairs; detectable |m| {gate.detectable:.2f}"
        )
    if args.method == "neurons":
        print(
            f"quality guard: {found.guard['rejected']} of {found.guard['checked']} candidates rejected "
            f"(largest rise alone {found.guard['largest_rejected_rise']:+.1%})"
        )
    if found.selection is None:
        print(
            "nothing to prune: no axis is gated in, or no budget reduced the validation bias within the perplexity limit"
        )
        return
    selection, widths = found.selection, found.selection.widths
    counts = [len(chosen) for chosen in selection.pruned]
    head_counts = [len(chosen) for chosen in selection.heads_per_layer()]
    neurons, heads = sum(counts), sum(head_counts)
    randoms = [random_selection(counts, widths, seed, head_counts, head_count(loaded)) for seed in range(args.seeds)]
    if selection.erasure is not None:
        print(f"chosen on validation: {selection.ranking}; held-out results:")
        for seed, chosen in enumerate(randoms):
            chosen.erasure = erasure.random_like(selection.erasure, seed)
    else:
        print(
            f"chosen budget {found.chosen_budget} ({neurons} neurons, {heads} heads: {selection.heads}) on validation; held-out results:"
        )
    active = {gate.axis for gate in found.gates if gate.active}
    table = [
        held_out_row(
            loaded,
            suite.axis,
            [pair for pair in suite.pairs("heldout") if metrics.output_bias_terms(pair)],
            selection,
            randoms,
            suite.axis in active,
        )
        for suite in suites
    ]
    table += [  # the held-out statements (the budget is chosen on the probe ones)
        held_out_row(
            loaded,
            f"statements:{suite.axis}",
            suite.statement_pairs("heldout"),
            selection,
            randoms,
            suite.axis in active,
        )
        for suite in suites
        if len(suite.statement_pairs("heldout")) > 1
    ]
    if args.questions:
        from fairaudit_plugins.evaluators import question_values

        for suite in suites:
            ambiguous = [q for q in suite.all_questions() if q.condition == "ambiguous"]
            table.append(
                held_out_row(
                    loaded,
                    f"questions:{suite.axis}",
                    ambiguous,
                    selection,
                    randoms,
                    suite.axis in active,
                    values=lambda model, questions, axis=suite.axis: question_values(model, axis, questions),
                    templates=[q.id.split(".")[0] for q in ambiguous],
                )
            )
    crows = []
    if args.crows:
        from fairaudit.plugins import registry

        importer = registry().get("importer", "crows-pairs")
        imported = {suite.axis: suite for suite in importer.import_file(Path(args.crows), importer.Params()).suites}
        crows = [
            held_out_row(
                loaded, f"crows:{category}", imported[category].pairs(None), selection, randoms, axis in active
            )
            for category, axis in CROWS_CATEGORIES.items()
            if category in imported
        ]
    full_before, full_after = corpus_perplexity(loaded, ids), corpus_perplexity(loaded, ids, selection)
    print("\n" + "\n".join(table_lines(table, crows)))
    edited = (
        f"{selection.erasure.rank} direction{'s' if selection.erasure.rank > 1 else ''} erased"
        if selection.erasure is not None
        else f"{neurons} neurons and {heads} heads of {found.total} units ({(neurons + heads) / found.total:.3%})"
    )
    print(
        f"perplexity on the bundled corpus: {full_before:.3f} -> {full_after:.3f} ({full_after / full_before - 1:+.2%}); "
        f"{edited}; {time.time() - started:.0f} s"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "model": args.model,
                    **found.as_dict(),
                    "heldout": table,
                    "crows_pairs": crows,
                    "perplexity_before": full_before,
                    "perplexity_after": full_after,
                },
                handle,
                indent=1,
            )


if __name__ == "__main__":
    main()
