"""Where the default audit spends its time: wall and CPU seconds per stage and per evaluator,
from the run record's timings (`fairaudit audit` records both). Runs the default audit into a
temporary store, or reads a stored run with --store and --run.

Usage: python benchmarks/audit_stages.py [--store DIR --run RUN_ID]
"""

from __future__ import annotations

import argparse
import tempfile

from fairaudit.store import Store


def stage_rows(timings: dict[str, float]) -> list[tuple[str, float, float]]:
    """(stage, wall seconds, CPU seconds) in the order they were recorded."""
    return [(key, wall, timings.get(f"{key}:cpu", float("nan"))) for key, wall in timings.items() if not key.endswith(":cpu")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None)
    parser.add_argument("--run", default=None)
    args = parser.parse_args()
    if args.store and args.run:
        store, run_id = Store(args.store), args.run
    else:
        from fairaudit.config import RunConfig
        from fairaudit.runner import audit

        folder = tempfile.mkdtemp(prefix="fairaudit-stages-")
        config = RunConfig(store=f"{folder}/store")
        config = config.model_copy(update={"probe": config.probe.model_copy(update={"params": {"progress": False}})})
        result = audit(config)
        store, run_id = Store(result.store), result.run_id
    timings = store.read_run(run_id)["timings"]
    print(f"run {run_id}: wall and CPU seconds per stage (CPU counts every thread of the process)")
    print(f"{'stage':<40} {'wall s':>8} {'CPU s':>8} {'CPU/wall':>9}")
    for stage, wall, cpu in stage_rows(timings):
        print(f"{stage:<40} {wall:>8.1f} {cpu:>8.1f} {cpu / wall if wall else float('nan'):>9.2f}")


if __name__ == "__main__":
    main()
