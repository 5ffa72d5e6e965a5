"""Ground truth: on a model with planted bias neurons (`fairaudit.testing.make_planted_model`),
run the real pipeline (fairaudit.audit with pruning and evaluators) and print how much of
what was planted the audit finds, shares, protects and removes.

Usage: python benchmarks/ground_truth.py [--seed 0] [--scores hybrid hybrid_scaled] [--families llama gpt2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from fairaudit.analysis.overlap import axis_overlap, load_scores
from fairaudit.config import RunConfig
from fairaudit.pipeline.audit import audit
from fairaudit.pipeline.selection import plan_selection
from fairaudit.store import Store
from fairaudit.testing import make_planted_model

AXES = ["race", "gender", "religion", "nationality"]


def ground_truth_figures(root: Path, seed: int = 0, score: str = "hybrid_scaled", family: str = "llama") -> dict:
    """Plant, audit, prune, evaluate; return the figures (also used by tests/test_ground_truth.py)."""
    truth = make_planted_model(root / "model", seed=seed, family=family)
    unimportant = {(n.layer, n.neuron) for n in truth.neurons if not n.important}
    layer = truth.neurons[0].layer
    width = 128
    config = RunConfig.model_validate(
        {
            "model": str(root / "model"),
            "suites": AXES,
            "store": str(root / "store"),
            "seed": seed,
            "probe": {"plugin": "activations", "params": {"progress": False}},
            "pruning": {
                "out": str(root / "pruned"),
                "selection": {"score": score, "layers": [layer], "fraction": len(unimportant) / width},
            },
            "evaluators": ["bias_reprobe", "output_bias", {"plugin": "perplexity", "params": {"max_length": 256}}],
            "report": False,
        }
    )
    result = audit(config)
    store = Store(root / "store")
    figures: dict = {"recovery": {}, "sharing": {}, "effect": {}, "truth": truth}
    bias = load_scores(store, result.model_id, "bias", result.run_id)
    for axis in truth.axes:
        planted = truth.planted(axis)
        values = bias.by_axis[axis]
        order = np.argsort(-np.nan_to_num(values.ravel(), nan=-np.inf), kind="stable")[: len(planted)]
        found = {(int(i) // values.shape[1], int(i) % values.shape[1]) for i in order}
        hits = len(found & planted)
        figures["recovery"][axis] = {"precision": hits / len(found), "recall": hits / len(planted), "k": len(planted)}
    overlap = axis_overlap(bias, top=len(truth.planted("race")))
    for row in overlap.pairs.to_pylist():
        figures["sharing"][(row["axis_a"], row["axis_b"])] = {
            "overlap": row["overlap"],
            "expected": row["expected"],
            "p_value": row["p_value"],
        }
    shared_found = {
        (r["layer"], r["neuron"]) for r in overlap.shared.to_pylist() if "race" in r["axes"] and "gender" in r["axes"]
    }
    figures["shared_recovered"] = len(truth.shared() & shared_found) / len(truth.shared())
    kept = {(row["layer"], row["original_index"]) for row in store.read("neuron_maps").to_pylist() if not row["zeroed"]}
    pruned = {(layer, neuron) for neuron in range(width)} - {k for k in kept if k[0] == layer}
    figures["pruned_planted_unimportant"] = len(pruned & unimportant) / len(unimportant)
    important = {(n.layer, n.neuron) for n in truth.neurons if n.important}
    figures["pruned_planted_important"] = sorted(pruned & important)

    def chosen(update):
        return {
            (layer, int(n))
            for n in plan_selection(
                store, result.model_id, result.run_id, config.pruning.for_axes(AXES).selection.model_copy(update=update)
            ).pruned[layer]
        }

    figures["unguarded_important"] = sorted(chosen({"protect": 0.0}) & important)
    figures["by_combine"] = {
        combine: len(chosen({"combine": combine}) & unimportant) for combine in ("pooled", "mean", "max")
    }
    change = {(r["evaluator"], r["axis_or_task"], r["metric"]): r for r in result.comparisons}
    for axis in truth.axes:
        gap = change[("output_bias", axis, "logprob_gap_negative")]
        index = change[("bias_reprobe", axis, "bias_index")]
        figures["effect"][axis] = {
            "gap_before": gap["before"],
            "gap_after": gap["after"],
            "gap_drop": 1 - abs(gap["after"]) / abs(gap["before"]),
            "index_before": index["before"],
            "index_after": index["after"],
            "index_drop": 1 - index["after"] / index["before"],
        }
    perplexity = {r["role"]: r["value"] for r in result.measurements if r["metric"].startswith("perplexity")}
    figures["perplexity"] = (perplexity["before"], perplexity["after"], perplexity["after"] / perplexity["before"] - 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scores", nargs="+", default=["hybrid", "hybrid_scaled"])
    parser.add_argument("--families", nargs="+", default=["llama", "gpt2"])
    args = parser.parse_args()
    for family in args.families:
        for score in args.scores:
            with tempfile.TemporaryDirectory() as scratch:
                report(ground_truth_figures(Path(scratch), args.seed, score, family), args.seed, score, family)


def report(figures: dict, seed: int, score: str, family: str) -> None:
    important = [n for n in figures["truth"].neurons if n.important]
    print(f"\nplanted-bias {family} (seed {seed}); pruning score {score} at the default weight 0.8")
    print("recovery (top-k by bias, k = planted neurons of the axis):")
    for axis, row in figures["recovery"].items():
        print(f"  {axis:<9} k={row['k']:<3} precision {row['precision']:.2f}  recall {row['recall']:.2f}")
    print("sharing (overlap of the top-k, hypergeometric p):")
    for (a, b), row in sorted(figures["sharing"].items()):
        print(f"  {a:>11} x {b:<11} overlap {row['overlap']:<3} expected {row['expected']:.2f}  p {row['p_value']:.2e}")
    print(f"  planted shared neurons listed as shared by race and gender: {figures['shared_recovered']:.0%}")
    print(
        f"protection: planted important neurons pruned: {figures['pruned_planted_important'] or 'none'}; "
        f"planted unimportant neurons pruned: {figures['pruned_planted_unimportant']:.0%}; without the importance "
        f"guard (protect 0), planted important neurons selected: {len(figures['unguarded_important'])} of {len(important)}"
    )
    unimportant = sum(not n.important for n in figures["truth"].neurons)
    print(
        f"planted unimportant neurons selected (of {unimportant}) with combine "
        + ", ".join(f"{combine}: {count}" for combine, count in figures["by_combine"].items())
    )
    print("effect of pruning:")
    for axis, row in figures["effect"].items():
        print(
            f"  {axis:<9} negative-continuation gap {row['gap_before']:+.3f} -> {row['gap_after']:+.3f} "
            f"(drop {row['gap_drop']:.0%}); bias index {row['index_before']:.4f} -> {row['index_after']:.4f} (drop {row['index_drop']:.0%})"
        )
    before, after, relative = figures["perplexity"]
    print(f"  perplexity on the bundled corpus {before:.2f} -> {after:.2f} ({relative:+.2%})")


if __name__ == "__main__":
    main()
