"""The `fairaudit` command (also `python -m fairaudit`). It only parses and prints;
the work is done by the Python API it calls."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import click

from fairaudit.errors import FairauditError


def _finite(value):
    """`value` with NaN and infinities as None: strict JSON has no NaN (docs: "--json output")."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _dumps(value) -> str:
    """Strict JSON for --json output: NaN and infinities become null."""
    return json.dumps(_finite(value), indent=2, default=str, allow_nan=False)


def _number(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * width for width in widths], *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))


def _summary_rows(summaries: dict[str, dict[str, float]]) -> list[list[str]]:
    return [
        [
            axis,
            str(int(summary.get("pairs", 0))),
            str(int(summary.get("controls", 0))),
            f"{_number(summary.get('bias_index'))} [{_number(summary.get('bias_index_low'))}, {_number(summary.get('bias_index_high'))}]",
            _number(summary.get("optipfair_index")),
            str(int(summary.get("significant_neurons", 0))),
        ]
        for axis, summary in summaries.items()
    ]


class _ListsPlugins(click.Command):
    """A command whose --help ends with the registered plugins of `kinds` (and, for scorers, the
    score columns each writes with its default parameters), computed only when help is shown."""

    kinds: tuple[str, ...] = ()

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from fairaudit.plugins import registry

        plugins = registry()
        for kind in self.kinds:
            rows = []
            for name in plugins.names(kind):
                component = plugins.get(kind, name)
                columns = getattr(component, "outputs", None)
                written = f" [columns: {', '.join(columns(component.Params()))}]" if kind == "scorer" and columns and columns(component.Params()) else ""
                rows.append((name, f"{component.description}{written}"))
            with formatter.section(f"{kind.capitalize()}s (fairaudit plugins lists every kind)"):
                formatter.write_dl(rows)
        super().format_epilog(ctx, formatter)


def _lists(*kinds: str) -> type[click.Command]:
    return type("ListsPlugins", (_ListsPlugins,), {"kinds": kinds})


SUMMARY_HEADER = ["axis", "pairs", "controls", "bias index [95% CI]", "optiPfair index", "neurons q<0.05"]


class _Group(click.Group):
    """Turns user errors into one clear line and exit status 2."""

    def main(self, *args, **kwargs):
        """Click's own usage errors (an unknown option, a missing argument) read like every other
        user error: `error:` and one paragraph, exit status 2."""
        kwargs["standalone_mode"] = False
        # transformers' own bars and load reports ("Loading weights", "Writing model shards") would
        # interleave with fairaudit's one line per stage; a user who wants them sets these variables
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            return super().main(*args, **kwargs)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "fairaudit"
            click.echo(f"error: {exc.format_message()} (see '{command} --help')", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FairauditError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            run_id = getattr(exc, "run_id", None)
            how = (f"finish it with: fairaudit audit --resume {run_id} --store {exc.store}" if run_id
                   else "rerun the command to finish (a sweep skips its complete cells)")
            click.echo(f"interrupted: results written so far are intact; {how}", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fairaudit")
def main() -> None:
    """Audit transformer language models for social bias, axis by axis."""


# --- suites ---------------------------------------------------------------------------

@main.group()
def suites() -> None:
    """List, show and validate suites."""


@suites.command("list")
def suites_list() -> None:
    """List the built-in suites."""
    from fairaudit.suite import builtin_suite_names, resolve_suite

    rows = []
    for name in builtin_suite_names():
        suite = resolve_suite(name)
        rows.append([name, suite.axis, str(len(suite.groups)), str(len(suite.templates)), str(len(suite.pairs(None))), str(len(suite.controls))])
    _print_table(rows, ["suite", "axis", "groups", "templates", "pairs", "controls"])


@suites.command("show")
@click.argument("name")
@click.option("--split", type=click.Choice(["probe", "heldout", "all"]), default="all", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the pairs as JSON lines")
def suites_show(name: str, split: str, as_json: bool) -> None:
    """Show the pairs a suite (built-in NAME or a file) expands to."""
    from fairaudit.suite import resolve_suite

    suite = resolve_suite(name)
    pairs = suite.pairs(None if split == "all" else split) + suite.control_pairs()
    for pair in pairs:
        if as_json:
            click.echo(pair.model_dump_json())
        else:
            click.echo(f"[{pair.pair_id}]\n  a: {pair.text_a}\n  b: {pair.text_b}")


@suites.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def suites_validate(files: tuple[Path, ...]) -> None:
    """Validate suite files; exit status 2 if any is invalid."""
    from fairaudit.suite import load_suite

    failed = 0
    for path in files:
        try:
            suite = load_suite(path)
        except FairauditError as exc:
            failed += 1
            click.echo(f"error: {exc}", err=True)
        else:
            click.echo(f"ok: {path} (axis {suite.axis}, {len(suite.pairs(None))} pairs, {len(suite.controls)} controls)")
    if failed:
        sys.exit(2)


@suites.command("import")
@click.argument("kind")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="folder for the suites (one YAML per bias type)")
@click.option("--json", "as_json", is_flag=True)
def suites_import(kind: str, file: Path, out: Path, as_json: bool) -> None:
    """Import a public data set FILE as suites; KIND is an importer plugin (crows-pairs, stereoset)."""
    from fairaudit.errors import SuiteError
    from fairaudit.importing import write_suites
    from fairaudit.plugins import registry

    importer = registry().get("importer", kind)
    if not file.is_file():
        raise SuiteError(f"data set file {file} does not exist.")
    result = importer.import_file(file, importer.Params())
    if not result.suites:
        raise SuiteError(f"{file}: no row could be imported ({len(result.skipped)} of {result.rows} rows skipped).")
    written = write_suites(result.suites, out)
    if as_json:
        click.echo(_dumps({"rows": result.rows, "imported": result.imported, "written": [str(p) for p in written],
                               "skipped": [s.__dict__ for s in result.skipped]}))
        return
    for path, suite in zip(written, result.suites):
        click.echo(f"{path}: axis {suite.axis}, {len(suite.sentence_pairs)} pairs")
    for row in result.skipped:
        click.echo(f"skipped row {row.row} (id {row.row_id}): {row.reason}", err=True)
    click.echo(f"{result.rows} rows: {result.imported} imported into {len(written)} suites, {len(result.skipped)} skipped")


# --- plugins --------------------------------------------------------------------------

@main.command()
@click.option("--json", "as_json", is_flag=True)
def plugins(as_json: bool) -> None:
    """List installed plugins: kind, name, where each comes from."""
    from fairaudit.plugins import registry

    entries = registry().entries()
    if as_json:
        click.echo(_dumps([{"kind": e.kind, "name": e.name, "plugin": e.plugin, "distribution": e.distribution,
                                "version": e.version, "description": e.description} for e in entries]))
        return
    _print_table([[e.kind, e.name, f"{e.distribution} {e.version}".strip(), e.description] for e in entries],
                 ["kind", "name", "from", "description"])


# --- probe and audit --------------------------------------------------------------------

COMPARISON_HEADER = ["evaluator", "axis/task", "metric", "before", "after", "change [95% CI]", "relative [95% CI]", "items"]


def _comparison_rows(comparisons: list[dict]) -> list[list[str]]:
    """Paired changes, without the per-layer profiles (those are for the report's charts)."""
    return [[row["evaluator"], row["axis_or_task"] or "-", row["metric"], _number(row["before"]), _number(row["after"]),
             f"{row['change']:+.4f} [{_number(row['change_low'])}, {_number(row['change_high'])}]",
             f"{_percent(row['relative_change'])} [{_percent(row['relative_low'])}, {_percent(row['relative_high'])}]",
             str(row["items"])] for row in comparisons if "_by_layer" not in row["metric"]]


def _percent(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:+.1f}%"


def _silence_libraries() -> None:
    """--quiet: no progress bars or notices from transformers and lm-eval either."""
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)


def _report_result(result, quiet: bool, as_json: bool) -> None:
    if as_json:
        click.echo(_dumps({"run_id": result.run_id, "store": str(result.store), "model": result.model_id,
                               "axes": result.summaries, "pruned": result.pruned, "comparisons": result.comparisons,
                               "measurements": result.measurements, "report": str(result.report) if result.report else None,
                               "evaluation_failures": result.evaluation_failures, "warnings": result.warnings,
                               "verdicts": [v.as_dict() for v in result.verdicts]}))
    elif not quiet:
        click.echo(f"\nrun {result.run_id}: model {result.model_id}, stored in {result.store}")
        if result.summaries:
            _print_table(_summary_rows(result.summaries), SUMMARY_HEADER)
        if result.skipped_axes:
            click.echo(f"resumed: axes already stored were not recomputed: {', '.join(result.skipped_axes)}")
        if result.pruned.get("removed") is not None:
            pruned = result.pruned
            heads = f" and zeroed {len(pruned['heads'])} attention heads" if pruned.get("heads") else ""
            click.echo(f"\npruned {pruned['removed']} of {pruned['neurons']} MLP neurons{heads}; parameters "
                       f"{pruned['parameters_before']:,} -> {pruned['parameters_after']:,}; model in {pruned['out']}")
        elif result.pruned.get("skipped"):
            click.echo(f"\nnothing pruned: {result.pruned['skipped']}")
        if result.comparisons:
            click.echo("")
            _print_table(_comparison_rows(result.comparisons), COMPARISON_HEADER)
        compared = {(row["evaluator"], row["axis_or_task"], row["metric"]) for row in result.comparisons}
        alone = [row for row in result.measurements if not row["error"]
                 and (row["evaluator"], row["axis_or_task"], row["metric"]) not in compared and row["metric"] != "generated_prompts"]
        if alone:
            click.echo("")
            _print_table([[row["model"], row["evaluator"], row["axis_or_task"] or "-", row["metric"],
                           f"{_number(row['value'])} [{_number(row['low'])}, {_number(row['high'])}]", str(row["n"])] for row in alone],
                         ["model", "evaluator", "axis/task", "metric", "value [95% CI]", "n"])
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)
        if result.verdicts:
            click.echo("")
            _print_verdicts(result.verdicts)
        if result.report:
            click.echo(f"\nreport: {result.report}")
    if result.evaluation_failures:
        click.echo(f"error: {len(result.evaluation_failures)} evaluator run(s) failed (recorded in the store): "
                   + "; ".join(result.evaluation_failures), err=True)
        sys.exit(1)
    if result.verdicts:
        _exit_on_verdicts(result.verdicts, "auto", quiet or as_json)


