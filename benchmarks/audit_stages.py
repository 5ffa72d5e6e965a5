"""Where the default audit spends its time: wall and CPU seconds per stage and per evaluator,
from the run record's timings (`fairaudit audit` records both), set against the compute floor:
the token positions each stage forwarded (the record keeps them: `fairaudit.compute`) divided by
this machine's plain batched forward throughput for the model, measured in the same run
(batches of 16 x 64 tokens, language-model head on the last position only, inference mode).
A position forwarded with gradients counts three times (forward and backward); an evaluator
that ran in a lane beside the other model is set against the throughput with half the threads.
wall/floor says how close a stage runs to the machine; tokens say how much it asks of it.
Runs the default audit into a
temporary store, or reads a stored run with --store and --run. --device and --dtype run it where
`fairaudit audit --device D --dtype T` would (the GGUF is dequantized before the clock starts, as in
the target of issue 19). --one-at-a-time evaluates the original and the pruned model one after the
other (`evaluate_side_by_side: false`), for the comparison.

Usage: python benchmarks/audit_stages.py [--store DIR --run RUN_ID|latest] [--device cuda --dtype bfloat16] [--model M] [--one-at-a-time]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time

import torch

from fairaudit.store import Store


def stage_rows(timings: dict[str, float]) -> list[tuple[str, float, float, float, float]]:
    """(stage, wall seconds, CPU seconds, tokens forwarded, of which with gradients) in the order recorded."""
    return [
        (
            key,
            wall,
            timings.get(f"{key}:cpu", math.nan),
            int(timings.get(f"{key}:tokens", 0)),
            int(timings.get(f"{key}:grad_tokens", 0)),
        )
        for key, wall in timings.items()
        if not key.endswith((":cpu", ":tokens", ":grad_tokens"))
    ]


def throughput(model, threads: int, seconds: float = 10.0) -> float:
    """Token positions per second of plain batched forwards (16 x 64, last position's logits)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    vocab = model.get_input_embeddings().num_embeddings
    batch = torch.randint(3, vocab, (16, 64), generator=torch.Generator().manual_seed(0)).to(model.device)
    try:
        with torch.inference_mode():
            for _ in range(3):  # warm-up
                model(input_ids=batch, logits_to_keep=1)
            started, done = time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                model(input_ids=batch, logits_to_keep=1)
                done += batch.numel()
        return done / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)


def machine() -> str:
    """The CPU model and the cores this process may use (Linux: /proc/cpuinfo)."""
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores"


