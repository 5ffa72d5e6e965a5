"""`fairaudit prune`: its flags are the fields of `fairaudit.config.PruningConfig` (a stored-score
`selection`, or `causal`, plus `heads` and the output options), each default taken from the
field; the command builds one `PruningConfig` and calls `fairaudit.pipeline.pruning.prune_model`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from fairaudit.cli.options import device_options, field_option, given, lists, on_device, quiet_mode
from fairaudit.cli.output import dumps, erasure_said, number, percent, print_table
from fairaudit.config import CausalParams, HeadsParams, PruningConfig, SelectionParams
from fairaudit.errors import ConfigError


def _comma_list(kind: type) -> Any:
    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> list[Any] | None:
        if value is None:
            return None
        try:
            return [kind(item) for item in value.split(",")]
        except ValueError:
            raise click.BadParameter(f"'{value}' is not a comma-separated list of {kind.__name__}s") from None

    return parse


@click.command("prune", cls=lists("scorer", "pruner"))
@click.option("--model", "model_id", required=True, help="the model the store's scores were computed on")
@click.option("--store", required=True, type=click.Path(path_type=Path))
@click.option(
    "--axis",
    "axes",
    multiple=True,
    required=True,
    help="axis whose scores select neurons (with --causal: a built-in suite name or a suite file); repeat for several",
)
@field_option(
    "--combine",
    model=SelectionParams,
    field="combine",
    type=click.Choice(["pooled", "mean", "max", "union", "intersection"]),
)
@field_option("--fraction", model=SelectionParams, field="fraction", type=float)
@field_option("--scope", model=SelectionParams, field="scope", type=click.Choice(["per_layer", "global"]))
@field_option(
    "--layers",
    model=SelectionParams,
    field="layers",
    callback=_comma_list(int),
    help="comma-separated layer indices to prune (default: all)",
)
@field_option(
    "--score",
    model=SelectionParams,
    field="score",
    help="stored neuron score; higher = prune first ('hybrid' is optiPfair's). The scorers' columns are listed "
    "below; the default audit also writes hybrid_scaled (the hybrid of scaled_bias)",
)
@field_option("--round-to", model=SelectionParams, field="round_to", type=int)
@field_option("--protect", model=SelectionParams, field="protect", type=float)
@field_option(
    "--importance", model=SelectionParams, field="importance", help="stored score whose top share --protect protects"
)
@field_option(
    "--direction",
    model=SelectionParams,
    field="direction",
    type=click.Choice(["any", "pro"]),
    help="pro: only neurons whose --push score is > 0 (that push group a toward the negative continuation)",
)
@field_option("--push", model=SelectionParams, field="push", help="with --direction pro: the stored signed score")
@click.option(
    "--only-biased-axes", is_flag=True, default=None, help=SelectionParams.model_fields["only_biased_axes"].description
)
@click.option("--pruner", default="structured", show_default=True, help="pruner plugin: structured (remove) or zero")
@click.option(
    "--ablation",
    type=click.Choice(["zero", "mean"]),
    default=None,
    show_default="zero",
    help="mean: fold each removed neuron's mean activation (bundled corpus) times its output column into the bias",
)
@click.option(
    "--run", "run_id", default=None, help="run whose scores to use (default: the model's latest complete run)"
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="new folder for the pruned model")
@field_option(
    "--save-dtype",
    model=PruningConfig,
    field="save_dtype",
    type=click.Choice(["float32", "bfloat16", "float16", "source"]),
)
@click.option(
    "--causal",
    is_flag=True,
    help="choose neurons (and, with --causal-heads, attention heads) by their measured-and-attributed "
    "effect on each axis' output-level bias, in rounds, behind a quality guard, the budget chosen on validation templates "
    "(docs/attribution.md); ignores the score options",
)
@field_option(
    "--budgets",
    model=CausalParams,
    field="budgets",
    callback=_comma_list(float),
    help="--causal: shares of all units (MLP neurons and attention heads; a head counts as one) to choose among",
)
@field_option(
    "--method",
    model=CausalParams,
    field="method",
    type=click.Choice(["neurons", "erase", "compare"]),
    help="--causal: remove neurons (and heads), erase each gated axis' counterfactual direction from every "
    "layer's writes (a rank-k edit folded into the weights), or plan both and keep the better on validation "
    "(docs/attribution.md)",
)
@field_option(
    "--rank",
    model=CausalParams,
    field="rank",
    type=click.IntRange(1, 16),
    help="--method erase: directions per gated axis",
)
@field_option(
    "--strengths",
    model=CausalParams,
    field="strengths",
    callback=_comma_list(float),
    help="--method erase: shares of the directions removed to choose among on validation",
)
@field_option(
    "--erase-from",
    model=CausalParams,
    field="erase_from",
    callback=_comma_list(float),
    help="--method erase: where the fold may start, as shares of the depth, to choose among with each strength",
)
@click.option(
    "--causal-heads",
    is_flag=True,
    default=None,
    help="--causal: attention heads are candidates beside MLP neurons (a chosen head is zeroed)",
)
@field_option(
    "--rounds",
    model=CausalParams,
    field="rounds",
    type=click.IntRange(1, 20),
    help="--causal: re-score after each round",
)
@field_option(
    "--guard",
    model=CausalParams,
    field="guard",
    type=click.FloatRange(min=0),
    help="--causal: skip a unit whose removal alone raises perplexity on a held-aside slice by more than this",
)
@field_option(
    "--max-perplexity-rise",
    model=CausalParams,
    field="max_perplexity_rise",
    type=click.FloatRange(min=0),
    help="--causal: a budget's limit on the rise of perplexity on the validation corpus slice (relative)",
)
@field_option(
    "--max-fact-drop",
    model=CausalParams,
    field="max_fact_drop",
    type=click.FloatRange(0, 1),
    help="--causal: a budget's limit on the drop of accuracy on the bundled validation facts (1: no fact guard)",
)
@field_option(
    "--gate",
    model=CausalParams,
    field="gate",
    type=click.Choice(["templates", "pairs", "none"]),
    help="--causal: the 95%% interval of an axis' output bias that must exclude 0 for it to be selected for",
)
@field_option(
    "--validation-every",
    model=CausalParams,
    field="validation_every",
    type=click.IntRange(min=2),
    help="--causal: every k-th probe template is for validation (choosing the budget)",
)
@click.option(
    "--collateral/--no-collateral",
    default=None,
    help="--causal: reject a budget that moves an axis left alone away from zero on its validation templates "
    "(default: on)",
)
@click.option(
    "--statements/--no-statements",
    default=None,
    help="--causal: choose the budget on the axes' probe statements too, a format the selection never reads "
    "(default: on)",
)
@click.option(
    "--plan-in",
    type=click.Choice(["float32", "model"]),
    default=None,
    show_default="float32",
    help="--causal: the dtype of the planner's forward passes for a bfloat16 or float16 model (float32: its weights "
    "cast up, then back; model: its own dtype, half the memory, a stricter guard)",
)
@click.option(
    "--heldout-curve",
    "--sweep",
    "heldout_curve",
    is_flag=True,
    default=None,
    help="--causal: after choosing, also measure every budget's held-out output bias (the curve against perplexity, "
    "in the prune record, --json and the report; evaluation only)",
)
@click.option(
    "--heads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="also zero this many attention heads, those with the largest --head-score summed over the axes (exact, "
    "shapes unchanged; needs the output_attribution scorer's head_scores)",
)
@field_option("--head-score", model=HeadsParams, field="score")
@field_option("--head-scope", model=HeadsParams, field="scope", type=click.Choice(["global", "per_layer"]))
@click.option("--remove-heads", is_flag=True, default=None, help=PruningConfig.model_fields["remove_heads"].description)
@device_options
@click.option("--quiet", is_flag=True, help="no progress lines, no table")
@click.option("--json", "as_json", is_flag=True)
def prune_command(
    model_id: str,
    store: Path,
    axes: tuple[str, ...],
    run_id: str | None,
    out: Path,
    causal: bool,
    device: str | None,
    dtype: str | None,
    quiet: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Fairness pruning: remove biased, unimportant MLP neurons; save a model transformers loads."""
    from fairaudit.inputs.suite import resolve_suite
    from fairaudit.pipeline.pruning import prune_model

    pruning = _pruning(causal, axes, options)
    suites = [resolve_suite(name) for name in axes] if causal else None  # checked before the model loads
    if quiet or as_json:
        quiet_mode()
    outcome = prune_model(on_device(model_id, device, dtype), store, pruning, out, suites=suites, run_id=run_id)
    if not quiet:
        _print_outcome(outcome, as_json)