VERDICT_HEADER = ["rule", "severity", "model", "axis", "verdict", "value [95% CI]", "items", "threshold"]


def _print_verdicts(verdicts) -> None:
    _print_table([[v.rule, v.severity, v.model, v.axis, v.verdict.upper(), f"{_number(v.value)} [{_number(v.low)}, {_number(v.high)}]",
                   str(v.items), v.threshold] for v in verdicts], VERDICT_HEADER)


def _exit_on_verdicts(verdicts, gate: str, quiet: bool) -> None:
    """Exit 0 when every `must` rule passes on the gated model, 1 when one fails, 3 when one is undecided."""
    from fairaudit.policy import exit_status, gate_role

    role = gate_role(verdicts, gate)
    status = exit_status(verdicts, role)
    if not quiet:
        words = {0: "every must rule passes", 1: "a must rule fails", 3: "a must rule is not decided (inconclusive, too few items or not measured)"}
        click.echo(f"gate on the {role} model: {words[status]} (exit status {status})", err=status != 0)
    sys.exit(status)


def _device_options(command):
    """--device and --dtype: where the model runs and in which precision (default: the run
    config's, else cpu and float32). Activations are reduced in float32 whatever the dtype."""
    command = click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
                           help="dtype of the weights (default float32); bfloat16 halves memory (the causal "
                                "planner still measures in float32: docs/attribution.md)")(command)
    return click.option("--device", default=None, help="torch device: cpu (default), cuda, cuda:1, mps")(command)


def _device_fields(device: str | None, dtype: str | None) -> dict[str, str]:
    """The `model:` fields --device and --dtype set (those given)."""
    return {key: value for key, value in (("device", device), ("dtype", dtype)) if value is not None}


def _on_device(model_id: str, device: str | None, dtype: str | None):
    """A model id, or a ModelSpec when --device or --dtype was given."""
    if not _device_fields(device, dtype):
        return model_id
    from fairaudit.model import ModelSpec

    return ModelSpec(id=model_id, **_device_fields(device, dtype))