def lane_evaluators() -> set[str]:
    """Evaluators that run in a lane beside the other model (side by side), with half the threads."""
    from fairaudit.pipeline.evaluation import exclusive
    from fairaudit.plugins import registry

    return {name for name in registry().names("evaluator") if not exclusive(registry().get("evaluator", name))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None)
    parser.add_argument("--run", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--model", default=None, help="model id (default: the default audit's)")
    parser.add_argument(
        "--out", default=None, help="folder for the audit's store, pruned model and report (default: temporary)"
    )
    parser.add_argument("--one-at-a-time", action="store_true", help="evaluate the two models one after the other")
    parser.add_argument("--summary", action="store_true", help="one line for the whole audit (the README's)")
    parser.add_argument(
        "--throughput-seconds",
        type=float,
        default=10.0,
        help="how long to measure the forward throughput, per thread count",
    )
    args = parser.parse_args()
    if args.store and args.run:
        store, run_id = Store(args.store), args.run
        if run_id == "latest":  # the latest complete audit in the store
            audits = [r for r in store.runs() if r.get("kind", "audit") == "audit" and r.get("status") == "complete"]
            if not audits:
                print(
                    f"audit_stages.py: {args.store} holds no complete audit run; name one with --run", file=sys.stderr
                )
                raise SystemExit(2)
            run_id = audits[-1]["run_id"]
    else:
        from fairaudit.config import RunConfig
        from fairaudit.inputs.model import load_model
        from fairaudit.pipeline.audit import audit

        folder = args.out or tempfile.mkdtemp(prefix="fairaudit-stages-")
        config = RunConfig(store=f"{folder}/store", evaluate_side_by_side=not args.one_at_a_time)
        model = config.model.model_copy(
            update={"device": args.device, "dtype": args.dtype, **({"id": args.model} if args.model else {})}
        )
        config = config.model_copy(
            update={"model": model, "probe": config.probe.model_copy(update={"params": {"progress": False}})}
        )
        load_model(model)  # a GGUF is dequantized once, into the user cache, before the clock starts
        result = audit(config)
        print(
            f"pruned: {result.pruned}\nevaluation failures: {result.evaluation_failures or 'none'}; report: {result.report}"
        )
        store, run_id = Store(result.store), result.run_id
    record = store.read_run(run_id)
    timings = record["timings"]
    causal = (record.get("prune") or {}).get("causal") or (record.get("prune_skipped") or {}).get("causal") or {}
    for step, entry in (causal.get("compute") or {}).items():  # the causal planner's steps
        timings[f"prune:{step}"] = entry["wall_s"]
        timings[f"prune:{step}:tokens"], timings[f"prune:{step}:grad_tokens"] = entry["tokens"], entry["grad_tokens"]
    from fairaudit.config import ModelSpec
    from fairaudit.inputs.model import load_model

    spec = record.get("config", {}).get("model") or {}
    loaded = load_model(ModelSpec.model_validate(spec) if spec else ModelSpec())
    threads = torch.get_num_threads()
    seconds = args.throughput_seconds
    full, half = throughput(loaded.model, threads, seconds), throughput(loaded.model, max(1, threads // 2), seconds)
    side_by_side = record.get("config", {}).get("evaluate_side_by_side", True) and record.get("prune")
    lanes = lane_evaluators() if side_by_side else set()
    if args.summary:  # the whole audit's floor: every position at the full machine's throughput
        tokens = int(timings.get("total:tokens", 0))
        floor = (tokens + 2 * int(timings.get("total:grad_tokens", 0))) / full
        print(f"{'run':<27} {'wall s':>7} {'tokens':>9} {'floor s':>7} {'wall/floor':>10}  machine")
        print(f"{'-' * 27} {'-' * 7} {'-' * 9} {'-' * 7} {'-' * 10}  {'-' * 7}")
        wall = timings.get("total", math.nan)
        print(
            f"{run_id:<27} {wall:>7.0f} {tokens:>9,} {floor:>7.0f} {wall / floor if floor else math.nan:>10.2f}  "
            f"{machine()}, torch {torch.__version__}"
        )
        return
    print(f"machine: {machine()}, torch {torch.__version__}")
    print(
        f"run {run_id}: wall and CPU seconds per stage (CPU counts every thread of the process; of an evaluator run "
        f"side by side, its own thread's); floor = tokens / throughput, this machine, {threads} threads: "
        f"{full:,.0f} tokens/s ({half:,.0f} with {max(1, threads // 2)})"
    )
    print(f"{'stage':<40} {'wall s':>8} {'CPU s':>8} {'tokens':>11} {'floor s':>8} {'wall/floor':>10}")
    print(f"{'-' * 40} {'-' * 8} {'-' * 8} {'-' * 11} {'-' * 8} {'-' * 10}")
    total_tokens = 0
    for stage, wall, cpu, tokens, with_grad in stage_rows(timings):
        parts = stage.split(":")
        in_lane = len(parts) == 3 and parts[0] == "evaluate" and parts[1] in lanes
        floor = (tokens + 2 * with_grad) / (half if in_lane else full)
        ratio = f"{wall / floor:>10.2f}" if floor > 0.05 else f"{'-':>10}"
        print(f"{stage:<40} {wall:>8.1f} {cpu:>8.1f} {tokens:>11,} {floor:>8.1f} {ratio}")
        total_tokens = tokens if stage == "total" else total_tokens
    print(f"the audit forwarded {total_tokens:,} token positions")


if __name__ == "__main__":
    main()
