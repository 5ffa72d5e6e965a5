"""Which score to prune by: on a model audited in a store, mask 0.2% (and 1%) of the MLP
neurons of every layer chosen by several stored scores (and at random), and print the
bias index on held-out templates and the perplexity on part of the bundled corpus.

Usage: python benchmarks/selection_scores.py STORE [--model smollm2-135m] [--axes race gender] [--combine pooled]
(the store must hold a complete audit of the model, e.g. from `fairaudit audit`). Neurons are
chosen exactly as `fairaudit prune` chooses them (`fairaudit.pipeline.selection.plan_selection`).
"""

from __future__ import annotations

import argparse
import math

import torch

from fairaudit.analysis.overlap import latest_run, load_scores
from fairaudit.inputs.model import load_model
from fairaudit.inputs.suite import resolve_suite
from fairaudit.measurement import metrics
from fairaudit.measurement.evaluate import window_nll
from fairaudit.pipeline.selection import plan_selection
from fairaudit.plugins import registry
from fairaudit.repair.prune import Selection, SelectionParams, masked
from fairaudit.resources import corpus_path
from fairaudit.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--axes", nargs="+", default=["race", "gender"])
    parser.add_argument(
        "--scores", nargs="+", default=["hybrid", "bias", "hybrid_scaled", "scaled_bias", "bias_above_floor"]
    )
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.002, 0.01])
    parser.add_argument("--combine", default="pooled", choices=["pooled", "mean", "max"])
    parser.add_argument("--corpus-chars", type=int, default=8000)
    args = parser.parse_args()
    store = Store(args.store)
    run = latest_run(store, args.model)
    loaded = load_model(args.model)
    probe = registry().get("probe", "activations")
    probe_params = probe.Params(components=["attention", "mlp"], optipfair_index=False, progress=False)
    suites = {axis: resolve_suite(axis) for axis in args.axes}
    ids = loaded.tokenizer(corpus_path().read_text(encoding="utf-8")[: args.corpus_chars])["input_ids"]

    def measure() -> list[str]:
        windows = window_nll(loaded, ids, 512, 512)
        perplexity = math.exp(sum(n for n, _ in windows) / sum(t for _, t in windows))
        indices = [
            metrics.bias_index(probe.run(loaded, suite.pairs("heldout"), [], probe_params, axis))
            for axis, suite in suites.items()
        ]
        return [f"{value:.4f}" for value in indices] + [f"{perplexity:.2f}"]

    importance = load_scores(store, args.model, "importance_ppm", run).by_axis[args.axes[0]]
    header = ["selection", "fraction"] + [f"bias index {axis} (held-out)" for axis in args.axes] + ["perplexity"]
    rows = [["none", "0"] + measure()]
    layers, units = importance.shape
    for fraction in args.fractions:
        generator = torch.Generator().manual_seed(0)
        count = int(fraction * units)
        random = Selection(
            [torch.randperm(units, generator=generator)[:count].sort().values for _ in range(layers)], [units] * layers
        )
        with masked(loaded, random):
            rows.append(["random", str(fraction)] + measure())
        for score in args.scores:
            selection = plan_selection(
                store,
                args.model,
                run,
                SelectionParams(axes=args.axes, score=score, fraction=fraction, combine=args.combine),
            )
            with masked(loaded, selection):
                rows.append([score, str(fraction)] + measure())
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print(f"model {args.model}, run {run}, axes {args.axes} (combine: {args.combine}), top 1% importance protected")
    for row in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main()