@main.command(cls=_lists("probe", "scorer"))
@click.option("--model", "model_id", default=None, help="hub id, local folder, .gguf file or alias (default: smollm2-135m)")
@click.option("--suite", "suite_names", multiple=True, help="built-in suite name or file; repeat for several (default: all four)")
@click.option("--store", default="fairaudit-out/store", show_default=True, type=click.Path(path_type=Path))
@click.option("--position", type=click.Choice(["mean", "last", "aligned"]), default="mean", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="prompts per forward pass")
@_device_options
@click.option("--trust-remote-code", is_flag=True, help="run code shipped with the model (only for models you trust)")
@click.option("--allow-pickle", is_flag=True, help="accept pickled (.bin) weights (only for models you trust)")
@click.option("--quiet", is_flag=True, help="no progress bars, no table")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def probe(model_id, suite_names, store, position, batch_size, device, dtype, trust_remote_code, allow_pickle, quiet, as_json) -> None:
    """Probe a model on suites and store per-neuron and per-layer bias scores."""
    if quiet:
        _silence_libraries()
    from fairaudit.config import DEFAULT_SUITES, RunConfig
    from fairaudit.model import DEFAULT_MODEL
    from fairaudit.runner import audit

    config = RunConfig.model_validate({
        "model": {"id": model_id or DEFAULT_MODEL, **_device_fields(device, dtype),
                  "trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle},
        "suites": list(suite_names) or DEFAULT_SUITES,
        "probe": {"plugin": "activations", "params": {"position": position, "batch_size": batch_size, "progress": not quiet}},
        "store": str(store),
        "pruning": None,
        "evaluators": [],
        "report": False,
    })
    _report_result(audit(config), quiet, as_json)


def _trust_options(command):
    """--trust-remote-code, --allow-pickle, --allow-task-code: what a file may ask for but only the user grants."""
    for flag, text in reversed([
            ("--trust-remote-code", "let a config (or stored run) load a model that ships its own code (only models you trust)"),
            ("--allow-pickle", "let a config (or stored run) read pickled (.bin) weights (only models you trust)"),
            ("--allow-task-code", "let an lm-eval task folder (include_path) run the Python its YAML names with !function")]):
        command = click.option(flag, "granted", flag_value=flag.removeprefix("--").replace("-", "_"), multiple=True, help=text)(command)
    return command


@main.command("audit")
@click.argument("config_file", required=False, type=click.Path(path_type=Path))
@click.option("--resume", "resume_run", default=None, metavar="RUN_ID", help="finish an interrupted run (axes already stored are kept)")
@click.option("--store", default=None, type=click.Path(path_type=Path), help="store folder (overrides the config's)")
@click.option("--policy", default=None, metavar="POLICY", help="policy file or built-in name (e.g. default): verdicts, and "
              "exit status 0 pass / 1 fail / 3 inconclusive (overrides the config's 'policy')")
@_device_options
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@_trust_options
def audit_command(config_file, resume_run, store, policy, device, dtype, quiet, as_json, granted) -> None:
    """Run the audit a CONFIG_FILE describes; with none, the default audit
    (SmolLM2-135M on the four built-in suites)."""
    from fairaudit.config import RunConfig, load_config
    from fairaudit.runner import audit

    if quiet:
        _silence_libraries()
    granted = frozenset(granted)
    config = load_config(config_file, granted) if config_file else RunConfig().with_trust(granted, "the default audit")
    if store is not None:
        config = config.model_copy(update={"store": str(store)})
    if _device_fields(device, dtype):
        if resume_run:
            raise click.UsageError("--device and --dtype cannot be given with --resume: a resumed run keeps the model settings it started with")
        config = config.model_copy(update={"model": config.model.model_copy(update=_device_fields(device, dtype))})
    if policy is not None:
        if resume_run:
            raise click.UsageError("--policy cannot be given with --resume: a resumed run keeps its own policy "
                                   "(check another one with 'fairaudit check')")
        config = config.model_copy(update={"policy": policy})
    if quiet:
        config = config.model_copy(update={"probe": config.probe.model_copy(update={"params": {**config.probe.params, "progress": False}})})
    _report_result(audit(config, resume=resume_run, granted=granted), quiet, as_json)


@main.command("evaluate", cls=_lists("evaluator"))
@click.option("--model", "model_id", required=True, help="the model to evaluate (the 'before' model)")
@click.option("--compare", "compare_id", default=None, help="a pruned version of it (the 'after' model)")
@click.option("--suite", "suite_names", multiple=True, help="suite for bias evaluators; repeat (default: all four)")
@click.option("--evaluator", "evaluator_names", multiple=True,
              help="evaluator plugin; repeat (default: bias_reprobe, output_bias, random_baseline, generations, perplexity, "
                   "lm_eval, facts, fidelity)")
@click.option("--store", default="fairaudit-out/store", show_default=True, type=click.Path(path_type=Path))
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=3600.0, show_default=True,
              help="seconds per evaluator run")
@click.option("--one-at-a-time", is_flag=True, help="with --compare: evaluate the two models one after the other "
              "(default: side by side where the evaluator allows it; docs/evaluation.md)")
@_device_options
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def evaluate_command(model_id, compare_id, suite_names, evaluator_names, store, time_limit, one_at_a_time, device, dtype, quiet,
                     as_json) -> None:
    """Measure bias and quality of a model, and of its pruned version with --compare."""
    from fairaudit.config import DEFAULT_EVALUATORS, DEFAULT_SUITES
    from fairaudit.runner import evaluate_models

    if quiet:
        _silence_libraries()
    result = evaluate_models(_on_device(model_id, device, dtype), compare_id and _on_device(compare_id, device, dtype),
                             list(suite_names) or DEFAULT_SUITES,
                             list(evaluator_names) or DEFAULT_EVALUATORS, store, time_limit, progress=not quiet,
                             side_by_side=not one_at_a_time)
    _report_result(result, quiet, as_json)


