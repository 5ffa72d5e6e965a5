"""The causal planner's erasure (`causal: {method: erase}`): fit each gated axis' directions,
choose each axis' strength on validation as a budget is chosen, then the best combination
(`fairaudit.repair.erasure` defines the directions and the fold)."""

from __future__ import annotations

import math

from fairaudit.repair.units import selection_of
from fairaudit.repair.validation import Before, said


def choose_strengths(loaded, found, parts: dict[str, tuple], before: Before, say) -> None:
    """The planner's erasure: fit the directions of `before`'s active axes on their selection pairs;
    for each axis, measure its directions alone at each of `strengths` from each of `erase_from`'s
    first layers against `before` (its validation templates and probe statements, every left-alone
    axis', the corpus slice and the validation facts), and take the (strength, first layer) a
    budget would be taken; then measure the chosen ones together and, where several axes were
    chosen, each axis' alone, all active axes in the objective, and keep the acceptable one that
    keeps the least |m|. Fills `found`: its budgets are rows per axis, strength and first layer,
    then the combinations ("together", "AXIS only"; the one kept marked `chosen`)."""
    from fairaudit.repair.erasure import check_writes, fit, folded

    params, active = before.params, before.active
    fitted = fit(loaded, {axis: parts[axis][0] for axis in active}, params.rank)
    check_writes(loaded, fitted)
    say(f"erasure: {fitted.rank} direction(s) fitted on the selection pairs of {', '.join(active)}")
    firsts = sorted({round(share * len(loaded.layers)) for share in params.erase_from})
    chosen: dict[str, tuple[float, int]] = {}
    for axis in active:
        alone, kept = before.narrowed([axis]), math.inf
        for first in firsts:
            for strength in params.strengths:
                row = alone.measure(folded(loaded, fitted.at({axis: (strength, first)})))
                found.budgets.append(
                    {"axis": axis, "budget": strength, "first_layer": first, "neurons": 0, "heads": 0, **row}
                )
                say(f"{axis} at {_strength(strength, first)}: {said(row)}")
                if alone.acceptable(row) and row["abs_bias_kept"] < kept:
                    chosen[axis], kept = (strength, first), row["abs_bias_kept"]
    if not chosen:
        return
    # the chosen strengths together, and (where several axes were chosen) each axis' alone, all
    # axes in the objective: directions interact, and one axis' may undo another's
    combinations = [chosen] + ([{axis: picked} for axis, picked in chosen.items()] if len(chosen) > 1 else [])
    best = None
    for combination in combinations:
        label = "together" if combination is chosen else f"{next(iter(combination))} only"
        row = {"axis": label, "budget": None, "neurons": 0, "heads": 0}
        row.update(before.measure(folded(loaded, fitted.at(combination))))
        found.budgets.append(row)
        say(f"{label} ({_chosen(combination)}): {said(row)}")
        if before.acceptable(row) and (best is None or row["abs_bias_kept"] < best[1]["abs_bias_kept"]):
            best = (combination, row)
    if best is not None:
        combination, row = best
        row["chosen"] = True
        widths = [loaded.adapter.mlp_weights(layer).down.shape[1] for layer in loaded.layers]
        found.selection = selection_of(
            [],
            widths,
            ranking=f"erasure: {fitted.rank} direction(s) of {', '.join(active)} fitted, those of "
            f"{_chosen(combination, 'at strength ')} removed from "
            + ("those layers' writes on" if any(first for _, first in combination.values()) else "every layer's writes")
            + " (chosen on validation templates"
            + (" and probe statements)" if "statements" in before.formats else ")"),
        )
        found.selection.erasure = fitted.at(combination)


def _strength(strength: float, first: int, word: str = "strength ") -> str:
    """'strength 0.75' (every layer) or 'strength 0.75 from layer 10'."""
    return f"{word}{strength:g}" + (f" from layer {first}" if first else "")


def _chosen(combination: dict[str, tuple[float, int]], word: str = "") -> str:
    return ", ".join(f"{axis} {_strength(strength, first, word)}" for axis, (strength, first) in combination.items())


def the_better(neurons, erased, say):
    """Of two plans from the same gates (`method: compare`), the one whose chosen edit keeps less
    validation |m| of the gated axes (`abs_bias_kept`: templates and probe statements together); both
    passed the same perplexity and fact limits and collateral check.
    The winner records both methods' figures (`compared`)."""

    def chosen(found) -> dict | None:
        if found.selection is None:
            return None
        row = next(
            row
            for row in found.budgets
            if row.get("chosen") or (found.method == "neurons" and row["budget"] == found.chosen_budget)
        )
        shown = ("abs_bias_kept", "validation_abs_bias_kept", "slice_perplexity_rise", "fact_accuracy_change")
        return {key: row[key] for key in shown if key in row}

    figures = {"neurons": chosen(neurons), "erase": chosen(erased)}
    kept = {method: row["abs_bias_kept"] if row else math.inf for method, row in figures.items()}
    winner = erased if kept["erase"] < kept["neurons"] else neurons
    winner.compared = {
        **figures,
        "chosen": winner.method if winner.selection is not None else None,
        **({"erase_refused": erased.refused} if erased.refused else {}),
    }
    say(
        "compared on validation: "
        + "; ".join(
            f"{method} keeps {row['abs_bias_kept']:.2f} of |m| at {row['slice_perplexity_rise']:+.2%} perplexity"
            + (f", validation facts {row['fact_accuracy_change']:+.3f}" if "fact_accuracy_change" in row else "")
            if row
            else f"{method} {'was refused' if method == 'erase' and erased.refused else 'found nothing acceptable'}"
            for method, row in figures.items()
        )
        + (f": {winner.method} chosen" if winner.selection is not None else "")
    )
    return winner
