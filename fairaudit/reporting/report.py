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
from fairaudit.errors import StoreError
from fairaudit.reporting import sections
from fairaudit.reporting.sections import is_number, p_value_text
from fairaudit.resources import templates_dir
from fairaudit.store import Store, safe_name


def report_data(store: Store, run_id: str, compare_run: str | None = None, policy: Any = None) -> dict[str, Any]:
    """Everything the report shows, read from the store. `policy` (a `fairaudit.compliance.policy.Policy`)
    adds the verdict table; without it, the policy the run was audited against, if any."""
    record = store.verify(run_id)
    if record.get("kind", "audit") != "audit":
        raise StoreError(f"run {run_id} is a {record.get('kind')} run; the report is made from an audit run.")
    model_id = record["model_id"]
    axes = list(record.get("suites", {}))
    summaries = {row["axis"]: row for row in store.rows("axis_summary", model=model_id, run_id=run_id)}
    comparisons = store.rows("comparisons", model=model_id, run_id=run_id)
    change = {(row["evaluator"], row["axis_or_task"], row["metric"]): row for row in comparisons}
    measurements = store.rows("evaluations", run_id=run_id)
    prune = record.get("prune")
    pruned_id = Path(prune["out"]).name if prune else None

    def measured(evaluator: str, metric: str, role: str) -> dict[str, Any] | None:
        return next(
            (
                row
                for row in measurements
                if row["evaluator"] == evaluator
                and row["metric"] == metric
                and row["role"] == role
                and not row["error"]
            ),
            None,
        )

    overlap_pairs = store.rows("overlap_pairs", model=model_id, run_id=run_id)
    policy_table = sections.policy_section(store, run_id, record, policy, compare_run)
    return {
        "fairaudit_version": fairaudit.__version__,
        "run_id": run_id,
        "model_id": model_id,
        "status": record.get("status"),
        "started": record.get("started"),
        "policy": policy_table,
        "gate_verdicts": sections.gate_verdicts(policy_table),
        "summary": sections.axis_summary(axes, summaries, change, measurements, prune),
        **sections.quality_section(comparisons, measured),
        "prune": prune,
        "pruned_id": pruned_id,
        "prune_skipped": record.get("prune_skipped"),
        "comparisons": comparisons,
        "charts": sections.layer_charts(store, model_id, run_id, axes, store.rows("evaluation_items", run_id=run_id)),
        "top_neurons": sections.top_neurons(store, model_id, run_id, axes, prune, pruned_id),
        "overlap": overlap_pairs,
        "overlap_svg": sections.overlap_heatmap(overlap_pairs, axes),
        "diagnosis": sections.diagnosis_figures(store, model_id, run_id, axes),
        "causal": sections.causal_views(store, model_id, run_id, axes),
        "causal_curve_svg": sections.causal_curve(prune),
        **sections.other_runs(store, model_id, run_id, compare_run),
        "generations": sections.generation_pairs(store, run_id),
        "failures": sorted(
            {row["error"] for row in measurements if row["error"] and not row["error"].startswith("skipped")}
        ),
        "provenance": {key: value for key, value in record.items() if key not in ("suites",)},
        "suites": {
            axis: {"sha256": entry.get("sha256"), "definition": entry.get("definition")}
            for axis, entry in record.get("suites", {}).items()
        },
    }


def _prose(text: str) -> Markup:
    """A sentence for the page: escaped, with `code` spans (Markdown backticks) set as <code>."""
    pieces = str(text).split("`")
    if len(pieces) % 2 == 0:  # an unmatched backtick: show it as it is
        return Markup(escape(text))
    return Markup(
        "".join(
            f"<code>{escape(piece)}</code>" if index % 2 else str(escape(piece)) for index, piece in enumerate(pieces)
        )
    )


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
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["num"] = lambda v, digits=4: "n/a" if not is_number(v) else f"{v:.{digits}f}"
    environment.filters["pval"] = p_value_text
    environment.filters["pct"] = lambda v: "n/a" if not is_number(v) else f"{100 * v:+.1f}%"
    environment.filters["raw"] = lambda v: "" if not is_number(v) else repr(float(v))
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


def render_report(
    data: dict[str, Any], out: str | Path, template: str = "base.html.j2", force: bool = False
) -> tuple[Path, Path]:
    """Write the HTML report and `report.json` next to it, each atomically (a symlink in the way is
    replaced, never written through); return both paths. The twin's name is derived, not given:
    an existing file there that is not a fairaudit report twin is kept unless `force`."""
    out = Path(out)
    if "\x00" in str(out):
        raise StoreError("the report path contains a NUL byte.")
    twin = out.with_name(out.stem + ".json") if out.suffix == ".html" else out.with_name(out.name + ".json")
    if twin.exists() and not force and (twin.is_symlink() or not _is_report_twin(twin)):
        raise StoreError(
            f"{twin} exists and is not the JSON twin of a fairaudit report; the report would replace it. Choose "
            f"another --out, move that file, or pass --force."
        )
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