@main.command("diagnose")
@click.option("--model", "model_id", required=True)
@click.option("--suite", "suite_name", required=True, help="built-in suite name or file")
@click.option("--pair", "pair_ids", multiple=True, metavar="TEMPLATE_ID:GROUP_A:GROUP_B", help="pair to diagnose; repeat")
@click.option("--top", type=int, default=3, show_default=True, help="without --pair: the K most divergent pairs")
@click.option("--layer", type=int, default=None, help="layer of the PCA view (default: where MLP divergence peaks)")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--png", is_flag=True, help="also write PNG files (renders the SVG with Debian's chromium)")
@click.option("--attribution", "verify", type=click.IntRange(min=0), default=None, metavar="K",
              help="also: each layer's share of the output attribution beside its share of the divergence, and the top "
                   "neurons and heads by the measured effect of ablating each of the K largest estimates alone (0: estimates only)")
@_device_options
@click.option("--json", "as_json", is_flag=True)
def diagnose_command(model_id, suite_name, pair_ids, top, layer, out, png, verify, device, dtype, as_json) -> None:
    """Where the bias appears and how it grows: per-token x per-layer divergence maps, PCA of
    token representations, and the axis' emergence summary; with --attribution K, what carries
    it to the output."""
    from fairaudit import metrics
    from fairaudit.diagnose import diagnose_pair, emergence, render_view
    from fairaudit.errors import FairauditError
    from fairaudit.model import load_model
    from fairaudit.plugins import registry
    from fairaudit.store import atomic_write_text
    from fairaudit.suite import resolve_suite

    suite = resolve_suite(suite_name)
    if out.exists() and not out.is_dir():
        raise FairauditError(f"--out {out} is a file; name a folder for the figures.")
    pairs = suite.pairs(None)
    by_id = {pair.pair_id: pair for pair in pairs}
    missing = [pair_id for pair_id in pair_ids if pair_id not in by_id]
    if missing:  # checked before the model loads: a typo costs a second, not a model load
        raise FairauditError(f"suite '{suite.suite}' has no pair {missing}; pair ids look like "
                             f"'{pairs[0].pair_id}' (see 'fairaudit suites show {suite_name}').")
    loaded = load_model(_on_device(model_id, device, dtype))
    probe = registry().get("probe", "activations")
    stats = probe.run(loaded, suite.pairs("probe"), suite.control_pairs(),
                      probe.Params(components=["attention", "mlp"], optipfair_index=False, progress=False), suite.axis)
    summary = emergence(stats)
    if pair_ids:
        chosen = [by_id[pair_id] for pair_id in pair_ids]
    else:
        ranking = metrics.pair_bias_index(stats).argsort(descending=True)[:top].tolist()
        chosen = [suite.pairs("probe")[index] for index in ranking]
    layer = summary.mlp_peak if layer is None else layer
    if not 0 <= layer < len(loaded.layers):
        raise FairauditError(f"--layer {layer} is out of range: the model has layers 0..{len(loaded.layers) - 1}.")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for pair in chosen:
        for stem, svg in render_view(diagnose_pair(loaded, pair, layer)).items():
            path = out / f"{stem}.svg"
            for number in range(2, 10_000):  # two pairs whose names sanitise alike get distinct files
                if path not in written and path.with_suffix(".png") not in written:
                    break
                path = out / f"{stem}-{number}.svg"
            atomic_write_text(path, str(svg))  # replaces a symlink in the way, never writes through it
            written.append(path)
            if png:
                written.append(_svg_to_png(path))
    report = {"axis": suite.axis, "attention_onset_layer": summary.attention_onset, "mlp_peak_layer": summary.mlp_peak,
              "amplification": summary.amplification, "amplification_95ci": [summary.amplification_low, summary.amplification_high],
              "attention_by_layer": summary.attention_by_layer, "attention_noise_floor": summary.attention_floor,
              "mlp_by_layer": summary.mlp_by_layer, "pairs": [pair.pair_id for pair in chosen], "files": [str(p) for p in written]}
    atomic_write_text(out / "emergence.json", _dumps(report))
    causal = _diagnose_attribution(loaded, stats, verify) if verify is not None else None
    if causal is not None:
        if causal["svg"] is not None:
            atomic_write_text(out / "attribution-by-layer.svg", str(causal["svg"]))
            report["files"].append(str(out / "attribution-by-layer.svg"))
        report["attribution"] = {key: value for key, value in causal.items() if key != "svg"}
        atomic_write_text(out / "attribution.json", _dumps(report["attribution"]))
    if as_json:
        click.echo(_dumps(report))
        return
    onset = "none" if summary.attention_onset is None else f"layer {summary.attention_onset}"
    click.echo(f"{suite.axis}: attention divergence first exceeds the control noise floor at {onset}; MLP divergence peaks at "
               f"layer {summary.mlp_peak}; amplification last/first layer {summary.amplification:.2f} "
               f"[95% CI {summary.amplification_low:.2f}, {summary.amplification_high:.2f}]")
    click.echo(f"{len(written)} figures for {len(chosen)} pair(s) written to {out}")
    if verify is not None and causal is None:
        click.echo("attribution: not computed (the suite's probe pairs have no continuations, or the model has no language-model head)")
    elif causal is not None:
        click.echo("attribution peaks: " + "; ".join(f"{name} at layer {layer}" for name, layer in causal["peaks"].items())
                   + f"; rank correlation of divergence and attribution shares over layers {_number(causal['agreement'])}")
        for kind, found in causal["top"].items():
            _print_table([[kind, str(row["layer"]), str(row["unit"]), _number(row["estimate"]), _number(row["measured"])]
                          for row in found["rows"]], [f"top {kind} ({found['ranked_by']})", "layer", "unit", "estimated", "measured"])


def _diagnose_attribution(loaded, stats, verify: int):
    """`causal_view` of one axis from the output_attribution (and, with verify > 0, ablation) scorers."""
    from fairaudit.plugins import registry
    from fairaudit.report import causal_view
    from fairaudit.scoring import AxisScores
    from fairaudit.store import head_table, layer_table, neuron_table

    scores = AxisScores(axis=stats.axis, component="neuron")
    names = ["layer_index", "output_attribution"] + (["ablation"] if verify else [])
    for name in names:
        scorer = registry().get("scorer", name)
        params = scorer.Params(top=verify) if name == "ablation" else scorer.Params()
        scorer.compute(stats, loaded, scores, params)
    if not scores.head:
        return None
    return causal_view(stats.axis, layer_table(scores).to_pylist(), neuron_table(scores).to_pylist(), head_table(scores).to_pylist())


def _svg_to_png(path: Path) -> Path:
    import shutil
    import subprocess

    from fairaudit.errors import FairauditError

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise FairauditError("--png renders the SVG figures with a headless chromium, which is not installed "
                             "(Debian: apt-get install chromium); the SVG files were written.")
    target = path.with_suffix(".png")
    if target.is_symlink():
        target.unlink()  # chromium would write through it
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--no-first-run", f"--screenshot={target}", "--window-size=1000,700", path.resolve().as_uri()],
                   capture_output=True, timeout=120, check=False)
    if not target.exists():
        raise FairauditError(f"chromium could not render {path} to PNG; the SVG file was written.")
    return target


# --- overlap ----------------------------------------------------------------------------

