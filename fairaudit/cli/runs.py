"""The commands that run things and record them: `probe`, `audit`, `evaluate`, `sweep`, and
`store ls` to list what the runs recorded."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fairaudit.cli.options import device_fields, device_options, lists, on_device, quiet_mode, trust_options
from fairaudit.cli.output import dumps, print_table, report_result


@click.command(cls=lists("probe", "scorer"))
@click.option(
    "--model", "model_id", default=None, help="hub id, local folder, .gguf file or alias (default: smollm2-135m)"
)
@click.option(
    "--suite", "suite_names", multiple=True, help="built-in suite name or file; repeat for several (default: all four)"
)
@click.option("--store", default="fairaudit-out/store", show_default=True, type=click.Path(path_type=Path))
@click.option("--position", type=click.Choice(["mean", "last", "aligned"]), default="mean", show_default=True)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="prompts per forward pass"
)
@device_options
@click.option("--trust-remote-code", is_flag=True, help="run code shipped with the model (only for models you trust)")
@click.option("--allow-pickle", is_flag=True, help="accept pickled (.bin) weights (only for models you trust)")
@click.option("--quiet", is_flag=True, help="no progress bars, no table")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def probe(
    model_id, suite_names, store, position, batch_size, device, dtype, trust_remote_code, allow_pickle, quiet, as_json
) -> None:
    """Probe a model on suites and store per-neuron and per-layer bias scores."""
    from fairaudit.config import DEFAULT_MODEL, DEFAULT_SUITES, RunConfig
    from fairaudit.pipeline.audit import audit

    if quiet:
        quiet_mode()

    config = RunConfig.model_validate(
        {
            "model": {
                "id": model_id or DEFAULT_MODEL,
                **device_fields(device, dtype),
                "trust_remote_code": trust_remote_code,
                "allow_pickle": allow_pickle,
            },
            "suites": list(suite_names) or DEFAULT_SUITES,
            "probe": {
                "plugin": "activations",
                "params": {"position": position, "batch_size": batch_size},
            },
            "store": str(store),
            "pruning": None,
            "evaluators": [],
            "report": False,
        }
    )
    report_result(audit(config), quiet, as_json)


@click.command("audit")
@click.argument("config_file", required=False, type=click.Path(path_type=Path))
@click.option(
    "--resume",
    "resume_run",
    default=None,
    metavar="RUN_ID",
    help="finish an interrupted run (axes already stored are kept)",
)
@click.option(
    "--model",
    "model_id",
    default=None,
    metavar="PATH_OR_ID",
    help="the model to audit: a folder, .gguf file, hub id or alias (overrides the config's model id; its dtype, "
    "device and trust settings stay)",
)
@click.option("--store", default=None, type=click.Path(path_type=Path), help="store folder (overrides the config's)")
@click.option(
    "--policy",
    default=None,
    metavar="POLICY",
    help="policy file or built-in name (e.g. default): verdicts, and "
    "exit status 0 pass / 1 fail / 3 inconclusive (overrides the config's 'policy')",
)
@device_options
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@trust_options
def audit_command(config_file, resume_run, model_id, store, policy, device, dtype, quiet, as_json, granted) -> None:
    """Run the audit a CONFIG_FILE describes; with none, the default audit (SmolLM2-135M on the
    four built-in suites, checked against the default policy; `--model` audits another model the
    same way). Exit status: 0, or the policy's gate (1 a must rule fails, 3 one is undecided); 2
    bad input; 4 an evaluator failed."""
    from fairaudit.config import RunConfig, load_config
    from fairaudit.pipeline.audit import audit

    if quiet:
        quiet_mode()
    granted = frozenset(granted)
    if config_file:
        config = load_config(config_file, granted)
    else:
        config = RunConfig.default_audit().with_trust(granted, "the default audit")
    if store is not None:
        config = config.model_copy(update={"store": str(store)})
    model_fields = device_fields(device, dtype) | (
        {"id": model_id, "gguf_file": None, "revision": None} if model_id else {}
    )
    if model_fields:
        if resume_run:
            raise click.UsageError(
                "--model, --device and --dtype cannot be given with --resume: a resumed run keeps the model settings it "
                "started with"
            )
        config = config.model_copy(update={"model": config.model.model_copy(update=model_fields)})
    if policy is not None:
        if resume_run:
            raise click.UsageError(
                "--policy cannot be given with --resume: a resumed run keeps its own policy "
                "(check another one with 'fairaudit check')"
            )
        config = config.model_copy(update={"policy": policy})
    report_result(audit(config, resume=resume_run, granted=granted), quiet, as_json)


@click.command("evaluate", cls=lists("evaluator"))
@click.option("--model", "model_id", required=True, help="the model to evaluate (the 'before' model)")
@click.option("--compare", "compare_id", default=None, help="a pruned version of it (the 'after' model)")
@click.option("--suite", "suite_names", multiple=True, help="suite for bias evaluators; repeat (default: all four)")
@click.option(
    "--evaluator",
    "evaluator_names",
    multiple=True,
    help="evaluator plugin; repeat (default: bias_reprobe, output_bias, random_baseline, generations, perplexity, "
    "lm_eval, facts, fidelity)",
)
@click.option("--store", default="fairaudit-out/store", show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0, min_open=True),
    callback=lambda ctx, param, value: _a_number(value, "--time-limit"),
    default=3600.0,
    show_default=True,
    help="seconds per evaluator run (inf: no limit)",
)
@click.option(
    "--one-at-a-time",
    is_flag=True,
    help="with --compare: evaluate the two models one after the other "
    "(default: side by side where the evaluator allows it; docs/evaluation.md)",
)
@device_options
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def evaluate_command(
    model_id, compare_id, suite_names, evaluator_names, store, time_limit, one_at_a_time, device, dtype, quiet, as_json
) -> None:
    """Measure bias and quality of a model, and of its pruned version with --compare."""
    from fairaudit.config import DEFAULT_EVALUATORS, DEFAULT_SUITES
    from fairaudit.pipeline.evaluation import evaluate_models

    if quiet:
        quiet_mode()
    result = evaluate_models(
        on_device(model_id, device, dtype),
        compare_id and on_device(compare_id, device, dtype),
        list(suite_names) or DEFAULT_SUITES,
        [*evaluator_names] or [*DEFAULT_EVALUATORS],
        store,
        time_limit,
        side_by_side=not one_at_a_time,
    )
    report_result(result, quiet, as_json)


@click.command("sweep")
@click.argument("sweep_file", type=click.Path(path_type=Path))
@click.option(
    "--backend",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: cells one after another in this process; ray: one Ray task per cell",
)
@click.option(
    "--address",
    default=None,
    help="with --backend ray: an existing cluster (ray://host:10001 or auto); default: a local cluster",
)
@click.option(
    "--num-cpus", type=int, default=None, help="with --backend ray and no --address: CPUs of the local cluster"
)
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@trust_options
def sweep_command(sweep_file, backend, address, num_cpus, quiet, as_json, granted) -> None:
    """Run a grid of audits (models x suites x pruning settings ...) into one store; cells already
    complete are skipped, so rerunning a sweep finishes what a failure or a kill left."""
    from fairaudit.pipeline.sweep import run_sweep

    if quiet or as_json:
        quiet_mode()
    echo = (
        (lambda outcome: None)
        if quiet or as_json
        else (
            lambda outcome: click.echo(
                f"cell {outcome.run_id}: {outcome.status}"
                + (f" in {outcome.seconds:.1f} s" if outcome.status == "complete" else "")
                + (f" ({outcome.error})" if outcome.error else ""),
                err=True,
            )
        )
    )
    result = run_sweep(
        sweep_file, backend=backend, address=address, num_cpus=num_cpus, progress=echo, granted=frozenset(granted)
    )
    outcomes = {outcome.run_id: outcome for outcome in result.outcomes}
    if as_json:
        click.echo(
            dumps(
                {
                    "sweep": result.sweep_id,
                    "store": str(result.store),
                    "cells": [
                        {"run_id": cell.run_id, "values": cell.values, **outcomes[cell.run_id].__dict__}
                        for cell in result.cells
                    ],
                }
            )
        )
    elif not quiet:
        click.echo(f"\nsweep {result.sweep_id}: {len(result.cells)} cells in {result.store}")
        print_table(
            [
                [
                    cell.run_id,
                    cell.label(),
                    outcomes[cell.run_id].status,
                    f"{outcomes[cell.run_id].seconds:.1f}",
                    outcomes[cell.run_id].error[:80],
                ]
                for cell in result.cells
            ],
            ["run", "cell", "status", "seconds", "error"],
        )
        click.echo(f"grid report: fairaudit report {result.store} --sweep {result.sweep_id} --out sweep.html")
    if any(outcome.status == "failed" for outcome in result.outcomes):
        sys.exit(1)


@click.group("store")
def store_group() -> None:
    """Inspect a store folder."""


@store_group.command("ls")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def store_ls(store: Path, as_json: bool) -> None:
    """List the runs in STORE."""
    from fairaudit.errors import StoreError
    from fairaudit.store import Store

    if not store.is_dir():
        raise StoreError(f"{store} is not a store folder (it does not exist).")
    runs = Store(store).runs()
    if as_json:
        click.echo(dumps(runs))
        return
    print_table(
        [
            [
                r["run_id"],
                r.get("status", "?"),
                r.get("model_id", "?"),
                ",".join(r.get("suites", {})),
                r.get("started", ""),
            ]
            for r in runs
        ],
        ["run_id", "status", "model", "axes", "started"],
    )


def _a_number(value: float, flag: str) -> float:
    """`value`, refused when it is NaN (which every range check lets through); inf means no limit."""
    if value != value:
        raise click.BadParameter(
            "NaN is not a number of seconds; give a positive number, or inf for no limit", param_hint=flag
        )
    return value
