"""The probe and pruning on a random model with Llama-3.2-1B's shape (16 layers, hidden 2048,
intermediate 8192, 32 query and 8 key/value heads, vocab 128256), on any device and dtype:

- probe time / time of a plain batched `model(**batch)` over the same prompts, at N and 10N pairs;
- the probe's peak memory at N and 10N pairs (GPU: peak allocated above the loaded model;
  CPU: peak RSS of a fresh process), which must stay flat in the number of pairs;
- selection + structured pruning of 0.2% of the MLP neurons per layer: seconds and peak memory.

Usage: python benchmarks/large_model.py [--device cuda --dtype bfloat16] [--pairs 45] [--layers 16 --hidden 2048 ...]
The model is built on the device from random weights and saved, then loaded through
`fairaudit.inputs.model.load_model` like a user's folder (its tokenizer is the test tokenizer: one token
per word). The figures in the README come from the GPU machine; for the CPU figures of the same
shape, `probe_speed.py --memory-only` and `prune_speed.py` are the ones documented.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from probe_speed import all_pairs, plain_forward

from fairaudit.inputs.model import ModelSpec, load_model
from fairaudit.plugins import registry
from fairaudit.repair.prune import SelectionParams, prune, select
from fairaudit.testing import make_tokenizer


def build(folder: Path, args) -> Path:
    """A random Llama of the given shape, initialised on the device in the target dtype and saved."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        vocab_size=args.vocab,
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device=args.device).to(getattr(torch, args.dtype))
    model.tie_weights()
    generator = torch.Generator(device=args.device).manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02, generator=generator)
    model.save_pretrained(folder)  # buffers (rotary frequencies) are not saved: loading recomputes them
    make_tokenizer().save_pretrained(folder)
    del model
    return folder


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(function, device: str, repeats: int) -> float:
    """Median seconds of `repeats` calls, the device synchronised around each."""
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        function()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def peak_above(device: str, function) -> float:
    """GPU: MiB allocated at the peak of `function` above what was allocated before it."""
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    function()
    synchronize(device)
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--pairs", type=int, default=45, help="the smaller pair count; the larger is ten times it")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timings are the median of this many runs")
    parser.add_argument("--fraction", type=float, default=0.002)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--rss-child", nargs=2, metavar=("FOLDER", "PAIRS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    probe = registry().get("probe", "activations")
    params = probe.Params(batch_size=args.batch_size, progress=False)
    spec = lambda folder: ModelSpec(id=str(folder), device=args.device, dtype=args.dtype)  # noqa: E731
    if args.rss_child:  # CPU memory: one probe in a fresh process
        loaded = load_model(spec(args.rss_child[0]))
        probe.run(loaded, all_pairs()[: int(args.rss_child[1])], [], params, "bench")
        print(json.dumps({"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    on_gpu = args.device.startswith("cuda")
    counts = (args.pairs, 10 * args.pairs)
    figures: dict = {
        "device": args.device,
        "dtype": args.dtype,
        "batch_prompts": args.batch_size,
        "gpu": torch.cuda.get_device_name() if on_gpu else None,
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        folder = build(Path(scratch) / "model", args)
        figures["build_and_save_s"] = time.perf_counter() - started
        started = time.perf_counter()
        loaded = load_model(spec(folder))
        figures["load_s"] = time.perf_counter() - started
        figures["parameters"] = sum(p.numel() for p in loaded.model.parameters())
        figures["model_mib"] = torch.cuda.memory_allocated() / 2**20 if on_gpu else None
        pairs = all_pairs()
        plain_forward(loaded, pairs[:16], args.batch_size)  # warm-up (kernels, allocator)
        probe.run(loaded, pairs[:16], [], params, "bench")
        figures["rows"] = []
        for count in counts:
            subset = pairs[:count]
            plain = timed(lambda: plain_forward(loaded, subset, args.batch_size), args.device, args.repeats)
            probed = timed(lambda: probe.run(loaded, subset, [], params, "bench"), args.device, args.repeats)
            if on_gpu:
                memory = peak_above(args.device, lambda: probe.run(loaded, subset, [], params, "bench"))
            else:
                child = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--rss-child",
                        str(folder),
                        str(count),
                        "--device",
                        args.device,
                        "--dtype",
                        args.dtype,
                        "--batch-size",
                        str(args.batch_size),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                memory = json.loads(child.stdout.strip().splitlines()[-1])["max_rss_mib"]
            figures["rows"].append(
                {"pairs": count, "plain_s": plain, "probe_s": probed, "ratio": probed / plain, "peak_mib": memory}
            )

        generator = torch.Generator().manual_seed(1)
        scores = {"bench": torch.rand(args.layers, args.intermediate, generator=generator)}

        def select_and_prune():
            figures["pruned"] = prune(
                loaded, select(scores, SelectionParams(axes=["bench"], fraction=args.fraction, protect=0))
            ).removed

        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        figures["prune_s"] = timed(select_and_prune, args.device, repeats=1)
        figures["prune_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None

    where = f"{figures['gpu']}, " if on_gpu else ""
    print(
        f"model: Llama, {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, vocab {args.vocab} "
        f"({figures['parameters']:,} parameters, {args.dtype}) on {where}{args.device}; torch {torch.__version__}; "
        f"batches of {args.batch_size} prompts; built and saved in {figures['build_and_save_s']:.1f} s, loaded in {figures['load_s']:.1f} s"
    )
    memory_label = "peak GPU MiB above the model" if on_gpu else "peak RSS MiB"
    print(f"{'pairs':>6} {'plain forward s':>16} {'probe s':>8} {'probe/plain':>12} {memory_label:>30}")
    for row in figures["rows"]:
        print(
            f"{row['pairs']:>6} {row['plain_s']:>16.3f} {row['probe_s']:>8.3f} {row['ratio']:>12.2f} {row['peak_mib']:>30.0f}"
        )
    small, large = figures["rows"]
    print(
        f"probe memory, {large['pairs']} pairs vs {small['pairs']}: {(large['peak_mib'] / small['peak_mib'] - 1) * 100:+.1f}%"
    )
    peak = f", peak GPU memory {figures['prune_peak_mib']:.0f} MiB (model included)" if on_gpu else ""
    print(
        f"select + structured pruning of {args.fraction:.1%} of the neurons per layer ({figures['pruned']} neurons): "
        f"{figures['prune_s']:.2f} s{peak}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