@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--model", "models", multiple=True, required=True, help="model id as stored; give two to compare models")
@click.option("--run", "runs", multiple=True, help="run id per --model (default: each model's latest complete run)")
@click.option("--top", type=click.FloatRange(min=0, min_open=True, max=1e9), default=0.01, show_default=True,
              help="top-k per axis: a fraction (< 1) or a count (>= 1)")
@click.option("--score", default="scaled_bias", show_default=True, help="stored neuron score to rank by")
@click.option("--out", type=click.Path(path_type=Path), default=Path("fairaudit-out/overlap"), show_default=True)
@click.option("--match", "match_corpus", default=None, metavar="CORPUS",
              help="with two models: match their neurons on a text file's words ('bundled': fairaudit's corpus) and "
                   "compare top neurons through the matching")
@click.option("--permutations", type=click.IntRange(min=99), default=2000, show_default=True, help="with --match: null permutations")
@click.option("--max-words", type=click.IntRange(min=50), default=5000, show_default=True, help="with --match: corpus words read")
@click.option("--baselines", is_flag=True, help="with --match: also match two randomly initialised models of the same "
              "architectures (probed like the audited ones; should be at chance)")
@click.option("--json", "as_json", is_flag=True)
@_trust_options
def overlap(store, models, runs, top, score, out, match_corpus, permutations, max_words, baselines, as_json, granted) -> None:
    """Shared bias infrastructure: overlap of each axis' top neurons, across axes and models."""
    import pyarrow as pa

    from fairaudit.errors import StoreError
    from fairaudit.overlap import axis_overlap, load_scores, map_to_original, model_overlap
    from fairaudit.store import Store, write_tables

    if not Path(store).is_dir():
        raise StoreError(f"{store} is not a store folder (it does not exist).")
    if runs and len(runs) != len(models):
        raise click.UsageError("give one --run per --model, or none")
    from fairaudit.model import stored_name

    scores = [load_scores(Store(store), stored_name(model), score, runs[i] if runs else None) for i, model in enumerate(models)]
    tables = {}
    for model_scores in scores:
        result = axis_overlap(model_scores, top)
        name = model_scores.model
        tables.update({f"{name}.axis_pairs": result.pairs, f"{name}.per_layer": result.per_layer, f"{name}.shared_neurons": result.shared})
    if len(scores) == 2:
        width = max(values.shape[1] for model_scores in scores for values in model_scores.by_axis.values())
        mapped = [map_to_original(Store(store), model_scores, width) for model_scores in scores]
        tables["models"] = model_overlap(mapped[0], mapped[1], top)
    compared = None
    if match_corpus is not None:
        if len(scores) != 2:
            raise click.UsageError("--match compares two models: give --model twice")
        from fairaudit.matching import compare_models

        compared = compare_models(Store(store), scores[0], scores[1], match_corpus, top, permutations, max_words, frozenset(granted),
                                  baselines)
        tables["matched_overlap"] = pa.Table.from_pylist([{k: v for k, v in o.__dict__.items() if k != "mapped"} for o in compared.overlaps])
        tables["neuron_matching"] = pa.Table.from_pylist(compared.matching.rows())
        if compared.random_overlaps:
            tables["matched_overlap_random_models"] = pa.Table.from_pylist(
                [{k: v for k, v in o.__dict__.items() if k != "mapped"} for o in compared.random_overlaps])
    written = write_tables(out, tables)
    if compared is not None:
        from fairaudit.matching import figures
        from fairaudit.store import atomic_write_text

        for name, svg in figures(compared, scores[0].model, scores[1].model).items():
            atomic_write_text(Path(out) / f"{name}.svg", svg)
            written.append(Path(out) / f"{name}.svg")
    if as_json:
        click.echo(_dumps({name: table.to_pylist() for name, table in tables.items() if not name.endswith("per_layer")}))
        return
    for model_scores in scores:
        pairs = tables[f"{model_scores.model}.axis_pairs"].to_pylist()
        click.echo(f"\nmodel {model_scores.model}, run {model_scores.run_id}: top {top:g} by {score}")
        _print_table([[r["axis_a"], r["axis_b"], str(r["k_a"]), str(r["overlap"]), f"{r['expected']:.1f}",
                       f"{r['p_value']:.2e}", f"{r['jaccard']:.3f}", f"{r['spearman']:.3f}"] for r in pairs],
                     ["axis a", "axis b", "k", "overlap", "expected", "p (hypergeom.)", "jaccard", "spearman"])
        shared = tables[f"{model_scores.model}.shared_neurons"]
        click.echo(f"{shared.num_rows} neurons are in the top-k of two or more axes")
    if "models" in tables:
        click.echo("")
        _print_table([[r["axis"], f"{r['layers_a']}/{r['layers_b']}", str(r.get("overlap", "-")), f"{r['profile_spearman']:.3f}"]
                      for r in tables["models"].to_pylist()], ["axis", "layers", "neuron overlap", "depth-profile spearman"])
    if compared is not None:
        matching = compared.matching
        click.echo(f"\nneurons matched on {matching.words} words of {compared.corpus} (match run {compared.run_id}); layers of "
                   f"{scores[0].model} -> {scores[1].model}: {matching.alignment}")
        _print_table([[o.name, str(o.k_a), str(o.k_b), str(o.overlap), f"{o.null_mean:.1f} [{o.null_low:.0f}, {o.null_high:.0f}]",
                       f"{o.p_value:.4f}"] for o in compared.overlaps],
                     ["axis", "k a", "k b", "matched overlap", "null mean [95% range]", f"p ({compared.overlaps[0].permutations if compared.overlaps else 0} perm.)"])
        click.echo(f"sanity: {scores[0].model} matched with itself, neurons relabelled at random: {compared.self_recovery:.1%} recovered")
        if compared.random_overlaps:
            click.echo("sanity: two randomly initialised models of the same architectures, matched the same way (should be at chance):")
            _print_table([[o.name, str(o.overlap), f"{o.null_mean:.1f} [{o.null_low:.0f}, {o.null_high:.0f}]", f"{o.p_value:.4f}"]
                          for o in compared.random_overlaps], ["axis", "matched overlap", "null mean [95% range]", "p"])
    click.echo(f"tables written to {out} ({len(written)} files, Parquet and CSV)")


# --- prune ------------------------------------------------------------------------------

@main.command("prune", cls=_lists("scorer", "pruner"))
@click.option("--model", "model_id", required=True, help="the model the store's scores were computed on")
@click.option("--store", required=True, type=click.Path(path_type=Path))
@click.option("--axis", "axes", multiple=True, required=True,
              help="axis whose scores select neurons (with --causal: a built-in suite name or a suite file); repeat for several")
