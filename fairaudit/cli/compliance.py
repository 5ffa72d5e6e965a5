"""The compliance commands: `report`, `check`, `card`, `bundle` and `verify`. Each reads a
store (or a bundle) only; `check`, `card` and `bundle` take a complete audit run only."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fairaudit.cli.options import latest_audit, open_store, policy_for
from fairaudit.cli.output import dumps, exit_on_verdicts, print_table, print_verdicts
from fairaudit.escaping import for_terminal


@click.command("report")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--run", "run_id", default=None, help="audit run to report (default: the latest complete audit run)")
@click.option(
    "--compare",
    "compare_run",
    default=None,
    help="a second run to show beside it (with a policy: how each verdict changed)",
)
@click.option(
    "--policy",
    "policy_name",
    default=None,
    metavar="POLICY",
    help="open the report with this policy's verdicts (default: the policy the run was audited against, if any)",
)
@click.option("--sweep", "sweep_id", default=None, metavar="SWEEP_ID", help="render the grid report of a sweep instead")
@click.option("--out", type=click.Path(path_type=Path), default=Path("report.html"), show_default=True)
@click.option(
    "--force", is_flag=True, help="replace a file at the JSON twin's name even if it is not a fairaudit report"
)
def report_command(store, run_id, compare_run, policy_name, sweep_id, out, force) -> None:
    """Render the HTML audit report (and report.json) of a stored run, or the grid report of a
    sweep. Reads the store only."""
    from fairaudit.compliance.policy import load_policy
    from fairaudit.reporting.report import render_report, report_data
    from fairaudit.reporting.sweep import render_sweep_report, sweep_data

    opened = open_store(store)
    if sweep_id is not None:
        if run_id or compare_run or policy_name:
            raise click.UsageError("--sweep renders a whole grid; it takes no --run, --compare or --policy")
        html, twin = render_sweep_report(sweep_data(opened, sweep_id), out, force=force)
        click.echo(f"grid report written to {html} (numbers also in {twin})")
        return
    policy = load_policy(policy_name) if policy_name else None
    run_id = latest_audit(opened, run_id, complete=False)
    html, twin = render_report(report_data(opened, run_id, compare_run, policy=policy), out, force=force)
    click.echo(f"report written to {html} (numbers also in {twin})")


@click.command("check")
@click.argument("store", type=click.Path(path_type=Path))
@click.option(
    "--policy",
    "policy_name",
    default=None,
    metavar="POLICY",
    help="policy file or built-in name (default: the policy the run was audited against)",
)
@click.option("--run", "run_id", default=None, help="run to check (default: the latest complete audit run)")
@click.option(
    "--baseline", "baseline_run", default=None, metavar="RUN", help="an earlier run: show how each verdict changed"
)
@click.option(
    "--gate",
    type=click.Choice(["auto", "original", "pruned"]),
    default="auto",
    show_default=True,
    help="the model whose must rules decide the exit status (auto: the pruned one when the run pruned)",
)
@click.option("--json", "as_json", is_flag=True, help="print the verdict table as JSON")
def check_command(store, policy_name, run_id, baseline_run, gate, as_json) -> None:
    """Check a stored run against a policy, without a model. Exit status: 0 every must rule
    passes, 1 a must rule fails, 3 a must rule is inconclusive or unmeasured, 2 user error."""
    from fairaudit.compliance.policy import evaluate_policy, exit_status, gate_role, verdict_changes

    opened = open_store(store)
    run_id = latest_audit(opened, run_id)
    policy = policy_for(opened, run_id, policy_name)
    verdicts = evaluate_policy(policy, opened, run_id)
    changes = verdict_changes(evaluate_policy(policy, opened, baseline_run), verdicts) if baseline_run else None
    role = gate_role(verdicts, gate)
    if as_json:
        click.echo(
            dumps(
                {
                    "run_id": run_id,
                    "policy": policy.policy,
                    "policy_sha256": policy.sha256(),
                    "gate_model": role,
                    "exit_status": exit_status(verdicts, role),
                    "verdicts": [v.as_dict() for v in verdicts],
                    "changes": changes,
                }
            )
        )
        exit_on_verdicts(verdicts, gate, quiet=True)
    click.echo(f"run {run_id} against policy {for_terminal(policy.policy)} (sha256 {policy.sha256()[:16]})")
    if changes is not None:
        click.echo(f"\nverdicts now vs run {baseline_run} (regressions first):")
        print_table(
            [
                [
                    row["change"].upper(),
                    row["rule"],
                    row["severity"],
                    row["model"],
                    row["axis"],
                    row["before"],
                    row["after"],
                ]
                for row in changes
            ],
            ["change", "rule", "severity", "model", "axis", "before", "now"],
        )
        click.echo("")
    print_verdicts(verdicts)
    exit_on_verdicts(verdicts, gate, quiet=False)


@click.command("card")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--run", "run_id", default=None, help="audit run (default: the latest complete audit run)")
@click.option(
    "--policy",
    "policy_name",
    default=None,
    metavar="POLICY",
    help="add verdicts of this policy (default: the run's own, if any)",
)
def card_command(store, run_id, policy_name) -> None:
    """Print a model-card "Bias, Risks, and Limitations" section (Markdown) for a stored run."""
    from fairaudit.compliance.card import bias_section
    from fairaudit.compliance.policy import load_policy

    opened = open_store(store)
    run_id = latest_audit(opened, run_id)
    click.echo(bias_section(opened, run_id, load_policy(policy_name) if policy_name else None), nl=False)


@click.command("bundle")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--run", "run_id", default=None, help="audit run (default: the latest complete audit run)")
@click.option(
    "--policy",
    "policy_name",
    default=None,
    metavar="POLICY",
    help="policy for the verdicts (default: the run's own, if any)",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="the zip file to write")
@click.option("--force", is_flag=True, help="replace --out if it exists")
def bundle_command(store, run_id, policy_name, out, force) -> None:
    """Write an audit bundle: report, run record, policy, suites, the run's tables and a manifest of hashes."""
    from fairaudit.compliance.policy import load_policy
    from fairaudit.reporting.bundle import write_bundle

    opened = open_store(store)
    run_id = latest_audit(opened, run_id)
    path, manifest_sha = write_bundle(
        opened, run_id, out, load_policy(policy_name) if policy_name else None, force=force
    )
    click.echo(f"bundle of run {run_id} written to {path}")
    click.echo(
        f"manifest sha256 {manifest_sha} (record it: 'fairaudit verify {path} --manifest-sha256 {manifest_sha}')"
    )


