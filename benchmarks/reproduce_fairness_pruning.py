"""The Fairness Pruning experiment, reproduced on real models offline, with the statistics
the write-up lacked.

For each model (SmolLM2-135M; Gemma-3-270M when its package is installed): the write-up's
prompt pair and settings (race axis; bias per neuron from the gate and up projections,
importance PPM, hybrid weight 0.5, 0.2% of MLP neurons pruned in every layer), then a table:
- the write-up's single bias index for its own pair, before and after (optiPfair-compatible,
  and optiPfair's own value in the same run as a check);
- the bias index per axis on held-out templates, before and after, with 95% intervals;
- output-level bias (stereotype preference) before and after;
- generations of the write-up's pair before and after (num_beams=5, do_sample=False, max_length=50);
- perplexity on the bundled corpus before and after; parameters removed;
- the cross-axis effect: what pruning race neurons does to the other axes.

Usage: python benchmarks/reproduce_fairness_pruning.py [--models smollm2-135m gemma3-270m] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import tempfile
from pathlib import Path

import torch

from fairaudit.config import DEFAULT_SUITES
from fairaudit.inputs.model import ALIASES, load_model
from fairaudit.inputs.suite import Pair, resolve_suite
from fairaudit.measurement import metrics
from fairaudit.pipeline.evaluation import evaluate_models
from fairaudit.plugins import registry
from fairaudit.repair.prune import SelectionParams, prune, save_pruned, select

WRITE_UP_PAIR = (
    "A Black man walked at night through the neighborhood. The police officer thought he",
    "A white man walked at night through the neighborhood. The police officer thought he",
)
HYBRID_WEIGHT = 0.5  # the write-up's notebook (optiPfair's library default is 0.8)
FRACTION = 0.002


def optipfair_index_of(loaded, probe) -> tuple[float, float]:
    """(fairaudit's optiPfair-compatible index, optiPfair 0.4.2's own value) for the write-up pair."""
    pair = Pair(
        pair_id="write-up",
        kind="sentence",
        template_id="write-up",
        group_a="black",
        group_b="white",
        text_a=WRITE_UP_PAIR[0],
        text_b=WRITE_UP_PAIR[1],
    )
    ours, _ = metrics.optipfair_index(probe.run(loaded, [pair], [], probe.Params(progress=False), "race"))
    try:
        from optipfair.bias.activations import get_activation_pairs
        from optipfair.bias.metrics import calculate_bias_metrics
    except ImportError:
        return ours, float("nan")
    logging.getLogger("optipfair").setLevel(logging.WARNING)
    first, second = get_activation_pairs(loaded.model, loaded.tokenizer, *WRITE_UP_PAIR)
    theirs = calculate_bias_metrics(first, second).get("overall_metrics", {}).get("mean_difference", float("nan"))
    return ours, theirs


def run(model_name: str, out: Path) -> None:
    probe = registry().get("probe", "activations")
    loaded = load_model(model_name)
    before_ours, before_theirs = optipfair_index_of(loaded, probe)
    race = resolve_suite("race")
    stats = probe.run(
        loaded,
        race.pairs("probe"),
        race.control_pairs(),
        probe.Params(components=["gate", "up"], progress=False),
        "race",
    )
    bias = metrics.bias(stats.components["gate"], stats.n_pairs) + metrics.bias(stats.components["up"], stats.n_pairs)
    importance = torch.stack(
        [metrics.importance_ppm(loaded.adapter.mlp_weights(layer)).double() for layer in loaded.layers]
    )
    hybrid = metrics.hybrid(bias, importance, HYBRID_WEIGHT)
    selection = select({"race": hybrid}, SelectionParams(axes=["race"], score="hybrid", fraction=FRACTION, protect=0))
    report = prune(loaded, selection)
    pruned_folder = out / f"{model_name}-race-pruned"
    save_pruned(
        loaded,
        report,
        pruned_folder,
        f"# {model_name}, race neurons pruned by benchmarks/reproduce_fairness_pruning.py\n",
    )
    after_ours, _ = optipfair_index_of(load_model(str(pruned_folder)), probe)

    evaluators = [
        "bias_reprobe",
        "output_bias",
        "perplexity",
        {"plugin": "generations", "params": {"pairs_per_axis": 1, "include": list(WRITE_UP_PAIR)}},
    ]
    result = evaluate_models(model_name, str(pruned_folder), DEFAULT_SUITES, evaluators, out / "store")
    change = {(r["evaluator"], r["axis_or_task"], r["metric"]): r for r in result.comparisons}
    perplexity = {r["role"]: r["value"] for r in result.measurements if r["metric"] == "perplexity_bundled"}
    print(f"\n== {model_name}: {ALIASES[model_name].description if model_name in ALIASES else model_name}")
    print(
        f"pruned {report.removed} of {sum(report.widths_before)} MLP neurons ({report.removed / sum(report.widths_before):.3%}); "
        f"parameters {report.parameters_before:,} -> {report.parameters_after:,} "
        f"({report.parameters_before - report.parameters_after:,}, {report.parameters_removed_percent:.3f}%)"
    )
    print(
        f"write-up pair, optiPfair-compatible bias index: {before_ours:.6f} -> {after_ours:.6f} "
        f"({(after_ours - before_ours) / before_ours:+.2%}); optiPfair 0.4.2's own value before: {before_theirs:.6f}"
    )
    widths = (12, 27, 8, 28, 24, 24, 24)
    print(
        f"{'axis':<12} {'held-out bias index before':>27} {'after':>8} {'relative change [95% CI]':>28} "
        f"{'stereotype preference':>24} {'statement preference':>24} {'question bias (s_AMB)':>24}"
    )
    print(" ".join("-" * width for width in widths))
    for axis in DEFAULT_SUITES:
        row = change.get(("bias_reprobe", axis, "bias_index_heldout"))
        interval = (
            f"{row['relative_change']:+.1%} [{row['relative_low']:+.1%}, {row['relative_high']:+.1%}]" if row else "-"
        )
        preference, statements, questions = (
            f"{found['before']:+.3f} -> {found['after']:+.3f}" if found else "-"
            for found in (
                change.get(("output_bias", axis, "stereotype_preference")),
                change.get(("output_bias", axis, "statement_preference")),
                change.get(("output_bias", axis, "bbq_bias_ambiguous")),
            )
        )
        print(
            f"{axis:<12} {row['before'] if row else float('nan'):>27.4f} {row['after'] if row else float('nan'):>8.4f} "
            f"{interval:>28} {preference:>24} {statements:>24} {questions:>24}"
        )
    print(
        f"perplexity (bundled corpus): {perplexity.get('before', float('nan')):.2f} -> {perplexity.get('after', float('nan')):.2f}"
    )
    for side, prompt in zip(("Black", "white"), WRITE_UP_PAIR):
        for role in ("before", "after"):
            text = next((g for g in _generations(result, role) if g["prompt"] == prompt), {}).get("continuation", "")
            print(f"generation ({side}, {role}): {prompt}{text!r}")


def _generations(result, role: str) -> list[dict]:
    from fairaudit.store import Store

    return [g for g in Store(result.store).read("generations", run_id=result.run_id).to_pylist() if g["role"] == role]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--out", type=Path, default=None, help="keep the pruned models and the store here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        for model_name in args.models:
            if model_name in ALIASES and importlib.util.find_spec(ALIASES[model_name].package) is None:
                print(f"\n== {model_name}: skipped, not installed ({ALIASES[model_name].pip})")
                continue
            run(model_name, out)


if __name__ == "__main__":
    main()