def _pruning(causal: bool, axes: tuple[str, ...], options: dict[str, Any]) -> PruningConfig:
    """The `PruningConfig` the flags describe (a user error if they do not fit together)."""
    heads = options.pop("heads")
    plan_in = options.pop("plan_in")
    section: dict[str, Any] = given(
        pruner={"plugin": options.pop("pruner"), "params": given(ablation=options.pop("ablation"))},
        save_dtype=options.pop("save_dtype"),
        remove_heads=options.pop("remove_heads"),
    )
    head_fields = given(count=heads or None, score=options.pop("head_score"), scope=options.pop("head_scope"))
    causal_fields = given(
        budgets=options.pop("budgets"),
        method=options.pop("method"),
        rank=options.pop("rank"),
        strengths=options.pop("strengths"),
        erase_from=options.pop("erase_from"),
        heads=options.pop("causal_heads"),
        rounds=options.pop("rounds"),
        guard=options.pop("guard"),
        max_perplexity_rise=options.pop("max_perplexity_rise"),
        max_fact_drop=options.pop("max_fact_drop"),
        gate=options.pop("gate"),
        validation_every=options.pop("validation_every"),
        heldout_curve=options.pop("heldout_curve"),
        collateral=options.pop("collateral"),
        statements=options.pop("statements"),
        float32=None if plan_in is None else plan_in == "float32",
    )
    if causal:
        section.update(causal=causal_fields, selection=None)
    else:
        section.update(causal=None, selection={"axes": list(axes), **given(**options)})
    if heads:  # with --causal, refused by PruningConfig: the planner chooses heads itself (--causal-heads)
        section["heads"] = head_fields
    try:
        return PruningConfig.model_validate(section)
    except ValidationError as exc:
        detail = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(f"prune options: {detail}.") from None


