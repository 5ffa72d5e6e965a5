"""Causal selection: choose MLP neurons and attention heads by their effect on each axis'
output-level bias, in greedy rounds, behind a measured quality guard, with the budget chosen on
validation templates.

Held-out discipline: the probe templates of each suite are split into a selection part and a
validation part (every `validation_every`-th template, in declaration order). Attribution sees
the selection part only; the budget is chosen on the validation part; held-out templates and the
sentence pairs of imported data sets (CrowS-Pairs, StereoSet) are never read here (they are for
evaluation: `random_baseline`, `benchmarks/causal_pruning.py`).

The steps (docs/attribution.md has the definitions and the SmolLM2 results):

1. gate: an axis is selected for only when its selection-part output bias m has a 95% interval
   (templates resampled, by default) that excludes 0 ("never move an unbiased axis");
2. rounds: each round attributes m of every gated axis with the units chosen so far masked, and
   takes the largest estimated reductions of |m|, neurons and heads ranked together (attribution is
   a local estimate: re-scoring after each round corrects it);
3. quality guard: before a candidate joins, the real change of perplexity on a held-aside corpus
   slice when it alone is removed is measured; a candidate above `guard` is skipped;
4. budget: of `budgets` (shares of all units: MLP neurons, and heads when they are candidates; each a
   prefix of the greedy order; a head counts as one unit), the one with
   the smallest validation |m| (summed over gated axes, as a share of its value before) whose
   perplexity on a corpus slice rises at most `max_perplexity_rise`, whose accuracy on the bundled
   validation facts (never the facts the `facts` evaluator measures) falls at most `max_fact_drop`,
   and which moves no axis left alone away from zero (`collateral`: the paired 95% interval,
   templates resampled, of |m after| - |m before| on that axis' validation templates lies above 0).
   The unedited model's figures are measured once (`fairaudit.repair.validation.Before`) for every
   candidate of either method.

With `method: erase` the steps after the gate are `fairaudit.repair.strengths.choose_strengths`:
each gated axis' counterfactual direction, folded out of every layer's writes at a strength chosen
as a budget is. `method: compare` plans both from the same gates and keeps the one whose choice
keeps less validation |m| (both within the same perplexity and fact limits and collateral check).

A model loaded in bfloat16 or float16 is planned in float32 (its weights cast up, then back:
exact), because the guard's 0.3% is below bfloat16's rounding noise: planned in bfloat16,
SmolLM2-135M's guard rejects twice the candidates and no budget stays within the perplexity
limit (docs/attribution.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from fairaudit.compute import accounted
from fairaudit.config import CausalParams
from fairaudit.lazy import torch
from fairaudit.repair.units import selection_of
from fairaudit.repair.validation import Before, guard_facts, mean_output_bias, said

HALF = ("bfloat16", "float16")

GUARD_TOKENS = 256  # the guard's held-aside slice, after the validation slice
VALIDATION_TOKENS = 4096  # the corpus slice whose perplexity bounds the budget


@dataclass
class AxisGate:
    """An axis' output bias on the selection part, and whether it is selected for."""

    axis: str
    bias: float
    template_low: float
    template_high: float
    pair_low: float
    pair_high: float
    selection_pairs: int
    validation_pairs: int
    active: bool
    detectable: float = math.nan  # the smallest |m| the gate would select for with 80% power (`detectable_effect`)


