"""Sweeps: a grid of audits into one store, locally and on Ray, resumable after a kill, with
the same numbers either way, and a grid report."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fairaudit.errors import ConfigError
from fairaudit.pipeline.sweep import load_sweep, run_sweep
from fairaudit.reporting.sweep import _pareto_front, sweep_data
from fairaudit.store import Store

HAS_RAY = importlib.util.find_spec("ray") is not None


def _sweep_file(folder: Path, store: str, models: list[Path]) -> Path:
    path = folder / f"{store}.yaml"
    path.write_text(f"""sweep: grid
config:
  probe: {{plugin: activations, params: {{progress: false}}}}
  diagnose_top: 0
  evaluators: [output_bias]
  pruning: {{out: {folder / (store + "-pruned")}}}
store: {folder / store}
grid:
  model: [{models[0]}, {models[1]}]
  suites: [[race], [gender]]
  pruning.selection.fraction: [0.02, 0.1]
""")
    return path


def _numbers(store: Store) -> dict[tuple, float]:
    """Every stored number of every audit run, keyed by its cell's grid values (a cell's run id
    also hashes its store), table and row."""
    numbers = {}
    for run in store.runs():
        if run.get("kind") != "audit":
            continue
        cell = json.dumps(run["sweep"]["values"], sort_keys=True, default=str)
        for table in ("axis_summary", "neuron_scores", "evaluations"):
            for index, row in enumerate(store.read(table, run_id=run["run_id"]).to_pylist()):
                for key, value in row.items():
                    if isinstance(value, float) and not math.isnan(value):
                        numbers[(cell, table, index, key)] = value
    return numbers


def test_sweep_file_errors_name_the_line_and_the_cell(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("sweep: s\ngrid:\n  model: []\n")
    with pytest.raises(ConfigError, match="line 3.*has no values"):
        load_sweep(path)
    path.write_text("sweep: s\ngrid:\n  pruning.selection.fraction: [0.1, 2.0]\n")
    with pytest.raises(ConfigError, match=r"cell \{'pruning.selection.fraction': 2.0\}.*between 0 and 1"):
        load_sweep(path)
    path.write_text("sweep: s\ngrid:\n" + "".join(f"  k{i}: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n" for i in range(5)))
    with pytest.raises(ConfigError, match="100,000 cells; a sweep has at most"):
        load_sweep(path)
    path.write_text("sweep: ../s\ngrid:\n  seed: [1]\n")
    with pytest.raises(ConfigError, match="line 1.*'sweep'"):
        load_sweep(path)


def test_pareto_front_by_hand():
    # (cost, reduction): b beats a (cheaper, larger reduction); c costs more but reduces most; d is beaten by c
    assert _pareto_front([(0.02, 0.1), (0.01, 0.2), (0.05, 0.5), (0.06, 0.4)]) == [False, True, True, False]


@pytest.fixture(scope="module")
def local_sweep(model_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    path = _sweep_file(folder, "local", [model_folder("llama"), model_folder("gpt2")])
    return folder, path, run_sweep(path)


def test_local_sweep_runs_every_cell_once(local_sweep, cli):
    folder, path, result = local_sweep
    assert len(result.cells) == 8 and [o.status for o in result.outcomes] == ["complete"] * 8
    store = Store(folder / "local")
    runs = {run["run_id"]: run for run in store.runs()}
    assert runs["grid"]["kind"] == "sweep" and runs["grid"]["status"] == "complete"
    cell = runs[result.cells[-1].run_id]
    assert cell["sweep"] == {"id": "grid", "values": result.cells[-1].values} and cell["prune"]["removed"] > 0
    again = run_sweep(path)  # complete cells are not run twice
    assert [o.status for o in again.outcomes] == ["skipped"] * 8
    assert {run["run_id"]: run["started"] for run in store.runs() if run.get("kind") == "audit"} == {
        run_id: run["started"] for run_id, run in runs.items() if run.get("kind") == "audit"
    }


def test_a_failing_cell_is_recorded_and_the_others_run(model_folder, tmp_path, cli):
    path = tmp_path / "s.yaml"
    path.write_text(f"""sweep: broken
config: {{diagnose_top: 0, evaluators: [output_bias], pruning: null, probe: {{plugin: activations, params: {{progress: false}}}}}}
store: {tmp_path / "store"}
grid:
  model: [{model_folder("llama")}, {tmp_path / "no-such-model"}]
  suites: [[race]]
