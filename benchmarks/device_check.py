"""End to end on a device and dtype (issue 19: `--device cuda --dtype bfloat16` must work): on the
planted model (`fairaudit.testing.make_planted_model`, race bias planted), the command line's
audit with causal pruning (heads included), every default evaluator and the report; then
probe, prune --causal, evaluate and diagnose, each with --device and --dtype. Prints what each
step gave and exits 1 if any step fails or the causal audit does not prune.

Usage: python benchmarks/device_check.py [--device cuda --dtype bfloat16]   (seconds on a GPU, a minute on CPU)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fairaudit.testing import make_planted_model


def fairaudit(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fairaudit", *map(str, args)], capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = parser.parse_args()
    on = ("--device", args.device, "--dtype", args.dtype)
    root = Path(tempfile.mkdtemp(prefix="fairaudit-device-"))
    make_planted_model(root / "model")
    config = root / "run.yaml"
    config.write_text(
        f"model: {root / 'model'}\nsuites: [race, nationality]\nstore: {root / 'store'}\n"
        f"pruning: {{out: {root / 'pruned'}, causal: {{budgets: [0.01, 0.02], heads: true}}}}\n",
        encoding="utf-8",
    )
    steps = [
        (
            "audit (causal pruning with heads, every default evaluator, report)",
            ("audit", config, *on, "--quiet", "--json"),
        ),
        (
            "probe",
            ("probe", "--model", root / "model", "--suite", "race", "--store", root / "s2", *on, "--quiet", "--json"),
        ),
        (
            "prune --causal",
            (
                "prune",
                "--causal",
                "--model",
                root / "model",
                "--store",
                root / "s2",
                "--axis",
                "race",
                "--budgets",
                "0.01,0.02",
                "--out",
                root / "p2",
                *on,
                "--json",
            ),
        ),
        (
            "evaluate",
            (
                "evaluate",
                "--model",
                root / "model",
                "--compare",
                root / "p2",
                "--suite",
                "race",
                "--store",
                root / "s2",
                "--evaluator",
                "output_bias",
                "--evaluator",
                "perplexity",
                "--evaluator",
                "generations",
                *on,
                "--quiet",
                "--json",
            ),
        ),
        (
            "diagnose --attribution 4",
            (
                "diagnose",
                "--model",
                root / "model",
                "--suite",
                "race",
                "--top",
                "1",
                "--attribution",
                "4",
                "--out",
                root / "d",
                *on,
                "--json",
            ),
        ),
    ]
    failed = False
    for name, command in steps:
        started = time.perf_counter()
        done = fairaudit(*command)
        seconds = time.perf_counter() - started
        ok = done.returncode == 0
        detail = ""
        if ok and name.startswith("audit"):
            result = json.loads(done.stdout)
            pruned, failures = result.get("pruned", {}), result.get("evaluation_failures", [])
            ok = "skipped" not in pruned and not failures
            detail = (
                f"{pruned.get('removed', 0)} neurons pruned ({pruned.get('zeroed', 0)} of them zeroed in place), heads zeroed "
                f"{pruned.get('heads', [])}; evaluator failures: {failures or 'none'}"
            )
        print(f"{'ok  ' if ok else 'FAIL'} {name}: exit {done.returncode}, {seconds:.1f} s {detail}")
        if not ok:
            failed = True
            print("     " + "\n     ".join((done.stderr or done.stdout).strip().splitlines()[-25:]))
    print(
        f"device {args.device}, dtype {args.dtype}: {'a step failed' if failed else 'every step passed'} (files in {root})"
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
