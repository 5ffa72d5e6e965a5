"""Probe speed and memory on a random model with the shape of SmolLM2-135M (CPU).

Prints, measured in one run:
- probe time / time of plain batched `model(**batch)` over the same prompts (target <= 1.2);
- optiPfair 0.4.2 `analyze_neuron_bias` time / probe time, per pair (target >= 4);
- peak memory (max RSS of a fresh process) probing 450 pairs vs 45 pairs (target <= +5%).

Usage: python benchmarks/probe_speed.py [--layers 30 --hidden 576 --intermediate 1536 --vocab 49152]
       python benchmarks/probe_speed.py --memory-only --pairs 20 --layers 16 --hidden 2048 --intermediate 8192 --vocab 128256
       (Llama-3.2-1B's shape: probe time and peak memory, each in a fresh process, for 20 and 200 pairs)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from audit_stages import machine  # this folder: the CPU model and cores

from fairaudit.inputs.model import load_model
from fairaudit.inputs.suite import builtin_suite_names, resolve_suite
from fairaudit.plugins import registry
from fairaudit.testing import make_tokenizer


def build(folder: Path, layers: int, hidden: int, intermediate: int, vocab: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=9 if hidden % 9 == 0 else 8,
        num_key_value_heads=3 if hidden % 9 == 0 else 8,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def all_pairs():
    return [pair for name in builtin_suite_names() for pair in resolve_suite(name).pairs(None)]


def probe_once(folder: Path, count: int, batch_size: int) -> float:
    loaded = load_model(str(folder))
    probe = registry().get("probe", "activations")
    pairs = all_pairs()[:count]
    started = time.perf_counter()
    probe.run(loaded, pairs, [], probe.Params(batch_size=batch_size, progress=False), "bench")
    return time.perf_counter() - started


def plain_forward(loaded, pairs, batch_size: int) -> float:
    """The baseline: the same prompts, the same batches (a then b halves), no hooks, full model."""
    tokenizer = loaded.tokenizer
    per_batch = batch_size // 2
    started = time.perf_counter()
    for start in range(0, len(pairs), per_batch):
        chunk = pairs[start : start + per_batch]
        texts = [pair.text_a for pair in chunk] + [pair.text_b for pair in chunk]
        batch = tokenizer(texts, return_tensors="pt", padding=True).to(loaded.device)
        with torch.inference_mode():
            loaded.model(**batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--optipfair-pairs", type=int, default=45)
    parser.add_argument("--pairs", type=int, default=45, help="the smaller pair count; the larger is ten times it")
    parser.add_argument(
        "--memory-only", action="store_true", help="only probe time and peak memory, in fresh processes"
    )
    parser.add_argument("--memory-child", nargs=2, metavar=("FOLDER", "PAIRS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        seconds = probe_once(Path(args.memory_child[0]), int(args.memory_child[1]), args.batch_size)
        print(json.dumps({"max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "seconds": seconds}))
        return
    counts = (args.pairs, 10 * args.pairs)
    if args.memory_only:
        with tempfile.TemporaryDirectory() as scratch:
            folder = build(Path(scratch) / "model", args.layers, args.hidden, args.intermediate, args.vocab)
            parameters = sum(p.numel() for p in load_model(str(folder)).model.parameters())  # tied weights once
            print(f"machine: {machine()}, torch {torch.__version__}")
            print(
                f"model: Llama, {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, vocab {args.vocab} "
                f"({parameters:,} parameters, float32); batch {args.batch_size} prompts; each count in a fresh process"
            )
            for count in counts:
                child = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--memory-child",
                        str(folder),
                        str(count),
                        "--batch-size",
                        str(args.batch_size),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                found = json.loads(child.stdout.strip().splitlines()[-1])
                print(
                    f"{count:>5} pairs: probe {found['seconds']:.1f} s ({found['seconds'] / count * 1000:.0f} ms/pair), "
                    f"peak RSS {found['max_rss_kb'] / 1024:.0f} MiB"
                )
        return

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as scratch:
        folder = build(Path(scratch) / "model", args.layers, args.hidden, args.intermediate, args.vocab)
        loaded = load_model(str(folder))
        probe = registry().get("probe", "activations")
        params = probe.Params(batch_size=args.batch_size, progress=False)
        pairs = all_pairs()
        rows = []
        for count in counts:
            subset = pairs[:count]
            plain_forward(loaded, subset[:8], args.batch_size)  # warm-up
            baseline = plain_forward(loaded, subset, args.batch_size)
            started = time.perf_counter()
            probe.run(loaded, subset, [], params, "bench")
            probe_seconds = time.perf_counter() - started
            rows.append((count, baseline, probe_seconds))

        from optipfair.bias.activations import analyze_neuron_bias

        logging.getLogger("optipfair").setLevel(logging.WARNING)

        subset = pairs[: args.optipfair_pairs]
        started = time.perf_counter()
        analyze_neuron_bias(loaded.model, loaded.tokenizer, [(p.text_a, p.text_b) for p in subset], show_progress=False)
        optipfair_per_pair = (time.perf_counter() - started) / len(subset)
        probe_gate_up = probe.Params(
            batch_size=args.batch_size, progress=False, components=["gate", "up"], optipfair_index=False
        )
        started = time.perf_counter()
        probe.run(loaded, subset, [], probe_gate_up, "bench")
        probe_per_pair = (time.perf_counter() - started) / len(subset)

        memory = {}
        for count in counts:
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--memory-child",
                    str(folder),
                    str(count),
                    "--batch-size",
                    str(args.batch_size),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            memory[count] = json.loads(child.stdout.strip().splitlines()[-1])["max_rss_kb"] / 1024

    print(f"machine: {machine()}, torch {torch.__version__}")
    print(
        f"model: Llama, {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, vocab {args.vocab}; "
        f"CPU threads {torch.get_num_threads()}; batch {args.batch_size} prompts"
    )
    print(f"{'pairs':>6} {'plain forward s':>16} {'probe s':>8} {'probe/plain':>12}")
    print(f"{'-' * 6} {'-' * 16} {'-' * 8} {'-' * 12}")
    for count, baseline, probe_seconds in rows:
        print(f"{count:>6} {baseline:>16.2f} {probe_seconds:>8.2f} {probe_seconds / baseline:>12.2f}")
    print(
        f"optiPfair analyze_neuron_bias: {optipfair_per_pair * 1000:.0f} ms/pair; probe (same gate/up outputs): "
        f"{probe_per_pair * 1000:.0f} ms/pair; ratio {optipfair_per_pair / probe_per_pair:.1f}x"
    )
    small, large = counts
    print(
        f"peak RSS: {small} pairs {memory[small]:.0f} MiB, {large} pairs {memory[large]:.0f} MiB, "
        f"{(memory[large] / memory[small] - 1) * 100:+.1f}%"
    )


if __name__ == "__main__":
    main()
