"""The grid report of a sweep: every cell's figures side by side, and the Pareto front of bias
against quality, rendered from the store like the audit report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import fairaudit
from fairaudit.errors import StoreError
from fairaudit.reporting.report import render_report
from fairaudit.reporting.sections import is_number
from fairaudit.store import Store


def _pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """Which (cost, reduction) points no other point beats: lower or equal cost and higher or
    equal reduction, one of them strictly."""
    return [
        not any(c <= cost and r >= reduction and (c < cost or r > reduction) for c, r in points)
        for cost, reduction in points
    ]


def sweep_data(store: Store, sweep_id: str) -> dict[str, Any]:
    """Everything the grid report shows: per cell and axis, the output-level bias before and
    after, the held-out bias index change, the perplexity cost, and for each model and axis
    the Pareto front of bias reduction against perplexity cost."""
    record = store.read_run(sweep_id)
    if record.get("kind") != "sweep":
        raise StoreError(
            f"run {sweep_id} is a {record.get('kind', 'audit')} run, not a sweep; see 'fairaudit store ls'."
        )
    varying = [key for key in record.get("grid", {}) if key not in ("model", "model.id", "suites")]
    rows = [row for cell in record.get("cells", []) for row in _cell_rows(store, cell, varying)]
    return {
        "fairaudit_version": fairaudit.__version__,
        "sweep_id": sweep_id,
        "status": record.get("status"),
        "grid": record.get("grid", {}),
        "rows": rows,
        "fronts": _fronts(rows),
        "reduction_definition": "|output-level preference| before minus after (nats); where output-level bias was not "
        "measured, minus the relative change of the held-out bias index",
    }


def _cell_rows(store: Store, cell: dict[str, Any], varying: list[str]) -> list[dict[str, Any]]:
    """One row per axis of a sweep cell: its setting, bias before and after, and perplexity cost."""
    rows = []
    run_id, values = cell["run_id"], cell["values"]
    run: dict[str, Any] = store.read_run(run_id) if store.run_path(run_id).exists() else {"status": "not run"}
    setting = (
        ", ".join(
            f"{key}={values[key] if isinstance(values[key], str) else json.dumps(values[key])}" for key in varying
        )
        or "-"
    )
    measured = {
        (r["evaluator"], r["metric"], r["role"], r["axis_or_task"]): r
        for r in store.rows("evaluations", run_id=run_id)
        if not r["error"]
    }
    changes = {(r["evaluator"], r["metric"], r["axis_or_task"]): r for r in store.rows("comparisons", run_id=run_id)}
    # the model as the sweep file names it (two folders can share a name), else as stored
    model = values.get("model", values.get("model.id", run.get("model_id", "?")))
    model = model if isinstance(model, str) else json.dumps(model)
    perplexity = changes.get(("perplexity", "nll_per_token_bundled", ""))
    cost = {
        key: math.expm1(perplexity[field]) if perplexity and is_number(perplexity[field]) else math.nan
        for key, field in (("value", "change"), ("low", "change_low"), ("high", "change_high"))
    }
    for axis in run.get("suites", {}) or ["-"]:
        before = measured.get(("output_bias", "stereotype_preference", "before", axis))
        after = measured.get(("output_bias", "stereotype_preference", "after", axis))
        heldout = changes.get(("bias_reprobe", "bias_index_heldout", axis))
        reduction = abs(before["value"]) - abs(after["value"]) if before and after else math.nan
        if not is_number(reduction) and heldout:
            reduction = -heldout["relative_change"]
        rows.append(
            {
                "model": model,
                "axis": axis,
                "setting": setting,
                "run_id": run_id,
                "status": run.get("status"),
                "error": run.get("error", ""),
                "before": before,
                "after": after,
                "heldout": heldout,
                "cost": cost,
                "reduction": reduction,
                "removed": (run.get("prune") or {}).get("removed"),
            }
        )
    return rows


def _fronts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each model and axis, the Pareto front of bias reduction against perplexity cost."""
    from fairaudit.svg import scatter

    fronts = []
    for model, axis in dict.fromkeys((row["model"], row["axis"]) for row in rows):
        chosen = [row for row in rows if (row["model"], row["axis"]) == (model, axis) and is_number(row["reduction"])]
        if not chosen:
            continue
        uses_cost = all(is_number(row["cost"]["value"]) for row in chosen)
        points = [(row["cost"]["value"] if uses_cost else 0.0, row["reduction"]) for row in chosen]
        on_front = _pareto_front(points)
        fronts.append(
            {
                "model": model,
                "axis": axis,
                "svg": scatter(
                    f"{model}, {axis}: bias reduction vs quality cost",
                    points,
                    [row["setting"] for row in chosen],
                    ["on the Pareto front" if front else "dominated" for front in on_front],
                    on_front,
                    "perplexity change (relative)" if uses_cost else "(no perplexity measured: cost 0)",
                    "bias reduction",
                    "ringed: no other setting has both a lower cost and a larger reduction",
                ),
                "points": [
                    {"setting": row["setting"], "cost": point[0], "reduction": point[1], "front": front}
                    for row, point, front in zip(chosen, points, on_front)
                ],
            }
        )
    return fronts


def render_sweep_report(data: dict[str, Any], out: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write the grid report of a sweep and its JSON twin."""
    return render_report(data, out, template="sweep.html.j2", force=force)