@click.option("--combine", type=click.Choice(["pooled", "mean", "max", "union", "intersection"]), default="pooled", show_default=True,
              help="several axes: rank by the hybrid of their pooled bias, by their mean (or largest) score, "
                   "or unite / intersect their selections")
@click.option("--fraction", type=float, default=0.002, show_default=True, help="share of neurons to prune, in (0, 1)")
@click.option("--scope", type=click.Choice(["per_layer", "global"]), default="per_layer", show_default=True)
@click.option("--layers", default=None, help="comma-separated layer indices to prune (default: all)")
@click.option("--score", default="hybrid_scaled", show_default=True,
              help="stored neuron score; higher = prune first ('hybrid' is optiPfair's). The scorers' columns are listed "
                   "below; the default audit also writes hybrid_scaled (the hybrid of scaled_bias)")
@click.option("--round-to", type=int, default=None, help="round each new MLP width down to a multiple of this")
@click.option("--protect", type=float, default=0.01, show_default=True, help="protect the top share of neurons by importance (0: none)")
@click.option("--direction", type=click.Choice(["any", "pro"]), default="any", show_default=True,
              help="pro: only neurons whose stereotype_push is > 0 (that push group a toward the negative continuation)")
@click.option("--only-biased-axes", is_flag=True,
              help="leave out axes whose output-level bias interval (templates resampled) contains 0 (needs output_attribution)")
@click.option("--pruner", default="structured", show_default=True, help="pruner plugin: structured (remove) or zero")
@click.option("--ablation", type=click.Choice(["zero", "mean"]), default="zero", show_default=True,
              help="mean: fold each removed neuron's mean activation (bundled corpus) times its output column into the bias")
@click.option("--run", "run_id", default=None, help="run whose scores to use (default: the model's latest complete run)")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="new folder for the pruned model")
@click.option("--save-dtype", type=click.Choice(["float32", "bfloat16", "float16", "source"]), default="float32", show_default=True,
              help="dtype of the saved model; source: the dtype the checkpoint's config declares")
@click.option("--causal", is_flag=True, help="choose neurons (and, with --causal-heads, attention heads) by their measured-and-attributed effect on each axis' output-level "
              "bias, in rounds, behind a quality guard, the budget chosen on validation templates (docs/attribution.md); "
              "ignores the score options")
@click.option("--budgets", default="0.0005,0.001,0.002", show_default=True,
              help="--causal: shares of all units (MLP neurons and attention heads; a head counts as one) to choose among")
@click.option("--causal-heads", is_flag=True,
              help="--causal: attention heads are candidates beside MLP neurons (a chosen head is zeroed)")
@click.option("--rounds", type=click.IntRange(1, 20), default=2, show_default=True, help="--causal: re-score after each round")
@click.option("--guard", type=click.FloatRange(min=0), default=0.003, show_default=True,
              help="--causal: skip a unit whose removal alone raises perplexity on a held-aside slice by more than this")
@click.option("--gate", type=click.Choice(["templates", "pairs", "none"]), default="templates", show_default=True,
              help="--causal: the 95%% interval of an axis' output bias that must exclude 0 for it to be selected for")
@click.option("--plan-in", type=click.Choice(["float32", "model"]), default="float32", show_default=True,
              help="--causal: the dtype of the planner's forward passes for a bfloat16 or float16 model (float32: its weights "
                   "cast up, then back; model: its own dtype, half the memory, a stricter guard)")
@click.option("--sweep", is_flag=True, help="--causal: after choosing, also measure every budget's held-out output bias "
              "(the curve against perplexity, in the prune record, --json and the report; evaluation only)")
@click.option("--heads", type=click.IntRange(min=0), default=0, show_default=True,
              help="also zero this many attention heads, those with the largest --head-score summed over the axes (exact, "
                   "shapes unchanged; needs the output_attribution scorer's head_scores)")
@click.option("--head-score", default="output_bias_reduction", show_default=True, help="stored head score; higher = zero first")
@click.option("--head-scope", type=click.Choice(["global", "per_layer"]), default="global", show_default=True,
              help="--heads K: the K best heads of the model, or K in every layer")
@click.option("--remove-heads", is_flag=True, help="remove the chosen heads from the weights instead of zeroing them (Llama-style "
              "attention, the same number in every layer, whole key/value groups; refused otherwise, before anything is written)")
