"""Does greedy decoding show the same before/after differences as beam search?

The `generations` evaluator continues each axis' first prompt pairs on the original and the
pruned model (default: 5 beams, as the Fairness Pruning write-up). Beam search costs about five
times the forwards of greedy decoding. This script generates the default prompts both ways on
both models of a stored audit run and prints, per decoding: the wall seconds, the token positions
forwarded (`fairaudit.compute`), how many prompts' continuations pruning changed, and whether the
two decodings agree on which prompts changed.

Usage: python benchmarks/generations_decoding.py --store fairaudit-out/store [--run RUN_ID]
"""

from __future__ import annotations

import argparse
import time

from fairaudit.config import DEFAULT_SUITES, ModelSpec
from fairaudit.inputs.model import load_model
from fairaudit.inputs.suite import resolve_suites
from fairaudit.plugins import registry
from fairaudit.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="fairaudit-out/store")
    parser.add_argument("--run", default=None, help="an audit run that pruned (default: the latest)")
    args = parser.parse_args()
    store = Store(args.store)
    runs = [r for r in store.runs() if r.get("kind", "audit") == "audit" and r.get("prune")]
    run = next(r for r in runs if r["run_id"] == args.run) if args.run else runs[-1]
    spec = ModelSpec.model_validate(run["config"]["model"])
    models = {
        "before": load_model(spec),
        "after": load_model(spec.model_copy(update={"id": run["prune"]["out"], "gguf_file": None, "revision": None})),
    }
    suites = resolve_suites(run["config"].get("suites") or list(DEFAULT_SUITES))
    generations = registry().get("evaluator", "generations")
    changed: dict[int, list[bool]] = {}
    import torch
    from audit_stages import machine  # this folder: the CPU model and cores

    print(f"machine: {machine()}, torch {torch.__version__}")
    print(f"run {run['run_id']}: {spec.id} and its pruned model, the default prompts")
    print(f"{'decoding':<10} {'wall s':>8} {'tokens':>9} {'prompts changed by pruning':>28}")
    print(f"{'-' * 10} {'-' * 8} {'-' * 9} {'-' * 28}")
    for beams in (5, 1):
        texts, wall, tokens = {}, 0.0, 0
        for role, loaded in models.items():
            counted, started = loaded.tokens.snapshot()[0], time.perf_counter()
            result = generations.evaluate(loaded, suites, generations.Params(num_beams=beams), None)
            wall += time.perf_counter() - started
            tokens += loaded.tokens.snapshot()[0] - counted
            texts[role] = [row["continuation"] for row in result.generations]
        changed[beams] = [a != b for a, b in zip(texts["before"], texts["after"])]
        label = f"{beams} beams" if beams > 1 else "greedy"
        print(f"{label:<10} {wall:>8.1f} {tokens:>9,} {sum(changed[beams]):>14} of {len(changed[beams])}")
    agree = sum(a == b for a, b in zip(changed[5], changed[1]))
    print(
        f"the two decodings agree on whether pruning changed a prompt's continuation for {agree} of {len(changed[5])}"
    )


if __name__ == "__main__":
    main()
