"""Causal pruning on a real model: choose MLP neurons by their attributed share of each axis'
output-level bias, choose the budget on validation templates, and measure on held-out
templates against random neurons of the same number per layer (issue 23's benchmark).

Held-out discipline: the probe templates of each axis are split into a selection part and a
validation part (every fourth template, by template order); attribution sees the selection
part only, the budget is chosen on the validation part, and the held-out templates are used
once, for the final table. An axis whose output bias on the selection part has a template-
resampled 95% interval containing 0 gets no neuron ("never move an unbiased axis").

Usage: python benchmarks/causal_pruning.py [--model smollm2-135m] [--budgets 0.0005,0.001,0.002]
       [--rounds 2] [--seeds 5] [--gate templates|pairs|none] [--guard 0.003] [--json OUT]

The quality guard: before a candidate joins the selection, the real change of perplexity on a
held-aside corpus slice (256 tokens after the validation slice) when it alone is removed is
measured; a candidate above --guard is skipped.
Prints a table; CPU minutes on SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from fairaudit import attribution, metrics
from fairaudit.model import load_model
from fairaudit.prune import Selection, masked, random_selection
from fairaudit.suite import resolve_suite
from fairaudit_plugins.evaluators import corpus_path, window_nll

AXES = ("race", "gender", "religion", "nationality")


def split_probe(pairs):
    """(selection pairs, validation pairs): every fourth probe template is for validation."""
    templates = sorted({pair.template_id for pair in pairs}, key=[p.template_id for p in pairs].index)
    validation = set(templates[3::4])
    return [p for p in pairs if p.template_id not in validation], [p for p in pairs if p.template_id in validation]


def with_terms(pairs):
    return [pair for pair in pairs if metrics.output_bias_terms(pair)]


def selection_of(units: list[tuple[int, int]], widths: list[int]) -> Selection:
    per_layer = [sorted({unit for layer, unit in units if layer == index}) for index in range(len(widths))]
    return Selection([torch.tensor(chosen, dtype=torch.long) for chosen in per_layer], widths)


def perplexity(loaded, ids, selection=None) -> float:
    context = masked(loaded, selection) if selection is not None else torch.no_grad()
    with context:
        windows = window_nll(loaded, ids, 512, None, 4)
    return math.exp(sum(n for n, _ in windows) / sum(t for _, t in windows))


def mean_bias(loaded, pairs, selection=None) -> torch.Tensor:
    if selection is None:
        return attribution.output_bias_values(loaded, pairs)
    with masked(loaded, selection):
        return attribution.output_bias_values(loaded, pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--budgets", default="0.0005,0.001,0.002", help="shares of all MLP neurons")
    parser.add_argument("--rounds", type=int, default=2, help="re-score after each share of the largest budget")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-perplexity-rise", type=float, default=0.02)
    parser.add_argument("--guard", type=float, default=0.003,
                        help="skip a candidate whose removal alone raises perplexity on a held-aside corpus slice by more than this")
    parser.add_argument("--gate", choices=["templates", "pairs", "none"], default="templates",
                        help="an axis is pruned for when its selection-part interval (resampling templates, or pairs) excludes 0")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    started = time.time()
    loaded = load_model(args.model)
    widths = [loaded.adapter.mlp_weights(layer).down.shape[1] for layer in loaded.layers]
    total_neurons = sum(widths)
    budgets = sorted(float(b) for b in args.budgets.split(","))
    ids = loaded.tokenizer(corpus_path().read_text(encoding="utf-8"))["input_ids"]
    slice_ids = ids[: 4096]  # validation quality: the corpus' first 4096 tokens
    guard_ids = ids[4096 : 4096 + 256]  # the quality guard's held-aside slice
    guard = {"checked": 0, "rejected": 0, "largest_rejected_rise": 0.0}

    suites = {axis: resolve_suite(axis) for axis in AXES}
    selection_pairs, validation_pairs, heldout_pairs, active = {}, {}, {}, []
    for axis, suite in suites.items():
        chosen, validation = split_probe(with_terms(suite.pairs("probe")))
        selection_pairs[axis], validation_pairs[axis] = chosen, validation
        heldout_pairs[axis] = with_terms(suite.pairs("heldout"))
        values = attribution.output_bias_values(loaded, chosen)
        low, high = metrics.cluster_bootstrap_interval(values, [p.template_id for p in chosen])
        pair_low, pair_high = metrics.bootstrap_interval(values)
        print(f"{axis}: selection-part output bias {float(values.mean()):+.3f}, 95% CI resampling templates [{low:+.3f}, {high:+.3f}], "
              f"pairs [{pair_low:+.3f}, {pair_high:+.3f}] ({len(chosen)} pairs), validation {len(validation)} pairs, "
              f"held-out {len(heldout_pairs[axis])} pairs")
        gate = {"templates": (low, high), "pairs": (pair_low, pair_high), "none": (1.0, 1.0)}[args.gate]
        if gate[0] > 0 or gate[1] < 0:
            active.append(axis)
    print(f"axes with an output bias to remove (--gate {args.gate}): {', '.join(active) or 'none'}")
    if not active:
        print("no axis has an output bias whose interval excludes 0 on the selection part: nothing to prune")
        return

    # greedy, in rounds: each round re-scores with the neurons chosen so far masked
    largest = round(budgets[-1] * total_neurons)
    order: list[tuple[int, int]] = []
    for round_index in range(args.rounds):
        take = round(largest * (round_index + 1) / args.rounds) - len(order)
        if not active or take <= 0:
            break
        per_axis = max(1, take // len(active))
        with masked(loaded, selection_of(order, widths)):
            for axis in active:
                found = attribution.attribute(loaded, selection_pairs[axis])
                direction = 1.0 if float(found.output_bias.mean()) >= 0 else -1.0
                reduction = direction * -found.predicted_change("neuron").mean(dim=0)  # [layers, units]
                for layer, unit in order:
                    reduction[layer, unit] = -math.inf
                candidates = [divmod(flat, widths[0]) for flat in torch.argsort(reduction.flatten(), descending=True).tolist()]
                candidates = [unit for unit in candidates if reduction[unit] > 0 and unit not in order]
                picked = 0
                for start in range(0, len(candidates), 8):  # the guard: measured loss on a held-aside slice, 8 at a time
                    chunk = candidates[start : start + 8]
                    rises = torch.expm1(attribution.measured_loss_change(loaded, guard_ids, [attribution.Unit("neuron", *u) for u in chunk]))
                    guard["checked"] += len(chunk)
                    for unit, rise in zip(chunk, rises.tolist()):
                        if rise > args.guard:
                            guard["rejected"] += 1
                            guard["largest_rejected_rise"] = max(guard["largest_rejected_rise"], rise)
                        elif picked < per_axis:
                            order.append(unit)
                            picked += 1
                    if picked == per_axis:
                        break
        print(f"round {round_index + 1}: {len(order)} neurons chosen; quality guard so far: {guard['rejected']} of "
              f"{guard['checked']} candidates rejected (largest rise alone {guard['largest_rejected_rise']:+.1%})")

    # the budget, on validation templates and the corpus slice
    base_slice = perplexity(loaded, slice_ids)
    base_validation = {axis: float(mean_bias(loaded, validation_pairs[axis]).mean()) for axis in active}
    rows, chosen_budget = [], None
    for budget in budgets:
        units = order[: round(budget * total_neurons)]
        selection = selection_of(units, widths)
        slice_ppl = perplexity(loaded, slice_ids, selection)
        after = {axis: float(mean_bias(loaded, validation_pairs[axis], selection).mean()) for axis in active}
        kept = sum(abs(after[a]) for a in active) / max(sum(abs(base_validation[a]) for a in active), 1e-12)
        rows.append({"budget": budget, "neurons": len(units), "validation_abs_bias_kept": kept, "slice_perplexity_rise": slice_ppl / base_slice - 1})
        print(f"budget {budget:.4f} ({len(units)} neurons): validation |bias| kept {kept:.2f}, slice perplexity {slice_ppl / base_slice - 1:+.2%}")
        if slice_ppl / base_slice - 1 <= args.max_perplexity_rise and (chosen_budget is None or kept < chosen_budget[1]):
            chosen_budget = (budget, kept)
    if chosen_budget is None:
        print("no budget keeps the slice perplexity within the limit; nothing pruned")
        return
    budget = chosen_budget[0]
    units = order[: round(budget * total_neurons)]
    selection = selection_of(units, widths)
    counts = [len(chosen) for chosen in selection.pruned]
    print(f"chosen budget {budget} ({len(units)} neurons) on validation; held-out results:")

    table = []
    for axis in AXES:
        pairs = heldout_pairs[axis]
        templates = [p.template_id for p in pairs]
        before = mean_bias(loaded, pairs)
        after = mean_bias(loaded, pairs, selection)
        randoms = torch.stack([mean_bias(loaded, pairs, random_selection(counts, widths, seed)) for seed in range(args.seeds)])
        low_b, high_b = metrics.cluster_bootstrap_interval(before, templates)
        low_a, high_a = metrics.cluster_bootstrap_interval(after, templates)
        abs_before, abs_after = abs(float(before.mean())), abs(float(after.mean()))
        abs_random = float(randoms.mean(dim=1).abs().mean())
        row = {"axis": axis, "pairs": len(pairs), "templates": len(set(templates)), "before": float(before.mean()), "before_low": low_b,
               "before_high": high_b, "after": float(after.mean()), "after_low": low_a, "after_high": high_a,
               "random_after": float(randoms.mean()), "reduction": 1 - abs_after / abs_before if abs_before else math.nan,
               "random_reduction": 1 - abs_random / abs_before if abs_before else math.nan,
               "beats_random_p": metrics.beats_random_p(after, randoms), "selected_on": axis in active}
        table.append(row)
    full_before, full_after = perplexity(loaded, ids), perplexity(loaded, ids, selection)
    print(f"\n{'axis':<12} {'pairs':>5} {'before [95% CI, templates]':>30} {'after [95% CI]':>28} {'random':>8} "
          f"{'|m| reduction':>14} {'random':>8} {'p vs random':>12}")
    for row in table:
        print(f"{row['axis']:<12} {row['pairs']:>5} {row['before']:>+8.3f} [{row['before_low']:+.3f}, {row['before_high']:+.3f}]"
              f"{'' if row['selected_on'] else ' *':>3} {row['after']:>+8.3f} [{row['after_low']:+.3f}, {row['after_high']:+.3f}] "
              f"{row['random_after']:>+8.3f} {row['reduction']:>14.1%} {row['random_reduction']:>8.1%} {row['beats_random_p']:>12.4f}")
    print("(* no neuron was chosen for this axis: its selection-part interval contains 0)")
    print(f"perplexity on the bundled corpus: {full_before:.3f} -> {full_after:.3f} ({full_after / full_before - 1:+.2%}); "
          f"{len(units)} of {total_neurons} neurons ({len(units) / total_neurons:.3%}); {time.time() - started:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"model": args.model, "guard": guard, "budgets": rows, "chosen_budget": budget, "neurons": len(units), "heldout": table,
                       "perplexity_before": full_before, "perplexity_after": full_after, "active_axes": active}, handle, indent=1)


if __name__ == "__main__":
    main()