@_device_options
@click.option("--quiet", is_flag=True, help="no progress lines, no table")
@click.option("--json", "as_json", is_flag=True)
def prune_command(model_id, store, axes, combine, fraction, scope, layers, score, round_to, protect, direction, only_biased_axes,
                  pruner, ablation, run_id, out, save_dtype, causal, budgets, causal_heads, rounds, guard, gate, plan_in, sweep, heads, head_score,
                  head_scope, remove_heads, device, dtype, quiet, as_json) -> None:
    """Fairness pruning: remove biased, unimportant MLP neurons; save a model transformers loads."""
    from pydantic import ValidationError

    from fairaudit.errors import ConfigError
    from fairaudit.prune import SelectionParams
    from fairaudit.runner import prune_model

    suites = None
    try:
        if causal:
            from fairaudit.causal import CausalParams
            from fairaudit.suite import resolve_suite

            params = CausalParams(budgets=[float(item) for item in budgets.split(",")], heads=causal_heads, rounds=rounds, guard=guard,
                                  gate=gate, heldout_curve=sweep, float32=plan_in == "float32")
            suites = [resolve_suite(name) for name in axes]  # checked before the model loads
        else:
            layer_list = [int(item) for item in layers.split(",")] if layers else None
            params = SelectionParams(axes=list(axes), score=score, fraction=fraction, scope=scope, layers=layer_list,
                                     combine=combine, round_to=round_to, protect=protect, direction=direction,
                                     only_biased_axes=only_biased_axes)
    except (ValueError, ValidationError) as exc:
        detail = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()) if isinstance(exc, ValidationError) else str(exc)
        raise ConfigError(f"prune options: {detail}.") from None
    if quiet or as_json:
        _silence_libraries()
    outcome = prune_model(_on_device(model_id, device, dtype), store, params, out, run_id=run_id, pruner=pruner,
                          pruner_params={"ablation": ablation} if ablation != "zero" else None, save_dtype=save_dtype,
                          progress=not (quiet or as_json), causal_suites=suites, heads=heads, head_score=head_score,
                          head_scope=head_scope, remove_heads=remove_heads)
    report = outcome.report
    if quiet:
        return
    if as_json:
        click.echo(_dumps({"run_id": outcome.run_id, "source_run": outcome.source_run, "out": str(outcome.out),
                               "widths_before": report.widths_before, "widths_after": report.widths_after,
                               "zeroed": [len(z) for z in report.zeroed], "removed": report.removed, "ranking": outcome.ranking, "causal": outcome.causal,
                               "heads": [list(head) for head in outcome.heads],
                               "parameters_before": report.parameters_before, "parameters_after": report.parameters_after}))
        return
    rows = [[str(layer), str(before), str(before - after + len(zeroed)), str(after), str(len(zeroed))]
            for layer, (before, after, zeroed) in enumerate(zip(report.widths_before, report.widths_after, report.zeroed))]
    _print_table(rows, ["layer", "width before", "pruned", "width after", "of which zeroed"])
    click.echo(f"neurons ranked by {outcome.ranking}")
    click.echo(f"neurons pruned: {report.removed} of {sum(report.widths_before)} "
               f"({100 * report.removed / sum(report.widths_before):.3f}%)")
    click.echo(f"parameters: {report.parameters_before:,} -> {report.parameters_after:,} "
               f"({report.parameters_removed_percent:.3f}% removed)")
    if outcome.causal and outcome.causal.get("heldout_curve"):
        click.echo("held-out output bias at every budget (evaluation only; the budget was chosen on validation templates):")
        _print_table([[str(row["budget"]), str(row["neurons"]), str(row.get("heads", 0)), row["axis"], _number(row["heldout_abs_bias_before"]),
                       _number(row["heldout_abs_bias_after"]), _percent(row["slice_perplexity_rise"])] for row in outcome.causal["heldout_curve"]],
                     ["budget", "neurons", "heads", "axis", "held-out |m| before", "after", "slice perplexity"])
    if outcome.heads:
        click.echo(f"attention heads {'removed' if remove_heads else 'zeroed'} (layer, head): "
                   f"{', '.join(f'({layer}, {head})' for layer, head in outcome.heads)}")
    click.echo(f"pruned model, tokenizer, neuron map and model card written to {outcome.out}; prune run {outcome.run_id}")


# --- report -----------------------------------------------------------------------------

@main.command("report")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--run", "run_id", default=None, help="audit run to report (default: the latest complete audit run)")
@click.option("--compare", "compare_run", default=None, help="a second run to show beside it (with a policy: how each verdict changed)")
@click.option("--policy", "policy_name", default=None, metavar="POLICY", help="open the report with this policy's verdicts "
              "(default: the policy the run was audited against, if any)")
@click.option("--sweep", "sweep_id", default=None, metavar="SWEEP_ID", help="render the grid report of a sweep instead")
@click.option("--out", type=click.Path(path_type=Path), default=Path("report.html"), show_default=True)
@click.option("--force", is_flag=True, help="replace a file at the JSON twin's name even if it is not a fairaudit report")
def report_command(store, run_id, compare_run, policy_name, sweep_id, out, force) -> None:
    """Render the HTML audit report (and report.json) of a stored run, or the grid report of a
    sweep. Reads the store only."""
    from fairaudit.policy import load_policy
    from fairaudit.report import render_report, render_sweep_report, report_data, sweep_data

    opened = _open_store(store)
    if sweep_id is not None:
        if run_id or compare_run or policy_name:
            raise click.UsageError("--sweep renders a whole grid; it takes no --run, --compare or --policy")
        html, twin = render_sweep_report(sweep_data(opened, sweep_id), out, force=force)
        click.echo(f"grid report written to {html} (numbers also in {twin})")
        return
    policy = load_policy(policy_name) if policy_name else None
    run_id = _latest_audit(opened, run_id)
    html, twin = render_report(report_data(opened, run_id, compare_run, policy=policy), out, force=force)
    click.echo(f"report written to {html} (numbers also in {twin})")


# --- sweeps ------------------------------------------------------------------------------

