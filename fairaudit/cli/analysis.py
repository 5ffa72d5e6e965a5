"""The analysis commands: `diagnose` (where an axis' bias appears and grows, and what carries it
to the output) and `overlap` (neurons shared across axes and models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from fairaudit.cli.options import device_options, on_device, trust_options
from fairaudit.cli.output import dumps, number, print_table


@click.command("diagnose")
@click.option("--model", "model_id", required=True)
@click.option("--suite", "suite_name", required=True, help="built-in suite name or file")
@click.option(
    "--pair", "pair_ids", multiple=True, metavar="TEMPLATE_ID:GROUP_A:GROUP_B", help="pair to diagnose; repeat"
)
@click.option(
    "--top", type=click.IntRange(min=1), default=3, show_default=True, help="without --pair: the K most divergent pairs"
)
@click.option("--layer", type=int, default=None, help="layer of the PCA view (default: where MLP divergence peaks)")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--png", is_flag=True, help="also write PNG files (renders the SVG with Debian's chromium)")
@click.option(
    "--attribution",
    "verify",
    type=click.IntRange(min=0),
    default=None,
    metavar="K",
    help="also: each layer's share of the output attribution beside its share of the divergence, and the top "
    "neurons and heads by the measured effect of ablating each of the K largest estimates alone (0: estimates only)",
)
@device_options
@click.option("--json", "as_json", is_flag=True)
def diagnose_command(model_id, suite_name, pair_ids, top, layer, out, png, verify, device, dtype, as_json) -> None:
    """Where the bias appears and how it grows: per-token x per-layer divergence maps, PCA of
    token representations, and the axis' emergence summary; with --attribution K, what carries
    it to the output."""
    from fairaudit.analysis.diagnose import run

    found = run(on_device(model_id, device, dtype), suite_name, pair_ids, top, layer, out, png, verify)
    if as_json:
        click.echo(dumps(found.report))
        return
    summary, causal = found.summary, found.attribution
    onset = "none" if summary.attention_onset is None else f"layer {summary.attention_onset}"
    click.echo(
        f"{found.axis}: attention divergence first exceeds the control noise floor at {onset}; MLP divergence peaks at "
        f"layer {summary.mlp_peak}; amplification last/first layer {summary.amplification:.2f} "
        f"[95% CI {summary.amplification_low:.2f}, {summary.amplification_high:.2f}]"
    )
    click.echo(
        f"{len([f for f in found.files if f.name != 'attribution-by-layer.svg'])} figures for {len(found.pairs)} pair(s) "
        f"written to {out}"
    )
    if verify is not None and causal is None:
        click.echo(
            "attribution: not computed (the suite's probe pairs have no continuations, or the model has no language-model head)"
        )
    elif causal is not None:
        click.echo(
            "attribution peaks: "
            + "; ".join(f"{name} at layer {layer}" for name, layer in causal["peaks"].items())
            + f"; rank correlation of divergence and attribution shares over layers {number(causal['agreement'])}"
        )
        for kind, rows in causal["top"].items():
            print_table(
                [
                    [kind, str(row["layer"]), str(row["unit"]), number(row["estimate"]), number(row["measured"])]
                    for row in rows["rows"]
                ],
                [f"top {kind} ({rows['ranked_by']})", "layer", "unit", "estimated", "measured"],
            )


@click.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--model", "models", multiple=True, required=True, help="model id as stored; give two to compare models")
@click.option("--run", "runs", multiple=True, help="run id per --model (default: each model's latest complete run)")
@click.option(
    "--top",
    type=click.FloatRange(min=0, min_open=True, max=1e9),
    default=0.01,
    show_default=True,
    help="top-k per axis: a fraction (< 1) or a count (>= 1)",
)
@click.option("--score", default="scaled_bias", show_default=True, help="stored neuron score to rank by")
@click.option("--out", type=click.Path(path_type=Path), default=Path("fairaudit-out/overlap"), show_default=True)
@click.option(
    "--match",
    "match_corpus",
    default=None,
    metavar="CORPUS",
    help="with two models: match their neurons on a text file's words ('bundled': fairaudit's corpus) and "
    "compare top neurons through the matching",
)
@click.option(
    "--permutations",
    type=click.IntRange(min=99),
    default=2000,
    show_default=True,
    help="with --match: null permutations",
)
@click.option(
    "--max-words", type=click.IntRange(min=50), default=5000, show_default=True, help="with --match: corpus words read"
)
@click.option(
    "--baselines",
    is_flag=True,
    help="with --match: also match two randomly initialised models of the same "
    "architectures (probed like the audited ones; should be at chance)",
)
@click.option("--json", "as_json", is_flag=True)
@trust_options
def overlap(
    store, models, runs, top, score, out, match_corpus, permutations, max_words, baselines, as_json, granted
) -> None:
    """Shared bias infrastructure: overlap of each axis' top neurons, across axes and models."""
    from fairaudit.analysis.comparison import run

    if runs and len(runs) != len(models):
        raise click.UsageError("give one --run per --model, or none")
    if match_corpus is not None and len(models) != 2:
        raise click.UsageError("--match compares two models: give --model twice")
    found = run(
        store, models, runs, top, score, out, match_corpus, permutations, max_words, baselines, frozenset(granted)
    )
    if as_json:
        click.echo(
            dumps({name: table.to_pylist() for name, table in found.tables.items() if not name.endswith("per_layer")})
        )
        return
    _print_overlap(found, top, score, out)


