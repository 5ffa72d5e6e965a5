"""Memory of a model split by a device map: peak resident memory (RSS) and time of loading
and probing a random Llama-3.2-1B-shaped model (16 layers, hidden 2048, intermediate 8192,
GQA 32/8 heads; fairaudit's small test vocabulary) held whole in CPU memory vs split with
`device_map: auto` and a CPU budget, the rest offloaded to disk; and of pruning it (which
loads a whole copy in CPU memory). Each measurement runs in its own process.

Usage: python benchmarks/split_memory.py [--pairs 20] [--cpu-budget 1GiB] [--layers 16 --hidden 2048 --intermediate 8192]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


class AnonymousPeak:
    """Samples this process' anonymous resident memory (RssAnon: heap and tensors, not file
    pages such as memory-mapped offloaded weights, which the kernel can drop) every 20 ms."""

    def __init__(self):
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            time.sleep(0.02)

    def reset(self) -> int:
        """The peak so far (MiB); then start a new phase."""
        peak, self.peak_kib = self.peak_kib, 0
        return peak // 1024


def child(mode: str, folder: str, pairs: int, budget: str, out: str) -> None:
    """Load (whole or split), probe `pairs` race pairs, print time and peak RSS as JSON."""
    from fairaudit.inputs.model import ModelSpec, is_offloaded, load_model
    from fairaudit.inputs.suite import resolve_suite
    from fairaudit.plugins import registry

    sampler = AnonymousPeak()
    started = time.perf_counter()
    spec = (
        ModelSpec(id=folder)
        if mode == "whole"
        else ModelSpec(
            id=folder, device_map="auto", max_memory={"cpu": budget}, offload_folder=str(Path(out) / "offload")
        )
    )
    loaded = load_model(spec)
    loaded_seconds = time.perf_counter() - started
    time.sleep(0.05)
    load_peak = sampler.reset()
    suite = resolve_suite("race")
    probe = registry().get("probe", "activations")
    started = time.perf_counter()
    stats = probe.run(
        loaded, suite.pairs("probe")[:pairs], suite.control_pairs()[:2], probe.Params(progress=False), "race"
    )
    probe_seconds = time.perf_counter() - started
    time.sleep(0.05)
    probe_peak = sampler.reset()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "mode": mode,
                "offloaded": is_offloaded(loaded.model),
                "load_s": loaded_seconds,
                "probe_s": probe_seconds,
                "pairs": stats.n_pairs,
                "peak_rss_mib": peak_mib,
                "load_anon_mib": load_peak,
                "probe_anon_mib": probe_peak,
                "parameters": loaded.provenance["parameters"],
            }
        )
    )


def prune_child(folder: str, out: str) -> None:
    """Prune 0.2% of each layer's neurons (random scores) from a whole CPU copy and save it."""
    import torch

    from fairaudit.inputs.model import ModelSpec, load_model
    from fairaudit.plugins import registry
    from fairaudit.repair.prune import SelectionParams, save_pruned, select

    sampler = AnonymousPeak()
    started = time.perf_counter()
    loaded = load_model(ModelSpec(id=folder))
    layers, width = len(loaded.layers), loaded.adapter.mlp_weights(loaded.layers[0]).down.shape[1]
    scores = torch.rand(layers, width, generator=torch.Generator().manual_seed(0))
    fraction = max(0.002, 1 / width)  # at least one neuron per layer of a small model
    selection = select({"bench": scores}, SelectionParams(axes=["bench"], fraction=fraction, protect=0))
    pruner = registry().get("pruner", "structured")
    report = pruner.apply(loaded, selection, pruner.Params())
    save_pruned(loaded, report, Path(out) / "pruned", "benchmark\n")
    time.sleep(0.05)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "mode": "prune",
                "seconds": time.perf_counter() - started,
                "removed": report.removed,
                "peak_rss_mib": peak_mib,
                "anon_mib": sampler.reset(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--cpu-budget", default="1GiB")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=8192)
    parser.add_argument("--child", nargs=4, metavar=("MODE", "FOLDER", "PAIRS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, folder, pairs, out = args.child
        if mode == "prune":
            prune_child(folder, out)
        else:
            child(mode, folder, int(pairs), args.cpu_budget, out)
        return
    from audit_stages import machine  # this folder: the CPU model and cores

    from fairaudit.testing import make_model

    print("memory of a model held whole, split with a device map, and pruned; each in its own process")
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        folder = make_model(
            "llama", Path(scratch) / "model", layers=args.layers, hidden=args.hidden, intermediate=args.intermediate
        )
        print(f"built and saved the model in {time.perf_counter() - started:.0f} s")
        for mode in ("whole", "split", "prune"):
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--cpu-budget",
                    args.cpu_budget,
                    "--child",
                    mode,
                    str(folder),
                    str(args.pairs),
                    scratch,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if mode == "prune":
                print(
                    f"prune (whole copy in CPU memory, save): {result['seconds']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB, "
                    f"peak anonymous {result['anon_mib']} MiB"
                )
            else:
                print(
                    f"{mode:5s} ({'offloaded' if result['offloaded'] else 'in memory'}, {result['parameters']:,} parameters): "
                    f"load {result['load_s']:.1f} s, probe {result['pairs']} pairs {result['probe_s']:.1f} s; peak RSS "
                    f"{result['peak_rss_mib']:.0f} MiB; peak anonymous memory: loading {result['load_anon_mib']} MiB, "
                    f"probing {result['probe_anon_mib']} MiB"
                )


if __name__ == "__main__":
    main()
