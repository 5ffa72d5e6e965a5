"""Overlap analysis: do the same neurons carry bias on several axes, or in two models?

Across the axes of one model: for each axis its top-k neurons by a stored score; for each
pair of axes the overlap count, the count expected by chance (k_a * k_b / N), a
hypergeometric p-value P(X >= overlap), the Jaccard index, and the Spearman correlation of
the full score vectors; the neurons in the top-k of two or more axes; and a per-layer
breakdown. Across models: neuron identity when the shapes agree, and the correlation of
per-layer profiles on a common relative-depth grid when they do not.

The default score is `scaled_bias`: with the unscaled `bias`, neurons of large magnitude
top every axis and the overlap would reflect size, not shared bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats as scipy_stats

from fairaudit.errors import FairauditError, StoreError
from fairaudit.measurement import metrics
from fairaudit.store import Store, safe_name

DEFAULT_SCORE = "scaled_bias"
GRID_POINTS = 20


@dataclass(frozen=True)
class ModelScores:
    """One stored score for every axis of one run: axis -> `[layers, units]` array."""

    model: str
    run_id: str
    score: str
    by_axis: dict[str, np.ndarray]


def latest_run(store: Store, model: str) -> str:
    """The newest complete audit run (not a prune record) of `model` in `store`."""
    runs = [
        r
        for r in store.runs()
        if safe_name(r.get("model_id", "")) == safe_name(model)
        and r.get("status") == "complete"
        and r.get("kind", "audit") == "audit"
    ]
    if not runs:
        models = sorted({r.get("model_id", "?") for r in store.runs()})
        raise StoreError(
            f"store {store.root} has no complete run of model '{model}'. Models in it: {', '.join(models) or '(none)'}."
        )
    return runs[-1]["run_id"]


def load_scores(store: Store, model: str, score: str = DEFAULT_SCORE, run_id: str | None = None) -> ModelScores:
    """Read `score` for every axis of one run (default: the model's latest complete run)."""
    run_id = run_id or latest_run(store, model)
    table = store.read("neuron_scores", model=model, run_id=run_id)
    columns = [
        field.name for field in table.schema if pa.types.is_floating(field.type)
    ]  # keys (layer, neuron...) are not scores
    if score not in columns:
        raise FairauditError(
            f"'{score}' is not a per-neuron score stored for model '{model}' run {run_id}; "
            f"stored scores: {', '.join(columns) or '(none)'}."
        )
    by_axis = {}
    for axis in sorted(set(table.column("axis").to_pylist())):
        rows = table.filter(pc.equal(table.column("axis"), axis))
        layers = np.asarray(rows.column("layer").to_numpy(), dtype=np.int64)
        neurons = np.asarray(rows.column("neuron").to_numpy(), dtype=np.int64)
        values = np.full((layers.max() + 1, neurons.max() + 1), np.nan, dtype=np.float64)
        values[layers, neurons] = rows.column(score).to_numpy(zero_copy_only=False)
        by_axis[axis] = values
    return ModelScores(model=model, run_id=run_id, score=score, by_axis=by_axis)


def top_k(values: np.ndarray, top: float) -> np.ndarray:
    """Boolean mask of the k largest entries (NaN never selected); `top` < 1 is a fraction of
    all entries, `top` >= 1 a count. Ties are broken by position, deterministically."""
    flat = np.nan_to_num(values.ravel(), nan=-np.inf)
    if not math.isfinite(top) or top <= 0:
        raise FairauditError(f"--top must be a positive fraction (< 1) or count (>= 1); got {top}.")
    k = int(round(top * flat.size)) if top < 1 else int(top)
    k = max(1, min(k, flat.size))
    order = np.argsort(-flat, kind="stable")[:k]
    mask = np.zeros(flat.size, dtype=bool)
    mask[order] = True
    return mask.reshape(values.shape)


def hypergeometric_p(overlap: int, population: int, k_a: int, k_b: int) -> float:
    """P(X >= overlap) when k_b of `population` items are drawn and k_a are marked."""
    return float(scipy_stats.hypergeom.sf(overlap - 1, population, k_a, k_b))


def set_overlap(
    mask_a: np.ndarray, mask_b: np.ndarray, values_a: np.ndarray | None = None, values_b: np.ndarray | None = None
) -> dict:
    """Overlap statistics of two top-k masks over the same neurons. With score values, the
    population is the neurons scored in both (a pruned model lacks some)."""
    population, k_a, k_b = mask_a.size, int(mask_a.sum()), int(mask_b.sum())
    if values_a is not None and values_b is not None:
        population = int((~(np.isnan(values_a) | np.isnan(values_b))).sum())
    overlap = int((mask_a & mask_b).sum())
    union = int((mask_a | mask_b).sum())
    result = {
        "neurons": population,
        "k_a": k_a,
        "k_b": k_b,
        "overlap": overlap,
        "expected": k_a * k_b / population,
        "p_value": hypergeometric_p(overlap, population, k_a, k_b),
        "jaccard": overlap / union if union else 0.0,
    }
    if values_a is not None and values_b is not None:
        valid = ~(np.isnan(values_a.ravel()) | np.isnan(values_b.ravel()))
        rho = metrics.spearman(values_a.ravel()[valid], values_b.ravel()[valid])
        result["spearman"] = float(rho)
    return result


@dataclass
class AxisOverlap:
    """Tables of the cross-axis analysis of one model (pyarrow tables, ready to write)."""

    pairs: pa.Table  # one row per pair of axes
    per_layer: pa.Table  # one row per (pair of axes, layer)
    shared: pa.Table  # one row per neuron in the top-k of two or more axes


def axis_overlap(scores: ModelScores, top: float) -> AxisOverlap:
    axes = sorted(scores.by_axis)
    shapes = {scores.by_axis[a].shape for a in axes}
    if len(shapes) != 1:
        raise FairauditError(
            f"axes of model '{scores.model}' have different shapes {sorted(shapes)}; cannot compare neurons."
        )
    masks = {axis: top_k(scores.by_axis[axis], top) for axis in axes}
    pair_rows, layer_rows = [], []
    for axis_a, axis_b in combinations(axes, 2):
        row = set_overlap(masks[axis_a], masks[axis_b], scores.by_axis[axis_a], scores.by_axis[axis_b])
        pair_rows.append({"model": scores.model, "axis_a": axis_a, "axis_b": axis_b, **row})
        for layer in range(masks[axis_a].shape[0]):
            per = set_overlap(masks[axis_a][layer], masks[axis_b][layer])
            layer_rows.append({"model": scores.model, "axis_a": axis_a, "axis_b": axis_b, "layer": layer, **per})
    stacked = np.stack([masks[axis] for axis in axes])  # [axes, layers, units]
    counts = stacked.sum(axis=0)
    shared_rows: list[dict[str, Any]] = [
        {
            "model": scores.model,
            "layer": int(layer),
            "neuron": int(neuron),
            "axes_count": int(counts[layer, neuron]),
            "axes": ",".join(axis for index, axis in enumerate(axes) if stacked[index, layer, neuron]),
        }
        for layer, neuron in zip(*np.nonzero(counts >= 2))
    ]
    shared_rows.sort(key=lambda r: (-r["axes_count"], r["layer"], r["neuron"]))
    return AxisOverlap(
        pa.Table.from_pylist(pair_rows),
        pa.Table.from_pylist(layer_rows),
        pa.Table.from_pylist(
            shared_rows,
            schema=pa.schema(
                [
                    ("model", pa.string()),
                    ("layer", pa.int16()),
                    ("neuron", pa.int32()),
                    ("axes_count", pa.int8()),
                    ("axes", pa.string()),
                ]
            ),
        ),
    )


def depth_profile(values: np.ndarray, points: int = GRID_POINTS) -> np.ndarray:
    """Per-layer mean score, interpolated onto `points` relative depths in (0, 1)."""
    per_layer = np.nanmean(values, axis=1)
    layer_depth = (np.arange(len(per_layer)) + 0.5) / len(per_layer)
    grid = (np.arange(points) + 0.5) / points
    return np.interp(grid, layer_depth, per_layer)


def _prune_run_of(store: Store, scores: ModelScores) -> str | None:
    """The complete prune run that wrote the model these scores were computed on: the one whose
    pruned weights hash (or output folder) is the audited model's; None when it was not pruned here."""
    audited = store.read_run(scores.run_id).get("model", {})
    source = audited.get("source")
    for record in reversed(store.runs()):
        if record.get("kind") != "prune" or record.get("status") != "complete":
            continue
        if record.get("weights_hash") and record["weights_hash"] == audited.get("weights_hash"):
            return record["run_id"]
        if not record.get("weights_hash") and source and Path(str(record.get("output", ""))) == Path(source).resolve():
            return record["run_id"]
    return None


def map_to_original(store: Store, scores: ModelScores, width: int) -> ModelScores:
    """A pruned model's scores placed at its neurons' original indices (through the neuron map
    its prune stored), `[layers, width]` with NaN where a neuron was removed; unchanged when the
    store holds no map for it."""
    prune_run = _prune_run_of(store, scores)
    if prune_run is None:
        return scores
    rows = [row for row in store.rows("neuron_maps", model=scores.model, run_id=prune_run) if not row.get("zeroed")]
    if not rows:
        return scores
    layers = np.array([row["layer"] for row in rows])
    pruned = np.array([row["pruned_index"] for row in rows])
    original = np.array([row["original_index"] for row in rows])
    mapped = {}
    for axis, values in scores.by_axis.items():
        placed = np.full((values.shape[0], width), np.nan)
        inside = pruned < values.shape[1]
        placed[layers[inside], original[inside]] = values[layers[inside], pruned[inside]]
        mapped[axis] = placed
    return ModelScores(model=scores.model, run_id=scores.run_id, score=scores.score, by_axis=mapped)


def model_overlap(first: ModelScores, second: ModelScores, top: float) -> pa.Table:
    """One row per axis the two models share: neuron identity overlap when shapes agree,
    and always the Spearman and Pearson correlation of their relative-depth profiles."""
    rows = []
    for axis in sorted(set(first.by_axis) & set(second.by_axis)):
        a, b = first.by_axis[axis], second.by_axis[axis]
        profile_a, profile_b = depth_profile(a), depth_profile(b)
        row = {
            "axis": axis,
            "model_a": first.model,
            "model_b": second.model,
            "layers_a": a.shape[0],
            "layers_b": b.shape[0],
            "profile_spearman": metrics.spearman(
                np.asarray(profile_a, dtype=np.float64), np.asarray(profile_b, dtype=np.float64)
            ),
            "profile_pearson": float(np.corrcoef(profile_a, profile_b)[0, 1]),
        }
        if a.shape == b.shape:
            row.update(same_shape=True, **set_overlap(top_k(a, top), top_k(b, top), a, b))
        else:
            row["same_shape"] = False
        rows.append(row)
    if not rows:
        raise FairauditError(
            f"models '{first.model}' and '{second.model}' share no axis; probe both on the same suites."
        )
    return pa.Table.from_pylist(rows)