@click.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--model", "model_id", default=None, help="also check that this model's weights are the audited ones")
@click.option(
    "--manifest-sha256", "expected", default=None, help="the manifest hash recorded when the bundle was written"
)
@click.option("--trust-remote-code", is_flag=True, help="run code shipped with the model (only for models you trust)")
@click.option("--allow-pickle", is_flag=True, help="accept pickled (.bin) weights (only for models you trust)")
@click.option("--json", "as_json", is_flag=True)
def verify_command(bundle, model_id, expected, trust_remote_code, allow_pickle, as_json) -> None:
    """Recompute every hash in an audit bundle (and the weights hash with --model); exit 1 if anything differs."""
    from fairaudit.inputs.model import ModelSpec
    from fairaudit.reporting.bundle import verify_bundle

    model = ModelSpec(id=model_id, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle) if model_id else None
    result = verify_bundle(bundle, model, expected)
    if as_json:
        click.echo(
            dumps(
                {
                    "ok": result.ok,
                    "checked": result.checked,
                    "manifest_sha256": result.manifest_sha256,
                    "problems": result.problems,
                }
            )
        )
    else:
        for problem in result.problems:
            click.echo(f"differs: {problem}")
        what = f"{result.checked} files" + (" and the model's weights" if model_id else "")
        click.echo(
            f"{'ok' if result.ok else 'FAILED'}: {what} checked against the manifest (sha256 {result.manifest_sha256}); "
            f"{len(result.problems)} difference(s)"
        )
    if not result.ok:
        sys.exit(1)