@dataclass
class CausalPlan:
    """What `plan` chose and why: the gates, the greedy order, the guard's figures, each
    budget's validation figures, and the chosen selection (None: nothing to prune)."""

    gates: list[AxisGate]
    order: list[Any]  # the greedy order of `fairaudit.measurement.attribution.Unit`s: each budget takes a prefix
    guard: dict[str, float]
    total: int  # candidate units of the model: MLP neurons, and heads when they are candidates
    budgets: list[dict[str, Any]] = field(default_factory=list)
    chosen_budget: float | None = None
    selection: Any = None  # fairaudit.repair.prune.Selection
    method: str = "neurons"  # or "erase": budgets are rows per axis and strength, the selection carries the erasure
    compared: dict[str, Any] | None = None  # method compare: each method's chosen validation figures, and the winner
    refused: str | None = None  # method compare: why erasure was refused for this architecture (neurons only)
    measured_in: str = "float32"  # the dtype the plan's forward passes ran in
    # per step (gate, attribution, guard, budget): wall seconds and token positions (`fairaudit.compute`)
    compute: dict[str, dict[str, float]] = field(default_factory=dict)
    # per step after the gate: the token positions it was expected to forward (`planned_tokens`)
    planned: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "gates": [gate.__dict__ for gate in self.gates],
            "guard": self.guard,
            "budgets": self.budgets,
            "chosen_budget": self.chosen_budget,
            "method": self.method,
            **(self._erasure() if self.selection and self.selection.erasure else {}),
            **({"compared": self.compared} if self.compared else {}),
            "measured_in": self.measured_in,
            "compute": self.compute,
            "planned": self.planned,
            **_kinds(self.order_at(self.chosen_budget) if self.chosen_budget else []),
        }

    def _erasure(self) -> dict[str, Any]:
        erasure = self.selection.erasure
        return {
            "erasure": erasure.as_dict(),
            "chosen_strengths": dict(zip(erasure.axes, erasure.strengths)),
            "erased_from": dict(zip(erasure.axes, erasure.first_layers)),
        }

    def order_at(self, budget: float) -> list:
        return self.order[: round(budget * self.total)] if budget else []


def split_probe(pairs: list, every: int = 4) -> tuple[list, list]:
    """(selection pairs, validation pairs): every `every`-th probe template (in declaration
    order) is for validation."""
    templates = list(dict.fromkeys(pair.template_id for pair in pairs))
    validation = set(templates[every - 1 :: every])
    return [p for p in pairs if p.template_id not in validation], [p for p in pairs if p.template_id in validation]


def _kinds(units: list) -> dict[str, int]:
    return {
        "neurons": sum(unit.kind == "neuron" for unit in units),
        "heads": sum(unit.kind == "head" for unit in units),
    }


def _counted(units: list) -> str:
    """'23 neurons' or '21 neurons and 2 heads'."""
    count = _kinds(units)
    return f"{count['neurons']} neurons" + (f" and {count['heads']} heads" if count["heads"] else "")


@contextmanager
def measured_in(loaded, float32: bool, say: Callable[[str], None] = lambda text: None):
    """Yield the dtype the planner's forward passes run in: float32 for a bfloat16 or float16 model
    when `float32` (its parameters cast up, and back on exit: bfloat16 -> float32 -> bfloat16 is
    exact) unless it is offloaded (then it stays as it is); else the model's own dtype."""
    from fairaudit.inputs.model import is_offloaded

    dtype = next(loaded.model.parameters()).dtype
    name = str(dtype).removeprefix("torch.")
    if not float32 or name not in HALF or is_offloaded(loaded.model):
        if name in HALF:
            say(f"planning in {name}: its rounding noise is above the quality guard's threshold")
        yield name
        return
    try:
        loaded.model.float()
        say(f"planning in float32: the {name} weights are cast up, and back after")
        yield "float32"
    except torch.cuda.OutOfMemoryError:
        from fairaudit.errors import ModelError

        raise ModelError(
            f"planning in float32 ran out of GPU memory (the {name} weights are cast up for the causal planner, "
            f"which doubles their memory). Plan in {name} instead: 'prune --causal --plan-in model', or "
            f"'causal: {{float32: false}}' in a run config (its quality guard is then stricter: docs/attribution.md)."
        ) from None
    finally:
        loaded.model.to(dtype)


def plan(
    loaded, suites: list, params: CausalParams, corpus_ids: list[int], say: Callable[[str], None] = lambda text: None
) -> CausalPlan:
    """Choose neurons and heads of `loaded` for the axes of `suites` (probe templates only), as the
    module docstring describes. `corpus_ids`: the tokenized bundled corpus (validation and guard slices)."""
    with measured_in(loaded, params.float32, say) as dtype:
        found = _plan(loaded, suites, params, corpus_ids, say)
    found.measured_in = dtype
    return found