""")
    result = cli("sweep", path)
    assert result.exit_code == 1
    records = {run["run_id"]: run for run in Store(tmp_path / "store").runs()}
    statuses = sorted(run["status"] for run in records.values() if run.get("kind") == "audit")
    assert statuses == ["complete", "failed"]
    failed = next(run for run in records.values() if run.get("status") == "failed" and run.get("kind") == "audit")
    assert "no-such-model" in failed["error"] and failed["sweep"]["id"] == "broken"
    assert records["broken"]["status"] == "failed"


def test_grid_report_numbers_equal_the_store(local_sweep, cli):
    folder, _, result = local_sweep
    out = folder / "grid.html"
    assert cli("report", folder / "local", "--sweep", "grid", "--out", out).exit_code == 0
    html = out.read_text(encoding="utf-8")
    store = Store(folder / "local")
    for cell in result.cells:
        axis = cell.values["suites"][0]
        before = next(
            r
            for r in store.read("evaluations", run_id=cell.run_id).to_pylist()
            if r["metric"] == "stereotype_preference" and r["role"] == "before"
        )
        assert (
            f'data-metric="preference_before" data-axis="{cell.run_id}:{axis}" data-value="{before["value"]!r}"' in html
        )
    data = sweep_data(store, "grid")
    assert len(data["fronts"]) == 4 and all(any(p["front"] for p in front["points"]) for front in data["fronts"])
    assert html.count("<svg") == 4 and "<script" not in html


@pytest.mark.skipif(
    not HAS_RAY, reason="ray is not installed (pip install 'fairaudit[ray]'); the local backend is tested without it"
)
def test_ray_sweep_killed_midway_resumes_and_matches_local(local_sweep, model_folder):
    folder, _, _ = local_sweep
    path = _sweep_file(folder, "ray", [model_folder("llama"), model_folder("gpt2")])
    command = [sys.executable, "-m", "fairaudit", "sweep", str(path), "--backend", "ray", "--num-cpus", "2", "--quiet"]
    runs = folder / "ray" / "runs"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    complete: dict[str, str] = {}
    while time.time() < deadline and process.poll() is None and not complete:
        time.sleep(0.5)
        complete = {
            record.parent.name: record.read_text()
            for record in runs.glob("run_id=grid-*/run.json")
            if '"status": "complete"' in record.read_text()
        }
    _kill_session(process)
    assert complete, "no cell completed before the deadline"
    assert len(complete) < 8, "the sweep finished before it could be killed"
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    store = Store(folder / "ray")
    records = {run["run_id"]: run for run in store.runs() if run.get("kind") == "audit"}
    assert len(records) == 8 and all(run["status"] == "complete" for run in records.values())
    for folder_name, text in complete.items():  # cells complete before the kill were not run again
        assert (runs / folder_name / "run.json").read_text() == text
    local, distributed = _numbers(Store(folder / "local")), _numbers(store)
    assert local.keys() == distributed.keys()
    assert all(math.isclose(local[key], distributed[key], rel_tol=1e-5, abs_tol=1e-7) for key in local)


def _kill_session(process: subprocess.Popen) -> None:
    """SIGKILL the sweep and every process of its session (Ray's local cluster included)."""
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            if os.getsid(pid) == process.pid:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    process.wait(timeout=30)


def test_ray_backend_without_ray_says_how_to_install_it(local_sweep, monkeypatch):
    _, path, _ = local_sweep
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'fairaudit\[ray\]'"):
        run_sweep(_fresh(path), backend="ray")


def _fresh(path: Path) -> Path:
    """A copy of a sweep file writing to a new store, so no cell is already complete."""
    fresh = path.with_name("fresh.yaml")
    fresh.write_text(path.read_text().replace(f"store: {path.parent / 'local'}", f"store: {path.parent / 'fresh'}"))
    return fresh


def test_a_changed_base_makes_new_cells_and_paths_are_relative_to_their_file(model_folder, tmp_path, monkeypatch):
    """Rerun after its base changed outside the grid, a sweep runs new cells (a cell is its whole
    config) instead of reporting the old ones; `store` and the base's paths are read relative to
    the file that names them, whatever the current folder."""
    sweeps, bases = tmp_path / "sweeps", tmp_path / "bases"
    sweeps.mkdir()
    bases.mkdir()
    (bases / "m").symlink_to(model_folder("llama"))
    (bases / "audit.yaml").write_text(
        "model: m\nsuites: [race]\npruning: null\nevaluators: []\nreport: false\n"
        "probe: {plugin: activations, params: {progress: false}}\ndiagnose_top: 0\n"
    )
    path = sweeps / "s.yaml"
    path.write_text("sweep: s\nbase: ../bases/audit.yaml\nstore: out/store\ngrid:\n  seed: [0]\n")
    monkeypatch.chdir(tmp_path)  # neither the sweep's folder nor the base's
    first = run_sweep(path)
    assert [o.status for o in first.outcomes] == ["complete"] and first.store == (sweeps / "out" / "store").resolve()
    assert [o.status for o in run_sweep(path).outcomes] == ["skipped"]
    (bases / "audit.yaml").write_text((bases / "audit.yaml").read_text().replace("suites: [race]", "suites: [gender]"))
    second = run_sweep(path)
    assert [o.status for o in second.outcomes] == ["complete"] and second.cells[0].run_id != first.cells[0].run_id
    record = Store(second.store).read_run(second.cells[0].run_id)
    assert list(record["suites"]) == ["gender"]