def _print_outcome(outcome: Any, as_json: bool) -> None:
    report = outcome.report
    if as_json:
        click.echo(
            dumps(
                {
                    "run_id": outcome.run_id,
                    "source_run": outcome.source_run,
                    "out": str(outcome.out),
                    "widths_before": report.widths_before,
                    "widths_after": report.widths_after,
                    "zeroed": [len(z) for z in report.zeroed],
                    "removed": report.removed,
                    "ranking": outcome.ranking,
                    "causal": outcome.causal,
                    "heads": [list(head) for head in outcome.heads],
                    "parameters_before": report.parameters_before,
                    "parameters_after": report.parameters_after,
                }
            )
        )
        return
    rows = [
        [str(layer), str(before), str(before - after + len(zeroed)), str(after), str(len(zeroed))]
        for layer, (before, after, zeroed) in enumerate(zip(report.widths_before, report.widths_after, report.zeroed))
    ]
    print_table(rows, ["layer", "width before", "pruned", "width after", "of which zeroed"])
    click.echo(erasure_said(outcome.causal) or f"neurons ranked by {outcome.ranking}")
    click.echo(
        f"neurons pruned: {report.removed} of {sum(report.widths_before)} "
        f"({100 * report.removed / sum(report.widths_before):.3f}%)"
    )
    click.echo(
        f"parameters: {report.parameters_before:,} -> {report.parameters_after:,} "
        f"({report.parameters_removed_percent:.3f}% removed)"
    )
    if outcome.causal and outcome.causal.get("heldout_curve"):
        click.echo(
            "held-out output bias at every budget (evaluation only; the budget was chosen on validation templates):"
        )
        print_table(
            [
                [
                    str(row["budget"]),
                    str(row["neurons"]),
                    str(row.get("heads", 0)),
                    row["axis"],
                    number(row["heldout_abs_bias_before"]),
                    number(row["heldout_abs_bias_after"]),
                    percent(row["slice_perplexity_rise"]),
                ]
                for row in outcome.causal["heldout_curve"]
            ],
            ["budget", "neurons", "heads", "axis", "held-out |m| before", "after", "slice perplexity"],
        )
    if outcome.heads:
        click.echo(
            f"attention heads {'removed' if outcome.pruning.remove_heads else 'zeroed'} (layer, head): "
            f"{', '.join(f'({layer}, {head})' for layer, head in outcome.heads)}"
        )
    click.echo(
        f"pruned model, tokenizer, neuron map and model card written to {outcome.out}; prune run {outcome.run_id}"
    )