def _print_overlap(found: Any, top: float, score: str, out: Path) -> None:
    """The overlap tables as the command prints them (`fairaudit.analysis.comparison.OverlapRun`)."""
    scores, tables, compared, written = found.scores, found.tables, found.compared, found.written
    for model_scores in scores:
        pairs = tables[f"{model_scores.model}.axis_pairs"].to_pylist()
        click.echo(f"\nmodel {model_scores.model}, run {model_scores.run_id}: top {top:g} by {score}")
        print_table(
            [
                [
                    r["axis_a"],
                    r["axis_b"],
                    str(r["k_a"]),
                    str(r["overlap"]),
                    f"{r['expected']:.1f}",
                    f"{r['p_value']:.2e}",
                    f"{r['jaccard']:.3f}",
                    f"{r['spearman']:.3f}",
                ]
                for r in pairs
            ],
            ["axis a", "axis b", "k", "overlap", "expected", "p (hypergeom.)", "jaccard", "spearman"],
        )
        shared = tables[f"{model_scores.model}.shared_neurons"]
        click.echo(f"{shared.num_rows} neurons are in the top-k of two or more axes")
    if "models" in tables:
        click.echo("")
        print_table(
            [
                [
                    r["axis"],
                    f"{r['layers_a']}/{r['layers_b']}",
                    str(r.get("overlap", "-")),
                    f"{r['profile_spearman']:.3f}",
                ]
                for r in tables["models"].to_pylist()
            ],
            ["axis", "layers", "neuron overlap", "depth-profile spearman"],
        )
    if compared is not None:
        _print_matching(compared, scores)
    click.echo(f"tables written to {out} ({len(written)} files, Parquet and CSV)")


def _print_matching(compared: Any, scores: list[Any]) -> None:
    """The matched overlaps of two models (`fairaudit overlap --match`) and their sanity checks."""
    matching = compared.matching
    click.echo(
        f"\nneurons matched on {matching.words} words of {compared.corpus} (match run {compared.run_id}); layers of "
        f"{scores[0].model} -> {scores[1].model}: {matching.alignment}"
    )
    print_table(
        [
            [
                o.name,
                str(o.k_a),
                str(o.k_b),
                str(o.overlap),
                f"{o.null_mean:.1f} [{o.null_low:.0f}, {o.null_high:.0f}]",
                f"{o.p_value:.4f}",
            ]
            for o in compared.overlaps
        ],
        [
            "axis",
            "k a",
            "k b",
            "matched overlap",
            "null mean [95% range]",
            f"p ({compared.overlaps[0].permutations if compared.overlaps else 0} perm.)",
        ],
    )
    click.echo(
        f"sanity: {scores[0].model} matched with itself, neurons relabelled at random: {compared.self_recovery:.1%} recovered"
    )
    if compared.random_overlaps:
        click.echo(
            "sanity: two randomly initialised models of the same architectures, matched the same way (should be at chance):"
        )
        print_table(
            [
                [
                    o.name,
                    str(o.overlap),
                    f"{o.null_mean:.1f} [{o.null_low:.0f}, {o.null_high:.0f}]",
                    f"{o.p_value:.4f}",
                ]
                for o in compared.random_overlaps
            ],
            ["axis", "matched overlap", "null mean [95% range]", "p"],
        )