@main.command("sweep")
@click.argument("sweep_file", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: cells one after another in this process; ray: one Ray task per cell")
@click.option("--address", default=None, help="with --backend ray: an existing cluster (ray://host:10001 or auto); default: a local cluster")
@click.option("--num-cpus", type=int, default=None, help="with --backend ray and no --address: CPUs of the local cluster")
@click.option("--quiet", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@_trust_options
def sweep_command(sweep_file, backend, address, num_cpus, quiet, as_json, granted) -> None:
    """Run a grid of audits (models x suites x pruning settings ...) into one store; cells already
    complete are skipped, so rerunning a sweep finishes what a failure or a kill left."""
    from fairaudit.sweep import run_sweep

    if quiet or as_json:
        _silence_libraries()
    echo = (lambda outcome: None) if quiet or as_json else (
        lambda outcome: click.echo(f"cell {outcome.run_id}: {outcome.status}"
                                   + (f" in {outcome.seconds:.1f} s" if outcome.status == "complete" else "")
                                   + (f" ({outcome.error})" if outcome.error else ""), err=True))
    result = run_sweep(sweep_file, backend=backend, address=address, num_cpus=num_cpus, progress=echo, granted=frozenset(granted))
    outcomes = {outcome.run_id: outcome for outcome in result.outcomes}
    if as_json:
        click.echo(_dumps({"sweep": result.sweep_id, "store": str(result.store),
                               "cells": [{"run_id": cell.run_id, "values": cell.values, **outcomes[cell.run_id].__dict__}
                                         for cell in result.cells]}))
    elif not quiet:
        click.echo(f"\nsweep {result.sweep_id}: {len(result.cells)} cells in {result.store}")
        _print_table([[cell.run_id, cell.label(), outcomes[cell.run_id].status, f"{outcomes[cell.run_id].seconds:.1f}",
                       outcomes[cell.run_id].error[:80]] for cell in result.cells], ["run", "cell", "status", "seconds", "error"])
        click.echo(f"grid report: fairaudit report {result.store} --sweep {result.sweep_id} --out sweep.html")
    if any(outcome.status == "failed" for outcome in result.outcomes):
        sys.exit(1)


# --- compliance: check, card, bundle, verify ------------------------------------------------

def _open_store(store: Path):
    from fairaudit.errors import StoreError
    from fairaudit.store import Store

    if not Path(store).is_dir():
        raise StoreError(f"{store} is not a store folder (it does not exist).")
    return Store(store)


def _latest_audit(opened, run_id: str | None) -> str:
    from fairaudit.errors import StoreError

    if run_id is not None:
        return run_id
    audits = [r for r in opened.runs() if r.get("kind", "audit") == "audit" and r.get("status") == "complete"]
    if not audits:
        raise StoreError(f"store {opened.root} has no complete audit run.")
    return audits[-1]["run_id"]


def _policy_for(opened, run_id: str, policy_name: str | None):
    """The policy named on the command line, else the one the run was audited against."""
    from fairaudit.errors import ConfigError
    from fairaudit.policy import load_policy, stored_policy

    if policy_name is not None:
        return load_policy(policy_name)
    policy = stored_policy(opened.read_run(run_id))
    if policy is None:
        raise ConfigError(f"run {run_id} was not audited against a policy; name one with --policy (e.g. --policy default).")
    return policy


@main.command("check")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--policy", "policy_name", default=None, metavar="POLICY",
              help="policy file or built-in name (default: the policy the run was audited against)")
@click.option("--run", "run_id", default=None, help="run to check (default: the latest complete audit run)")
@click.option("--baseline", "baseline_run", default=None, metavar="RUN", help="an earlier run: show how each verdict changed")
@click.option("--gate", type=click.Choice(["auto", "original", "pruned"]), default="auto", show_default=True,
              help="the model whose must rules decide the exit status (auto: the pruned one when the run pruned)")
@click.option("--json", "as_json", is_flag=True, help="print the verdict table as JSON")
def check_command(store, policy_name, run_id, baseline_run, gate, as_json) -> None:
    """Check a stored run against a policy, without a model. Exit status: 0 every must rule
    passes, 1 a must rule fails, 3 a must rule is inconclusive or unmeasured, 2 user error."""
    from fairaudit.policy import evaluate_policy, exit_status, gate_role, verdict_changes

    opened = _open_store(store)
    run_id = _latest_audit(opened, run_id)
    policy = _policy_for(opened, run_id, policy_name)
    verdicts = evaluate_policy(policy, opened, run_id)
    changes = verdict_changes(evaluate_policy(policy, opened, baseline_run), verdicts) if baseline_run else None
    role = gate_role(verdicts, gate)
    if as_json:
        click.echo(_dumps({"run_id": run_id, "policy": policy.policy, "policy_sha256": policy.sha256(), "gate_model": role,
                           "exit_status": exit_status(verdicts, role), "verdicts": [v.as_dict() for v in verdicts],
                           "changes": changes}))
        _exit_on_verdicts(verdicts, gate, quiet=True)
    click.echo(f"run {run_id} against policy {policy.policy} (sha256 {policy.sha256()[:16]})")
    if changes is not None:
        click.echo(f"\nverdicts now vs run {baseline_run} (regressions first):")
        _print_table([[row["change"].upper(), row["rule"], row["severity"], row["model"], row["axis"], row["before"], row["after"]]
                      for row in changes], ["change", "rule", "severity", "model", "axis", "before", "now"])
        click.echo("")
    _print_verdicts(verdicts)
    _exit_on_verdicts(verdicts, gate, quiet=False)


@main.command("card")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--run", "run_id", default=None, help="audit run (default: the latest complete audit run)")
@click.option("--policy", "policy_name", default=None, metavar="POLICY", help="add verdicts of this policy (default: the run's own, if any)")
def card_command(store, run_id, policy_name) -> None:
    """Print a model-card "Bias, Risks, and Limitations" section (Markdown) for a stored run."""
    from fairaudit.card import bias_section
    from fairaudit.policy import load_policy

    opened = _open_store(store)
    run_id = _latest_audit(opened, run_id)
    click.echo(bias_section(opened, run_id, load_policy(policy_name) if policy_name else None), nl=False)


@main.command("bundle")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--run", "run_id", default=None, help="audit run (default: the latest complete audit run)")
@click.option("--policy", "policy_name", default=None, metavar="POLICY", help="policy for the verdicts (default: the run's own, if any)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="the zip file to write")
@click.option("--force", is_flag=True, help="replace --out if it exists")
def bundle_command(store, run_id, policy_name, out, force) -> None:
    """Write an audit bundle: report, run record, policy, suites, the run's tables and a manifest of hashes."""
    from fairaudit.bundle import write_bundle
    from fairaudit.policy import load_policy

    opened = _open_store(store)
    run_id = _latest_audit(opened, run_id)
    path, manifest_sha = write_bundle(opened, run_id, out, load_policy(policy_name) if policy_name else None, force=force)
    click.echo(f"bundle of run {run_id} written to {path}")
    click.echo(f"manifest sha256 {manifest_sha} (record it: 'fairaudit verify {path} --manifest-sha256 {manifest_sha}')")


@main.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--model", "model_id", default=None, help="also check that this model's weights are the audited ones")
@click.option("--manifest-sha256", "expected", default=None, help="the manifest hash recorded when the bundle was written")
@click.option("--trust-remote-code", is_flag=True, help="run code shipped with the model (only for models you trust)")
@click.option("--allow-pickle", is_flag=True, help="accept pickled (.bin) weights (only for models you trust)")
@click.option("--json", "as_json", is_flag=True)
def verify_command(bundle, model_id, expected, trust_remote_code, allow_pickle, as_json) -> None:
    """Recompute every hash in an audit bundle (and the weights hash with --model); exit 1 if anything differs."""
    from fairaudit.bundle import verify_bundle
    from fairaudit.model import ModelSpec

    model = ModelSpec(id=model_id, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle) if model_id else None
    result = verify_bundle(bundle, model, expected)
    if as_json:
        click.echo(_dumps({"ok": result.ok, "checked": result.checked, "manifest_sha256": result.manifest_sha256,
                               "problems": result.problems}))
    else:
        for problem in result.problems:
            click.echo(f"differs: {problem}")
        what = f"{result.checked} files" + (" and the model's weights" if model_id else "")
        click.echo(f"{'ok' if result.ok else 'FAILED'}: {what} checked against the manifest (sha256 {result.manifest_sha256}); "
                   f"{len(result.problems)} difference(s)")
    if not result.ok:
        sys.exit(1)


# --- store ------------------------------------------------------------------------------

@main.group("store")
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
        click.echo(_dumps(runs))
        return
    _print_table([[r["run_id"], r.get("status", "?"), r.get("model_id", "?"), ",".join(r.get("suites", {})), r.get("started", "")]
                  for r in runs], ["run_id", "status", "model", "axes", "started"])


if __name__ == "__main__":
    main()
