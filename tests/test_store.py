"""The store: hive-partitioned Parquet read by standard tools, atomic writes, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from fairaudit.config import RunConfig
from fairaudit.errors import StoreError
from fairaudit.pipeline.audit import audit
from fairaudit.store import SCHEMA_VERSION, Store, safe_name


def small_config(model: Path, store: Path, suites=("race", "gender")) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": str(model),
            "suites": list(suites),
            "store": str(store),
            "probe": {"plugin": "activations", "params": {"progress": False}},
            "pruning": None,
            "evaluators": [],
            "report": False,
        }
    )


@pytest.fixture(scope="module")
def finished(model_folder, tmp_path_factory):
    store = tmp_path_factory.mktemp("store") / "store"
    result = audit(small_config(model_folder("llama"), store))
    return store, result


def test_tables_are_typed_partitioned_and_versioned(finished):
    store, result = finished
    part = Store(store).part_path("neuron_scores", result.model_id, "race", result.run_id)
    assert part.exists() and part.parent.name == f"run_id={result.run_id}" and part.parent.parent.name == "axis=race"
    schema = pq.read_schema(part)
    assert str(schema.field("layer").type) == "int16" and str(schema.field("neuron").type) == "int32"
    assert str(schema.field("bias").type) == "float" and str(schema.field("hybrid").type) == "float"
    assert schema.metadata[b"fairaudit.schema_version"] == str(SCHEMA_VERSION).encode()
    table = pq.read_table(part)
    assert table.num_rows == 2 * 64 and sorted(set(table.column("layer").to_pylist())) == [0, 1]


def test_standard_tools_read_the_store_as_one_table(finished):
    store, result = finished
    table = ds.dataset(store / "neuron_scores", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 2 * 2 * 64 and set(table.column("axis").to_pylist()) == {"race", "gender"}
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_parquet(store / "neuron_scores")
    assert len(frame) == table.num_rows and {"model", "axis", "run_id", "bias"} <= set(frame.columns)
    duckdb = pytest.importorskip("duckdb")
    count, axes = duckdb.sql(
        f"select count(*), count(distinct axis) from read_parquet('{store}/neuron_scores/**/*.parquet', hive_partitioning=true)"
    ).fetchall()[0]
    assert (count, axes) == (table.num_rows, 2)


def test_run_record_holds_provenance(finished):
    store, result = finished
    record = Store(store).read_run(result.run_id)
    assert record["status"] == "complete" and record["model"]["weights_hash"]
    assert set(record["suites"]) == {"race", "gender"} and len(record["suites"]["race"]["sha256"]) == 64
    assert record["environment"]["torch"] and record["seed"] == 0 and "axis:race" in record["timings"]
    assert any(p["name"] == "bias" and p["distribution"] == "fairaudit" for p in record["plugins"])


def test_summary_numbers_come_from_the_store(finished):
    store, result = finished
    row = Store(store).read("axis_summary", model=result.model_id, axis="race", run_id=result.run_id).to_pylist()[0]
    assert row["bias_index"] == result.summaries["race"]["bias_index"]
    assert row["bias_index_low"] <= row["bias_index"] <= row["bias_index_high"]


def test_safe_names_cannot_escape_the_store():
    for hostile in ("../../etc", "/abs/path", "a\x00b", "x" * 500, "..", "org/model"):
        name = safe_name(hostile)
        assert "/" not in name and "\x00" not in name and not name.startswith(".") and 0 < len(name) <= 96


def test_failed_write_leaves_nothing_partial(tmp_path, monkeypatch):
    import pyarrow as pa

    store = Store(tmp_path / "store")

    def full_disk(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full_disk)
    with pytest.raises(StoreError, match="No space left on device"):
        store.write_part("neuron_scores", "m", "race", "r1", pa.table({"x": [1]}))
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []


def test_resume_skips_stored_axes_and_matches_an_uninterrupted_run(model_folder, tmp_path):
    model = model_folder("llama")
    config = small_config(model, tmp_path / "store")
    first = audit(config.model_copy(update={"suites": ["race"]}))
    # the run is resumed with the full suite list (as after a kill between axes)
    record = Store(config.store).read_run(first.run_id)
    record["config"]["suites"] = ["race", "gender"]
    record["status"] = "running"
    Store(config.store).write_run(
        first.run_id, {k: v for k, v in record.items() if k not in ("run_id", "schema_version")}
    )
    resumed = audit(config, resume=first.run_id)
    assert resumed.skipped_axes == ["race"]
    uninterrupted = audit(config.model_copy(update={"store": str(tmp_path / "other")}))
    for axis in ("race", "gender"):
        assert resumed.summaries[axis]["bias_index"] == pytest.approx(
            uninterrupted.summaries[axis]["bias_index"], rel=1e-6
        )
    assert Store(config.store).read_run(first.run_id)["status"] == "complete"


def test_sigkill_between_axes_then_resume(model_folder, tmp_path):
    """Kill the CLI as soon as the first axis is stored; no partial part; --resume finishes."""
    store = tmp_path / "store"
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {model_folder('llama')}\nsuites: [race, gender]\nstore: {store}\n"
        "pruning: {selection: {fraction: 0.05}}\nevaluators: [output_bias]\n"
    )  # the default 0.2% is no neuron of this small model; one evaluator (tests/test_interrupts.py kills evaluations)
    process = subprocess.Popen(
        [sys.executable, "-m", "fairaudit", "audit", str(config), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(store.glob("axis_summary/*/axis=race/*/part-0.parquet")):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    for part in store.rglob("*.parquet"):
        pq.read_table(part)  # every part on disk is complete
    run_id = json.loads(next(store.glob("runs/*/run.json")).read_text())["run_id"]
    done = subprocess.run(
        [sys.executable, "-m", "fairaudit", "audit", "--resume", run_id, "--store", str(store), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)["axes"]) == {"race", "gender"}
    assert Store(store).read_run(run_id)["status"] == "complete"
    assert list(store.rglob("*.tmp-*")) == [], "temporaries of the killed writer are cleaned on resume"


def _dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def test_resume_removes_a_killed_writers_temporaries_only_for_its_run(tmp_path):
    store = Store(tmp_path)
    dead = _dead_pid()
    mine = tmp_path / f"neuron_scores/model=m/axis=race/run_id=r1/.part-0.parquet.tmp-{dead}-ab"
    other = tmp_path / f"neuron_scores/model=m/axis=race/run_id=r2/.part-0.parquet.tmp-{dead}-cd"
    alive = (
        tmp_path / f"layer_scores/model=m/axis=race/run_id=r1/.part-0.parquet.tmp-{os.getpid()}-ef"
    )  # a writer still running
    for path in (mine, other, alive):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"partial")
    assert store.remove_temporaries("r1") == 1
    assert not mine.exists() and other.exists() and alive.exists()


def test_two_runs_writing_to_one_store_at_once(model_folder, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {model_folder('llama')}\nsuites: [race, gender]\nstore: {tmp_path / 'store'}\n"
        "pruning: {selection: {fraction: 0.05}}\nevaluators: [output_bias]\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "fairaudit", "audit", str(config), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err for _, err in outputs]
    run_ids = {json.loads(out)["run_id"] for out, _ in outputs}
    assert len(run_ids) == 2
    table = ds.dataset(tmp_path / "store" / "axis_summary", partitioning="hive").to_table()
    assert table.num_rows == 4 and set(table.column("run_id").to_pylist()) == run_ids


def test_run_records_hold_wall_and_cpu_seconds_per_stage(model_folder, tmp_path):
    result = audit(
        RunConfig.model_validate(
            {
                "model": str(model_folder("llama")),
                "suites": ["race"],
                "store": str(tmp_path / "store"),
                "report": False,
                "probe": {"plugin": "activations", "params": {"progress": False}},
                "pruning": {"selection": {"fraction": 0.05}},
                "evaluators": ["output_bias"],
            }
        )
    )
    timings = Store(tmp_path / "store").read_run(result.run_id)["timings"]
    for stage in (
        "load_model",
        "axis:race",
        "prune",
        "evaluate:output_bias:before",
        "evaluate:output_bias:after",
        "evaluate",
        "total",
    ):
        assert timings[stage] > 0 and timings[f"{stage}:cpu"] > 0, stage
    assert timings["total"] >= timings["axis:race"] + timings["prune"]


def _audit_with_policy(model: Path, folder: Path):
    """A small complete audit (race, output_bias) checked against the default policy."""
    from fairaudit.pipeline.audit import audit

    config = {
        "model": str(model),
        "suites": ["race"],
        "store": str(folder / "store"),
        "report": False,
        "probe": {"plugin": "activations", "params": {"progress": False}},
        "pruning": None,
        "evaluators": ["output_bias"],
        "diagnose_top": 0,
        "policy": "default",
    }
    return audit(RunConfig.model_validate(config))


def test_any_single_changed_byte_of_a_stored_table_is_detected(llama_folder, tmp_path, cli):
    """A complete run records the sha256 of every table file it wrote; check, card, bundle and report
    refuse the run once any byte of any of them changes (or a file goes missing or is added), naming it."""
    import random

    from fairaudit.errors import StoreError

    result = _audit_with_policy(llama_folder, tmp_path)
    store = Store(tmp_path / "store")
    record = store.verify(result.run_id)
    assert record["files"] and all(name.endswith(".parquet") for name in record["files"])
    chooser = random.Random(0)
    for name in record["files"]:
        path = store.root / name
        original = path.read_bytes()
        position = chooser.randrange(len(original))
        path.write_bytes(original[:position] + bytes([original[position] ^ 1]) + original[position + 1 :])
        with pytest.raises(StoreError, match="changed since the run completed"):
            store.verify(result.run_id)
        path.write_bytes(original)
    store.verify(result.run_id)
    first = store.root / next(iter(record["files"]))
    extra = first.with_name("part-extra.parquet")
    extra.write_bytes(first.read_bytes())
    for command in (
        ["check"],
        ["card"],
        ["bundle", "--out", tmp_path / "b.zip"],
        ["report", "--out", tmp_path / "r.html"],
    ):
        refused = cli(*command[:1], store.root, "--run", result.run_id, *command[1:])
        assert refused.exit_code == 2 and "added since the run completed" in refused.output, (command, refused.output)
    extra.unlink()
    assert cli("check", store.root, "--run", result.run_id).exit_code in (0, 1, 3)


def test_a_stored_policy_loosened_after_the_run_is_refused(llama_folder, tmp_path, cli):
    import json

    result = _audit_with_policy(llama_folder, tmp_path)
    path = Store(tmp_path / "store").run_path(result.run_id)
    record = json.loads(path.read_text())
    record["policy"]["definition"]["rules"][0]["abs_at_most"] = 100.0
    path.write_text(json.dumps(record))
    refused = cli("check", tmp_path / "store", "--run", result.run_id)
    assert refused.exit_code == 2 and "no longer matches the sha256 recorded" in refused.output
    record["policy"]["definition"] = {"policy": "x"}
    path.write_text(json.dumps(record))
    refused = cli("check", tmp_path / "store", "--run", result.run_id)
    assert refused.exit_code == 2 and "not a valid policy" in refused.output and "Traceback" not in refused.output


def test_a_pruned_model_folder_this_run_did_not_write_is_never_deleted(llama_folder, tmp_path):
    """Two stores under one parent share the default `pruned/` folder: a run whose record does not
    say it wrote a folder there refuses to delete it (it may hold another store's model)."""
    from fairaudit.errors import StoreError
    from fairaudit.pipeline.audit import audit

    config = {
        "model": str(llama_folder),
        "suites": ["race"],
        "report": False,
        "diagnose_top": 0,
        "evaluators": [],
        "probe": {"plugin": "activations", "params": {"progress": False}},
        "pruning": {"selection": {"fraction": 0.05}},
    }
    first = audit(
        RunConfig.model_validate(
            {**config, "store": str(tmp_path / "one")},
        )
    )
    folder = Path(first.pruned["out"])
    assert (folder / "fairaudit_neuron_map.json").exists()
    with pytest.raises(StoreError, match="did not record writing"):
        audit(RunConfig.model_validate({**config, "store": str(tmp_path / "two")}), run_id=first.run_id)
    assert (folder / "fairaudit_neuron_map.json").exists()  # the first store's pruned model is intact
