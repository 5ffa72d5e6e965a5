"""Overlap analysis over a store of 10 models x 4 axes with the shape of Llama-3.2-1B
(16 layers x 8192 MLP neurons): seconds to load every score vector and compute every
cross-axis and cross-model table. The store is written with random scores first.

Usage: python benchmarks/overlap_speed.py [--models 10 --layers 16 --units 8192]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from audit_stages import machine  # this folder: the CPU model and cores

from fairaudit.analysis.overlap import axis_overlap, load_scores, model_overlap
from fairaudit.measurement.scoring import AxisScores
from fairaudit.store import Store

AXES = ("race", "gender", "religion", "nationality")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--units", type=int, default=8192)
    parser.add_argument("--top", type=float, default=0.01)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        store = Store(Path(scratch) / "store")
        started = time.perf_counter()
        for index in range(args.models):
            model = f"model-{index}"
            for axis in AXES:
                scores = AxisScores(axis=axis, component="neuron")
                for column in ("bias", "scaled_bias", "hybrid"):
                    scores.neuron[column] = torch.from_numpy(rng.random((args.layers, args.units)))
                scores.summary["pairs"] = 100
                store.write_axis(model, f"run-{index}", scores)
            store.write_run(f"run-{index}", {"model_id": model, "status": "complete", "started": str(index)})
        write_seconds = time.perf_counter() - started

        started = time.perf_counter()
        loaded = [load_scores(store, f"model-{index}", "scaled_bias") for index in range(args.models)]
        load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        shared = sum(axis_overlap(scores, args.top).shared.num_rows for scores in loaded)
        axis_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for first, second in zip(loaded, loaded[1:]):
            model_overlap(first, second, args.top)
        model_seconds = time.perf_counter() - started
    neurons = args.layers * args.units
    print("overlap analysis of a store of random scores")
    print(f"machine: {machine()}")
    print(
        f"store: {args.models} models x {len(AXES)} axes x {args.layers} layers x {args.units} neurons "
        f"({args.models * len(AXES) * neurons:,} rows per score column); written in {write_seconds:.1f} s"
    )
    print(f"load all score vectors: {load_seconds:.2f} s")
    print(
        f"cross-axis overlap, {args.models} models x 6 axis pairs (+ per-layer, shared list; {shared} shared neurons): {axis_seconds:.2f} s"
    )
    print(f"cross-model overlap, {args.models - 1} model pairs x {len(AXES)} axes: {model_seconds:.2f} s")
    print(f"total analysis: {load_seconds + axis_seconds + model_seconds:.2f} s")


if __name__ == "__main__":
    main()
