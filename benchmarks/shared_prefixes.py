"""Output-level scoring with shared prefixes: fewer tokens, the same numbers, the same decisions.

Every output-level measurement (output_bias, the random baseline, the causal planner's gate and
budget, facts) sums log-probabilities of continuations given a context. Each distinct context
is now forwarded once and its continuations scored from its KV cache
(`fairaudit.measurement.evaluate.SHARE_PREFIXES`); before, every (context, continuation) request
was forwarded whole. On one model (default: SmolLM2-135M, the default audit's), this script
prints, for both ways, the token positions forwarded and the wall seconds of scoring every
request of the built-in suites, and the largest difference between the two ways' values; with
`--plan`, it also runs the causal planner both ways (religion and nationality, budgets 0.05%
and 0.1%, one round) and says whether every decision is the same.

Usage: python benchmarks/shared_prefixes.py [--model smollm2-135m] [--plan]
"""

from __future__ import annotations

import argparse
import time

from audit_stages import machine  # this folder: the CPU model and cores

from fairaudit.config import DEFAULT_SUITES, CausalParams
from fairaudit.inputs.model import load_model
from fairaudit.inputs.suite import resolve_suites
from fairaudit.measurement import evaluate
from fairaudit.measurement.metrics import output_bias_terms
from fairaudit.repair.causal import plan
from fairaudit.resources import corpus_path


def pruned(found) -> list[list[int]] | None:
    """Per layer, the neuron indices a plan chose (None: it chose nothing)."""
    return None if found.selection is None else [layer.tolist() for layer in found.selection.pruned]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--plan", action="store_true", help="also run the causal planner both ways")
    args = parser.parse_args()
    loaded = load_model(args.model)
    suites = resolve_suites(list(DEFAULT_SUITES))
    requests = list(
        dict.fromkeys(
            (context, continuation)
            for suite in suites
            for pair in suite.pairs(None) + suite.statement_pairs()
            for context, continuation, _ in output_bias_terms(pair)
        )
    )
    import torch

    print(f"machine: {machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{args.model}: {len(requests)} distinct (context, continuation) requests of the built-in suites")
    print(f"{'scoring':<16} {'tokens':>9} {'wall s':>8}")
    print(f"{'-' * 16} {'-' * 9} {'-' * 8}")
    values = {}
    for share in (False, True):
        evaluate.SHARE_PREFIXES = share
        counted, started = loaded.tokens.snapshot()[0], time.perf_counter()
        values[share] = evaluate.loglikelihoods(loaded, requests, batch_size=32)
        wall = time.perf_counter() - started
        label = "shared prefixes" if share else "whole requests"
        print(f"{label:<16} {loaded.tokens.snapshot()[0] - counted:>9,} {wall:>8.1f}")
    difference = max(abs(a - b) for a, b in zip(values[False], values[True]))
    largest = max(abs(value) for value in values[False])
    print(f"largest difference between the two: {difference:.1e} nats (values up to {largest:.1f} nats)")
    if not args.plan:
        return
    chosen = [suite for suite in suites if suite.axis in ("religion", "nationality")]
    corpus = loaded.tokenizer(corpus_path().read_text(encoding="utf-8"))["input_ids"]
    params = CausalParams(budgets=[0.0005, 0.001], rounds=1)
    found = {}
    for share in (False, True):
        evaluate.SHARE_PREFIXES = share
        started = time.perf_counter()
        found[share] = plan(loaded, chosen, params, corpus)
        steps = ", ".join(f"{step} {spent['tokens']:,}" for step, spent in found[share].compute.items())
        label = "shared prefixes" if share else "whole requests"
        print(f"causal plan, {label}: {time.perf_counter() - started:.1f} s; tokens per step: {steps}")
    slow, fast = found[False], found[True]
    same = {
        "gates": [g.active for g in slow.gates] == [g.active for g in fast.gates],
        "candidate order": slow.order == fast.order,
        "guard": slow.guard == fast.guard,
        "chosen budget": slow.chosen_budget == fast.chosen_budget,
        "neurons": pruned(slow) == pruned(fast),
    }
    print("same decisions: " + ", ".join(f"{name} {'yes' if equal else 'NO'}" for name, equal in same.items()))


if __name__ == "__main__":
    main()
