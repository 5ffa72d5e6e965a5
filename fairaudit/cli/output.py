"""How the command line prints: tables, strict JSON, a run's result, policy verdicts and the
exit status they decide."""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import click

from fairaudit.escaping import for_terminal
from fairaudit.yamlio import strict_json as dumps

if TYPE_CHECKING:
    from fairaudit.compliance.policy import Verdict
    from fairaudit.pipeline.record import AuditResult

__all__ = ["dumps", "number", "percent", "print_table", "report_result", "print_verdicts", "exit_on_verdicts"]


def number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def print_table(rows: list[list[str]], header: list[str]) -> None:
    """A plain-text table; every cell with control characters escaped (names come from files)."""
    shown = [[for_terminal(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in shown) for i in range(len(header))]
    for row in [shown[0], ["-" * width for width in widths], *shown[1:]]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


def summary_rows(summaries: dict[str, dict[str, float]]) -> list[list[str]]:
    return [
        [
            axis,
            str(int(summary.get("pairs", 0))),
            str(int(summary.get("controls", 0))),
            f"{number(summary.get('bias_index'))} [{number(summary.get('bias_index_low'))}, {number(summary.get('bias_index_high'))}]",
            number(summary.get("optipfair_index")),
            str(int(summary.get("significant_neurons", 0))),
        ]
        for axis, summary in summaries.items()
    ]


SUMMARY_HEADER = ["axis", "pairs", "controls", "bias index [95% CI]", "optiPfair index", "neurons q<0.05"]


COMPARISON_HEADER = [
    "evaluator",
    "axis/task",
    "metric",
    "before",
    "after",
    "change [95% CI]",
    "relative [95% CI]",
    "items",
]


def comparison_rows(comparisons: list[dict[str, Any]]) -> list[list[str]]:
    """Paired changes, without the per-layer profiles (those are for the report's charts)."""
    return [
        [
            row["evaluator"],
            row["axis_or_task"] or "-",
            row["metric"],
            number(row["before"]),
            number(row["after"]),
            f"{row['change']:+.4f} [{number(row['change_low'])}, {number(row['change_high'])}]",
            f"{percent(row['relative_change'])} [{percent(row['relative_low'])}, {percent(row['relative_high'])}]",
            str(row["items"]),
        ]
        for row in comparisons
        if "_by_layer" not in row["metric"]
    ]


def repaired(pruned: dict[str, Any]) -> str:
    """The summary's line for a pruned or erased model."""
    heads = f" and zeroed {len(pruned['heads'])} attention heads" if pruned.get("heads") else ""
    what = erasure_said(pruned.get("causal")) or f"pruned {pruned['removed']} of {pruned['neurons']} MLP neurons"
    return (
        f"{what}{heads}; parameters {pruned['parameters_before']:,} -> {pruned['parameters_after']:,}; "
        f"model in {pruned['out']}"
    )


def erasure_said(causal: dict[str, Any] | None) -> str | None:
    """'erased the counterfactual direction of religion (strength 1) ...' for a causal plan that
    applied an erasure, else None."""
    causal = causal or {}
    strengths = causal.get("chosen_strengths")
    if not strengths:
        return None
    firsts = causal.get("erased_from") or {}
    erased = ", ".join(
        f"{axis} (strength {strength:g}" + (f", from layer {firsts[axis]})" if firsts.get(axis) else ")")
        for axis, strength in strengths.items()
    )
    where = "those layers'" if any(firsts.values()) else "every layer's"
    return f"erased the counterfactual direction of {erased} from {where} attention and MLP writes"


def percent(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:+.1f}%"


EVALUATION_FAILED = 4  # an evaluator failed: apart from a gate's fail (1) and undecided (3) verdicts


def report_result(result: AuditResult, quiet: bool, as_json: bool) -> None:
    """Print what a run produced (or its JSON), then exit 4 on evaluator failures (the run is not
    complete), else by the policy's verdicts (0 pass, 1 fail, 3 undecided)."""
    if as_json:
        click.echo(
            dumps(
                {
                    "run_id": result.run_id,
                    "store": str(result.store),
                    "model": result.model_id,
                    "axes": result.summaries,
                    "pruned": result.pruned,
                    "comparisons": result.comparisons,
                    "measurements": result.measurements,
                    "report": str(result.report) if result.report else None,
                    "evaluation_failures": result.evaluation_failures,
                    "warnings": result.warnings,
                    "verdicts": [v.as_dict() for v in result.verdicts],
                }
            )
        )
    elif not quiet:
        click.echo(f"\nrun {result.run_id}: model {result.model_id}, stored in {result.store}")
        if result.summaries:
            print_table(summary_rows(result.summaries), SUMMARY_HEADER)
        if result.skipped_axes:
            click.echo(f"resumed: axes already stored were not recomputed: {', '.join(result.skipped_axes)}")
        if result.pruned.get("removed") is not None:
            click.echo(f"\n{repaired(result.pruned)}")
        elif result.pruned.get("skipped"):
            click.echo(f"\nnothing pruned: {result.pruned['skipped']}")
        if result.comparisons:
            click.echo("")
            print_table(comparison_rows(result.comparisons), COMPARISON_HEADER)
        compared = {(row["evaluator"], row["axis_or_task"], row["metric"]) for row in result.comparisons}
        alone = [
            row
            for row in result.measurements
            if not row["error"]
            and (row["evaluator"], row["axis_or_task"], row["metric"]) not in compared
            and row["metric"] != "generated_prompts"
        ]
        if alone:
            click.echo("")
            print_table(
                [
                    [
                        row["model"],
                        row["evaluator"],
                        row["axis_or_task"] or "-",
                        row["metric"],
                        f"{number(row['value'])} [{number(row['low'])}, {number(row['high'])}]",
                        str(row["n"]),
                    ]
                    for row in alone
                ],
                ["model", "evaluator", "axis/task", "metric", "value [95% CI]", "n"],
            )
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)
        if result.verdicts:
            click.echo("")
            print_verdicts(result.verdicts)
        if result.report:
            click.echo(f"\nreport: {result.report}")
    if result.evaluation_failures:
        click.echo(
            f"error: {len(result.evaluation_failures)} evaluator run(s) failed (recorded in the store): "
            + "; ".join(result.evaluation_failures),
            err=True,
        )
        sys.exit(EVALUATION_FAILED)
    if result.verdicts:
        exit_on_verdicts(result.verdicts, "auto", quiet or as_json)