def _plan(loaded, suites: list, params: CausalParams, corpus_ids: list[int], say: Callable[[str], None]) -> CausalPlan:
    from fairaudit.measurement import attribution
    from fairaudit.repair.prune import masked

    widths = [loaded.adapter.mlp_weights(layer).down.shape[1] for layer in loaded.layers]
    slice_ids, guard_ids = (
        corpus_ids[:VALIDATION_TOKENS],
        corpus_ids[VALIDATION_TOKENS : VALIDATION_TOKENS + GUARD_TOKENS],
    )
    compute: dict[str, dict[str, float]] = {}
    with accounted(compute, "gate"):
        gates, parts = _gates(loaded, suites, params, say)
    active = [gate.axis for gate in gates if gate.active]
    heads = attribution.head_count(loaded) * len(widths) if params.heads else 0
    found = CausalPlan(
        gates=gates,
        order=[],
        guard={"checked": 0, "rejected": 0, "largest_rejected_rise": 0.0},
        total=sum(widths) + heads,
        compute=compute,
        method=params.method,
    )
    if not active:
        return found
    # a format the selection never reads, for the choice of budget or strength (held-out statements are for evaluation)
    statements = {suite.axis: suite.statement_pairs("probe") for suite in suites} if params.statements else None
    with accounted(found.compute, "validation"):  # the unedited model's figures, for every candidate of both methods
        validation = {axis: pairs for axis, (_, pairs) in parts.items()}
        before = Before(loaded, validation, active, slice_ids, params, statements)
    if params.method in ("erase", "compare"):
        from fairaudit.errors import ModelError
        from fairaudit.repair.strengths import choose_strengths, the_better

        erased = replace(found, order=[], guard=dict(found.guard), budgets=[], method="erase")
        try:
            with accounted(found.compute, "erasure"):
                choose_strengths(loaded, erased, parts, before, say)
        except ModelError as exc:  # an architecture erasure cannot fold into: compare has neurons left
            if params.method == "erase":
                raise
            erased.refused = str(exc)
            say(f"erasure refused, neurons only: {exc}")
        if params.method == "erase":
            return erased
    found.method = "neurons"
    found.planned = planned_tokens(loaded, parts, statements, active, found.total, params)
    _say_expected(found, say)

    largest = round(params.budgets[-1] * found.total)
    for round_index in range(params.rounds):
        take = round(largest * (round_index + 1) / params.rounds) - len(found.order)
        if take <= 0:
            continue
        per_axis = max(1, take // len(active))
        with masked(loaded, selection_of(found.order, widths)):
            for axis in active:
                _choose(loaded, parts[axis][0], widths, per_axis, found, guard_ids, params)
        say(
            f"round {round_index + 1}: {_counted(found.order)} chosen; the quality guard rejected {found.guard['rejected']} of "
            f"{found.guard['checked']} candidates"
        )
    with accounted(found.compute, "budget"):
        _choose_budget(loaded, found, before, widths, say)
    return the_better(found, erased, say) if params.method == "compare" else found


def planned_tokens(
    loaded: Any,
    parts: dict[str, tuple[list[Any], list[Any]]],
    statements: dict[str, list[Any]] | None,
    active: list[str],
    total: int,
    params: CausalParams,
) -> dict[str, dict[str, int]]:
    """Step -> {tokens, grad_tokens}: the token positions the planner's steps after the gate will
    forward, at the least: padding is not counted, nor the extra candidates the quality guard
    measures for each it rejects. For the time estimate `plan` says; the run record keeps it
    beside what was forwarded (`compute`)."""
    from fairaudit.measurement import metrics
    from fairaudit.measurement.evaluate import encode_request, planned_positions
    from fairaudit.measurement.facts import fact_requests

    def requests(pairs: list[Any]) -> list[tuple[str, str]]:
        return [
            (context, continuation) for pair in pairs for context, continuation, _ in metrics.output_bias_terms(pair)
        ]

    def whole(pairs: list[Any]) -> int:  # attribution forwards each distinct run whole
        return sum(
            len(c) + len(t) for c, t in (encode_request(loaded.tokenizer, *r) for r in dict.fromkeys(requests(pairs)))
        )

    attribution, guard, chosen, largest = 0, 0, 0, round(params.budgets[-1] * total)
    for round_index in range(params.rounds):
        take = round(largest * (round_index + 1) / params.rounds) - chosen
        if take <= 0:
            continue
        per_axis = max(1, take // len(active))
        chosen += per_axis * len(active)
        attribution += sum(whole(parts[axis][0]) for axis in active)
        # per axis: the unmasked window once, then candidates 8 at a time, each its own copy of the window
        guard += len(active) * (1 + 8 * math.ceil(per_axis / 8)) * GUARD_TOKENS
    watched = [axis for axis in parts if axis in active or params.collateral]
    measured = (
        VALIDATION_TOKENS
        + planned_positions(loaded.tokenizer, fact_requests(guard_facts(params)))
        + sum(
            planned_positions(loaded.tokenizer, requests(parts[axis][1] + (statements or {}).get(axis, [])))
            for axis in watched
        )
    )
    return {
        "attribution": {"tokens": attribution, "grad_tokens": attribution},
        "guard": {"tokens": guard, "grad_tokens": 0},
        "budget": {"tokens": len(params.budgets) * measured, "grad_tokens": 0},
    }


def _say_expected(found: CausalPlan, say: Callable[[str], None]) -> None:
    """Say about how long the planner's remaining steps take: their planned token positions (one
    with gradients counts three times: forward and backward) at the throughput the gate measured."""
    gate = found.compute.get("gate", {})
    rate = (gate.get("tokens", 0) + 2 * gate.get("grad_tokens", 0)) / gate["wall_s"] if gate.get("wall_s") else 0
    cost = sum(step["tokens"] + 2 * step["grad_tokens"] for step in found.planned.values())
    if rate > 0 and cost:
        seconds = cost / rate
        took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
        say(
            f"attribution, quality guard and budgets: about {took} "
            f"({cost:,} token positions at the {rate:,.0f} per second the gate measured; each candidate the guard "
            "rejects adds to it)"
        )


def _gates(
    loaded: Any, suites: list[Any], params: CausalParams, say: Callable[[str], None]
) -> tuple[list[AxisGate], dict[str, tuple[list[Any], list[Any]]]]:
    """Each axis' gate (its selection-part output bias and interval), and its (selection,
    validation) probe pairs."""
    from fairaudit.measurement import attribution, metrics

    gates, parts = [], {}
    for suite in suites:
        # templates only: literal sentence pairs come from imported data sets, which are for evaluation only
        templates = [p for p in suite.pairs("probe") if p.kind == "template" and metrics.output_bias_terms(p)]
        chosen, validation = split_probe(templates, params.validation_every)
        if not chosen or not validation:
            gates.append(
                AxisGate(
                    suite.axis, math.nan, math.nan, math.nan, math.nan, math.nan, len(chosen), len(validation), False
                )
            )
            continue
        values = attribution.output_bias_values(loaded, chosen)
        low, high = metrics.cluster_bootstrap_interval(values, [p.template_id for p in chosen])
        pair_low, pair_high = metrics.bootstrap_interval(values)
        bounds = {"templates": (low, high), "pairs": (pair_low, pair_high), "none": (1.0, 1.0)}[params.gate]
        active = bounds[0] > 0 or bounds[1] < 0
        detectable = metrics.detectable_effect(*bounds) if params.gate != "none" else math.nan
        gates.append(
            AxisGate(
                suite.axis,
                float(values.mean()),
                low,
                high,
                pair_low,
                pair_high,
                len(chosen),
                len(validation),
                active,
                detectable,
            )
        )
        parts[suite.axis] = (chosen, validation)
        say(
            f"{suite.axis}: selection-part output bias {float(values.mean()):+.3f}, 95% CI ({params.gate} resampled) "
            f"[{bounds[0]:+.3f}, {bounds[1]:+.3f}]: {'selected for' if active else 'left alone'}"
            + (f" (the smallest bias these templates detect with 80% power: {detectable:.3f})" if not active else "")
        )
    return gates, parts


def _choose_budget(
    loaded: Any, found: CausalPlan, before: Before, widths: list[int], say: Callable[[str], None]
) -> None:
    """Measure every budget (a prefix of the greedy order) on `before`'s validation pairs of every
    axis and the corpus slice; choose the one that keeps the least |m| of the active axes (validation
    templates and probe statements together) within the perplexity limit, moving no other axis away
    from zero (with `collateral`)."""
    from fairaudit.repair.prune import masked

    params, active, best = before.params, before.active, None
    for budget in params.budgets:
        units = found.order_at(budget)
        row = before.measure(masked(loaded, selection_of(units, widths)))
        found.budgets.append({"budget": budget, **_kinds(units), **row})
        say(f"budget {budget:g} ({_counted(units)}): {said(row)}")
        if before.acceptable(row) and (best is None or row["abs_bias_kept"] < best[1]):
            best = (budget, row["abs_bias_kept"])
    if best is not None:
        found.chosen_budget = best[0]
        found.selection = selection_of(
            found.order_at(best[0]),
            widths,
            ranking=f"causal selection: output attribution of {', '.join(active)} "
            f"({'neurons and heads' if params.heads else 'neurons'}) in {params.rounds} "
            f"round(s), quality guard {params.guard:g}, budget {best[0]:g} chosen on validation templates"
            + (" and probe statements" if "statements" in before.formats else ""),
        )


def heldout_curve(loaded, suites: list, found: CausalPlan) -> list[dict[str, Any]]:
    """For each budget `plan` considered: every axis' |mean output bias| on its held-out
    templates with that budget's neurons masked, beside the budget's validation figures. For the
    curve a reader compares budgets on; it is computed after the choice and never feeds it."""
    rows = []
    heldout = {suite.axis: [pair for pair in suite.pairs("heldout") if pair.continuations] for suite in suites}
    before = {axis: abs(mean_output_bias(loaded, pairs)) for axis, pairs in heldout.items() if pairs}
    widths = [loaded.adapter.mlp_weights(layer).down.shape[1] for layer in loaded.layers]
    for budget in found.budgets:
        selection = selection_of(found.order_at(budget["budget"]), widths)
        for axis in before:
            after = abs(mean_output_bias(loaded, heldout[axis], selection))
            rows.append(
                {
                    "budget": budget["budget"],
                    "neurons": budget["neurons"],
                    "heads": budget["heads"],
                    "axis": axis,
                    "heldout_abs_bias_before": before[axis],
                    "heldout_abs_bias_after": after,
                    "slice_perplexity_rise": budget["slice_perplexity_rise"],
                }
            )
    return rows


def _choose(
    loaded, pairs: list, widths: list[int], count: int, found: CausalPlan, guard_ids: list[int], params: CausalParams
) -> None:
    """Add up to `count` units to `found.order`: the largest estimated reductions of |m| on `pairs`
    (neurons, and heads when they are candidates, ranked together) that pass the quality guard
    (8 candidates measured at a time)."""
    from fairaudit.measurement import attribution

    with accounted(found.compute, "attribution"):
        estimate = attribution.attribute(loaded, pairs)
    direction = 1.0 if float(estimate.output_bias.mean()) >= 0 else -1.0
    taken = set(found.order)
    scored = []
    for kind in ("neuron", "head") if params.heads else ("neuron",):
        reduction = direction * -estimate.predicted_change(kind).mean(dim=0)  # [layers, units]
        positive = torch.nonzero(reduction > 0).tolist()
        scored += [
            (float(reduction[layer, index]), attribution.Unit(kind, layer, index))
            for layer, index in positive
            if kind == "head" or index < widths[layer]
        ]
    candidates = [unit for _, unit in sorted(scored, key=lambda entry: -entry[0]) if unit not in taken]
    picked, base = 0, None
    for start in range(0, len(candidates), 8):
        chunk = candidates[start : start + 8]
        with accounted(found.compute, "guard"):
            base = attribution.window_loss(loaded, guard_ids) if base is None else base  # once per round and axis
            rises = torch.expm1(attribution.measured_loss_change(loaded, guard_ids, chunk, base=base))
        found.guard["checked"] += len(chunk)
        for unit, rise in zip(chunk, rises.tolist()):
            if rise > params.guard:
                found.guard["rejected"] += 1
                found.guard["largest_rejected_rise"] = max(found.guard["largest_rejected_rise"], rise)
            elif picked < count:
                found.order.append(unit)
                picked += 1
        if picked == count:
            return
