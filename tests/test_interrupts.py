"""Interrupted audits: killed with SIGINT or SIGKILL at many points, a run never leaves a
corrupt Parquet part or a half-written report, and --resume finishes it with the same
numbers as an uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

SUITES = "[race, gender, religion, nationality]"


def config_text(model: Path, root: Path) -> str:
    return (
        f"model: {model}\nsuites: {SUITES}\nstore: {root / 'store'}\n"
        f"pruning: {{out: {root / 'pruned'}, selection: {{fraction: 0.05}}}}\n"
        "evaluators: [bias_reprobe, {plugin: perplexity, params: {max_length: 64}}]\n"
    )


def assert_nothing_partial(root: Path) -> None:
    for part in (root / "store").rglob("*.parquet"):
        pq.read_table(part)  # raises on a truncated or corrupt file
    for record in (root / "store").rglob("run.json"):
        json.loads(record.read_text())
    for report in root.glob("report-*.html"):
        assert report.read_text().rstrip().endswith("</html>")
    for twin in root.glob("report-*.json"):
        json.loads(twin.read_text())


@pytest.fixture(scope="module")
def reference(model_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    config = root / "run.yaml"
    config.write_text(config_text(model_folder("llama"), root))
    done = subprocess.run(
        [sys.executable, "-m", "fairaudit", "audit", str(config), "--json"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def comparable(payload: dict) -> dict:
    axes = {axis: round(values["bias_index"], 9) for axis, values in payload["axes"].items()}
    changes = {(r["evaluator"], r["axis_or_task"], r["metric"]): round(r["after"], 6) for r in payload["comparisons"]}
    return {"axes": axes, "changes": changes, "removed": payload["pruned"].get("removed")}


def test_killed_at_six_points_then_resumed(model_folder, tmp_path, reference):
    """Six runs, each killed at a random moment of its own sixth of 2-9 s (startup, probing of four
    axes, pruning, evaluation), SIGINT and SIGKILL in turn, two at a time."""
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(11)
    delays = [2.0 + 7.0 * (stratum + rng.random()) / 6 for stratum in range(6)]
    model = model_folder("llama")
    with ThreadPoolExecutor(max_workers=2) as pool:
        for finished in [
            pool.submit(kill_then_resume, attempt, delays[attempt], model, tmp_path, reference) for attempt in range(6)
        ]:
            finished.result()  # re-raises an attempt's assertion


def kill_then_resume(attempt: int, delay: float, model: Path, tmp_path: Path, reference: dict) -> None:
    root = tmp_path / f"attempt{attempt}"
    root.mkdir()
    config = root / "run.yaml"
    config.write_text(config_text(model, root))
    how = signal.SIGINT if attempt % 2 == 0 else signal.SIGKILL
    process = subprocess.Popen(
        [sys.executable, "-m", "fairaudit", "audit", str(config), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    process.send_signal(how)
    _, stderr = process.communicate(timeout=120)
    assert "Traceback" not in stderr or how == signal.SIGKILL
    assert_nothing_partial(root)
    records = [json.loads(path.read_text()) for path in (root / "store").glob("runs/*/run.json")]
    audits = [record for record in records if record.get("kind") == "audit"]
    if not audits:
        return  # killed before the run record was written: nothing to resume, nothing partial
    run_id = audits[0]["run_id"]
    if how == signal.SIGINT and audits[0]["status"] == "interrupted":  # the message names the real run to resume
        assert f"--resume {run_id}" in stderr and "RUN_ID" not in stderr
    if audits[0]["status"] == "complete":  # killed after it finished: a resume is refused and changes nothing
        refused = subprocess.run(
            [sys.executable, "-m", "fairaudit", "audit", "--resume", run_id, "--store", str(root / "store")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode == 2 and "nothing to resume" in refused.stderr
        assert (
            json.loads(next((root / "store").glob(f"runs/run_id={run_id}/run.json")).read_text())["status"]
            == "complete"
        )
        return
    resumed = subprocess.run(
        [sys.executable, "-m", "fairaudit", "audit", "--resume", run_id, "--store", str(root / "store"), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, (attempt, how, resumed.stderr)
    assert comparable(json.loads(resumed.stdout)) == comparable(reference), (attempt, how)
    assert_nothing_partial(root)
    assert not list((root / "store").rglob("*.tmp-*"))


def test_an_abandoned_evaluator_thread_does_not_abort_the_exit(tmp_path):
    """An evaluator thread still computing when the command ends (abandoned by a time limit, or
    interrupted): the process exits with the command's status, never "terminate called without
    an active exception" (exit 134), and exit handlers still run."""
    script = tmp_path / "abandon.py"
    marker = tmp_path / "atexit-ran"
    script.write_text(
        "import atexit, sys, threading, time\n"
        "import torch\n"
        "from fairaudit.pipeline.evaluation import EVALUATOR_THREAD\n"
        "from fairaudit.cli import entry\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').close())\n"
        "def work():\n"
        "    a = torch.randn(2000, 2000)\n"
        "    while True:\n"
        "        a = a @ a.T / 2000\n"
        "threading.Thread(target=work, daemon=True, name=EVALUATOR_THREAD).start()\n"
        "time.sleep(0.5)\n"
        "sys.argv = ['fairaudit', 'suites', 'list']\n"
        "entry()\n"
    )
    for _ in range(5):
        marker.unlink(missing_ok=True)
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "terminate called" not in done.stderr, (done.returncode, done.stderr[-500:])
        assert marker.exists() and "race" in done.stdout


@pytest.mark.parametrize("raised", ["Terminated", "KeyboardInterrupt"])
def test_an_interrupt_that_lands_in_a_finalizer_is_delivered_again(raised):
    """Python prints an exception raised in `__del__` and drops it: a Ctrl-C or SIGTERM arriving
    while a library's finalizer runs would be lost and the run would go on (a flake of the test
    above showed it). The command line sends the signal again."""
    from fairaudit.cli import Terminated, _terminated_as_interrupt

    exception = Terminated if raised == "Terminated" else KeyboardInterrupt

    class Finalized:
        def __del__(self):
            raise exception()

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(exception), _terminated_as_interrupt():
            finalized = Finalized()
            del finalized  # the finalizer's exception is unraisable
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the signal arrives; its handler runs between bytecodes
                pass
    finally:
        signal.signal(signal.SIGINT, previous)