VERDICT_HEADER = ["rule", "severity", "model", "axis", "verdict", "value [95% CI]", "items", "threshold"]


def print_verdicts(verdicts: list[Verdict]) -> None:
    print_table(
        [
            [
                v.rule,
                v.severity,
                v.model,
                v.axis,
                v.verdict.upper(),
                f"{number(v.value)} [{number(v.low)}, {number(v.high)}]",
                str(v.items),
                v.threshold,
            ]
            for v in verdicts
        ],
        VERDICT_HEADER,
    )


def exit_on_verdicts(verdicts: list[Verdict], gate: str, quiet: bool) -> None:
    """Exit 0 when every `must` rule passes on the gated model, 1 when one fails, 3 when one is undecided."""
    from fairaudit.compliance.policy import exit_status, gate_role

    role = gate_role(verdicts, gate)
    status = exit_status(verdicts, role)
    if not quiet:
        judged = any(v.severity == "must" and v.model == role for v in verdicts)
        words = {
            0: "every must rule passes",
            1: "a must rule fails",
            3: "a must rule is not decided (inconclusive, too few items or not measured)"
            if judged
            else "no must rule has a verdict on this model: nothing measured is not a pass",
        }
        click.echo(f"gate on the {role} model: {words[status]} (exit status {status})", err=status != 0)
    sys.exit(status)
