"""Where the default audit spends its time: wall and CPU seconds per stage and per evaluator,
from the run record's timings (`fairaudit audit` records both). Runs the default audit into a
temporary store, or reads a stored run with --store and --run. --device and --dtype run it where
`fairaudit audit --device D --dtype T` would (the GGUF is dequantized before the clock starts, as in
the target of issue 19). --one-at-a-time evaluates the original and the pruned model one after the
other (`evaluate_side_by_side: false`), for the comparison.

Usage: python benchmarks/audit_stages.py [--store DIR --run RUN_ID] [--device cuda --dtype bfloat16] [--model M] [--one-at-a-time]
"""

from __future__ import annotations

import argparse
import tempfile

from fairaudit.store import Store


def stage_rows(timings: dict[str, float]) -> list[tuple[str, float, float]]:
    """(stage, wall seconds, CPU seconds) in the order they were recorded."""
    return [
        (key, wall, timings.get(f"{key}:cpu", float("nan")))
        for key, wall in timings.items()
        if not key.endswith(":cpu")
    ]


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
    args = parser.parse_args()
    if args.store and args.run:
        store, run_id = Store(args.store), args.run
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
    timings = store.read_run(run_id)["timings"]
    print(
        f"run {run_id}: wall and CPU seconds per stage (CPU counts every thread of the process; of an evaluator run "
        f"side by side, its own thread's)"
    )
    print(f"{'stage':<40} {'wall s':>8} {'CPU s':>8} {'CPU/wall':>9}")
    for stage, wall, cpu in stage_rows(timings):
        print(f"{stage:<40} {wall:>8.1f} {cpu:>8.1f} {cpu / wall if wall else float('nan'):>9.2f}")


if __name__ == "__main__":
    main()
