"""Selection by a stored score: the neurons a run's stored columns select (`plan_selection`,
with the hybrid recomputed on pooled axes), and the attention heads with the largest stored
head score (`top_heads`). Nothing is pruned here; `fairaudit.pipeline.pruning` applies them."""

from __future__ import annotations

import math
from typing import Any

from fairaudit.config import SelectionParams
from fairaudit.errors import FairauditError, StoreError
from fairaudit.inputs.model import LoadedModel
from fairaudit.lazy import torch
from fairaudit.plugins import registry
from fairaudit.repair.prune import Selection
from fairaudit.store import Store


def _hybrid_recipe(record: dict[str, Any], column: str) -> Any:
    """The params of the `hybrid` scorer that wrote `column` in a run, or None."""
    for ref in record.get("config", {}).get("scoring", {}).get("scorers", []):
        if ref.get("plugin") == "hybrid":
            params = registry().get("scorer", "hybrid").Params.model_validate(ref.get("params", {}))
            if params.column == column:
                return params
    return None


def plan_selection(store: Store, model_id: str, source_run: str, params: SelectionParams) -> Selection:
    """The neurons `params` select from a run's stored columns (nothing is pruned). With
    `combine: pooled` over several axes and a score written by the hybrid scorer, the hybrid
    is recomputed once on the axes' mean bias (`fairaudit.repair.prune.pooled_hybrid`)."""
    from fairaudit.analysis.overlap import load_scores
    from fairaudit.repair.prune import pooled_hybrid, select

    axes = params.axes or []

    def columns(name: str) -> dict[str, torch.Tensor]:
        stored = load_scores(store, model_id, name, source_run).by_axis
        missing = [axis for axis in axes if axis not in stored]
        if missing:
            hint = " (axes without negative and neutral continuations have none)" if name == params.push else ""
            raise StoreError(
                f"axis {missing} has no '{name}' in run {source_run}{hint}; axes stored with it: "
                f"{', '.join(sorted(stored)) or 'none'}."
            )
        return {axis: torch.from_numpy(stored[axis]) for axis in axes}

    skipped = []
    if params.only_biased_axes:
        summaries = {row["axis"]: row for row in store.rows("axis_summary", model=model_id, run_id=source_run)}
        unmeasured = [axis for axis in axes if summaries.get(axis, {}).get("output_bias_template_low") is None]
        if unmeasured:
            raise StoreError(
                f"only_biased_axes needs the output-level bias of every axis; axes {unmeasured} of run {source_run} "
                f"have none (add the 'output_attribution' scorer, and continuations to their suites)."
            )
        biased = [
            axis
            for axis in axes
            if summaries[axis]["output_bias_template_low"] > 0 or summaries[axis]["output_bias_template_high"] < 0
        ]
        skipped = [axis for axis in axes if axis not in biased]
        if not biased:
            raise FairauditError(
                f"no axis of {axes} has an output-level bias whose template-resampled 95% interval "
                f"excludes 0 in run {source_run}: there is nothing to remove. Nothing was pruned or written."
            )
        params = params.model_copy(update={"axes": biased})
    recipe = (
        _hybrid_recipe(store.read_run(source_run), params.score)
        if params.combine == "pooled" and len(axes) > 1
        else None
    )
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
        selection.ranking = (
            f"hybrid (weight {recipe.weight}) of the mean over axes {', '.join(axes)} of "
            f"`{recipe.bias}`, with importance `{recipe.importance}` (combine: pooled)"
        )
    elif len(axes) == 1:
        selection.ranking = f"`{params.score}` on axis {axes[0]}"
    else:
        how = "mean" if params.combine == "pooled" else params.combine  # a column the hybrid scorer did not write
        selection.ranking = f"{how} over axes {', '.join(axes)} of `{params.score}` (combine: {params.combine})"
    if skipped:
        selection.ranking += f"; axes left out, their output-level bias interval containing 0: {', '.join(skipped)}"
    return selection


def top_heads(
    store: Store,
    loaded: LoadedModel,
    source_run: str,
    axes: list[str],
    count: int,
    column: str,
    scope: str = "global",
) -> list[tuple[int, int]]:
    """The `count` (layer, head) with the largest `column` summed over `axes` in a run's head_scores
    (`scope` "per_layer": `count` in every layer)."""
    totals: dict[tuple[int, int], float] = {}
    for axis in axes:
        rows = store.rows("head_scores", model=loaded.model_id, axis=axis, run_id=source_run)
        if not rows or column not in rows[0]:
            raise StoreError(
                f"run {source_run} has no head score '{column}' for axis {axis}; head scores come from the "
                f"'output_attribution' scorer (columns output_attribution, output_attribution_abs, output_bias_reduction)."
            )
        for row in rows:
            if math.isfinite(row[column]):
                key = (row["layer"], row["head"])
                totals[key] = totals.get(key, 0.0) + row[column]
    ranked = sorted(totals, key=lambda key: -totals[key])
    if scope == "per_layer":
        return sorted(
            key
            for layer in sorted({layer for layer, _ in totals})
            for key in [k for k in ranked if k[0] == layer][:count]
        )
    return sorted(ranked[:count])
