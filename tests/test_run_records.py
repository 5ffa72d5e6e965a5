"""Every run is recorded through `Store.recording`: running while it works, then complete, or
failed with its error, or interrupted (Ctrl-C, SIGTERM). A run that did not finish is never
checked, carded or bundled as if it had."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fairaudit.config import PruningConfig, RunConfig, SelectionParams
from fairaudit.errors import StoreError
from fairaudit.pipeline.audit import audit
from fairaudit.store import Store


def small_audit(model: Path, root: Path, **overrides) -> str:
    config = {
        "model": str(model),
        "suites": ["race"],
        "store": str(root / "store"),
        "report": False,
        "probe": {"plugin": "activations", "params": {"progress": False}},
        "pruning": None,
        "evaluators": [],
        "diagnose_top": 0,
        **overrides,
    }
    return audit(RunConfig.model_validate(config)).run_id


def only_run(store: Store, kind: str) -> dict:
    runs = [run for run in store.runs() if run["kind"] == kind]
    assert len(runs) == 1, runs
    return runs[0]


def test_a_run_of_every_kind_that_fails_is_recorded_failed_with_its_error(llama_folder, tmp_path, monkeypatch):
    import fairaudit.analysis.matching as matching
    import fairaudit.pipeline.audit as audit_module
    import fairaudit.pipeline.evaluation as evaluation
    import fairaudit.repair.prune as prune_module
    from fairaudit.analysis.overlap import load_scores
    from fairaudit.inputs.model import stored_name

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    store = Store(tmp_path / "store")
    source_run = small_audit(llama_folder, tmp_path)
    assert store.read_run(source_run)["status"] == "complete"

    with monkeypatch.context() as patched:  # an audit whose evaluation fails
        patched.setattr(audit_module, "run_evaluations", boom)
        with pytest.raises(RuntimeError, match="boom"):
            small_audit(llama_folder, tmp_path, evaluators=["output_bias"])
    failed = [run for run in store.runs() if run["kind"] == "audit" and run["status"] != "complete"]
    assert [(run["status"], run["error"]) for run in failed] == [("failed", "boom")]

    with monkeypatch.context() as patched:  # fairaudit evaluate (it stayed "running" before)
        patched.setattr(evaluation, "run_evaluations", boom)
        with pytest.raises(RuntimeError):
            evaluation.evaluate_models(str(llama_folder), None, ["race"], ["output_bias"], store.root)
    assert (only_run(store, "evaluate")["status"], only_run(store, "evaluate")["error"]) == ("failed", "boom")

    with monkeypatch.context() as patched:  # a prune whose model cannot be written: no half-written folder
        patched.setattr(prune_module, "save_pruned", boom)
        from fairaudit.pipeline.pruning import prune_model

        with pytest.raises(RuntimeError):
            prune_model(
                str(llama_folder),
                store.root,
                PruningConfig(selection=SelectionParams(axes=["race"], fraction=0.05)),
                tmp_path / "pruned",
                run_id=source_run,
            )
    assert (only_run(store, "prune")["status"], only_run(store, "prune")["error"]) == ("failed", "boom")
    assert not (tmp_path / "pruned").exists()

    with monkeypatch.context() as patched:  # a neuron matching
        patched.setattr(matching, "match_neurons", boom)
        scores = load_scores(store, stored_name(str(llama_folder)), "scaled_bias", source_run)
        with pytest.raises(RuntimeError):
            matching.compare_models(store, scores, scores, None, 0.05, permutations=99, max_words=60)
    assert (only_run(store, "match")["status"], only_run(store, "match")["error"]) == ("failed", "boom")

    with monkeypatch.context() as patched:  # Ctrl-C
        patched.setattr(evaluation, "run_evaluations", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            evaluation.evaluate_models(str(llama_folder), None, ["race"], ["output_bias"], tmp_path / "other")
    assert only_run(Store(tmp_path / "other"), "evaluate")["status"] == "interrupted"


def test_sigterm_stops_an_audit_that_is_recorded_interrupted(llama_folder, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {llama_folder}\nsuites: [race, gender, religion, nationality]\nstore: {tmp_path / 'store'}\n"
        f"pruning: null\nevaluators: [bias_reprobe, {{plugin: perplexity, params: {{max_length: 64}}}}]\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "fairaudit", "audit", str(config), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 180
    while not list((tmp_path / "store").glob("runs/*/run.json")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=180)
    record = json.loads(next((tmp_path / "store").glob("runs/*/run.json")).read_text())
    if record["status"] == "complete":  # the signal came after the run had finished (a very fast machine)
        assert process.returncode == 0
        return
    assert process.returncode == 143 and record["status"] == "interrupted", (
        process.returncode,
        record["status"],
        record.get("error"),
        stderr,
    )
    assert "terminated: results written so far are intact" in stderr and f"--resume {record['run_id']}" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("command", ["check", "card", "bundle"])
def test_a_run_that_did_not_finish_is_never_checked_carded_or_bundled(command, tmp_path, cli):
    store = Store(tmp_path / "store")
    for status in ("running", "failed", "interrupted"):
        store.write_run(status, {"kind": "audit", "status": status, "model_id": "m", "started": "2026-01-01T00:00:00Z"})
    store.write_run(
        "a-prune", {"kind": "prune", "status": "complete", "model_id": "m-pruned", "started": "2026-01-01T00:00:01Z"}
    )
    extra = {"check": ["--policy", "default"], "card": [], "bundle": ["--out", tmp_path / "b.zip"]}[command]
    for run_id in ("running", "failed", "interrupted", "a-prune"):
        refused = cli(command, tmp_path / "store", "--run", run_id, *extra)
        assert (
            refused.exit_code == 2 and "only a complete audit run can be checked, carded or bundled" in refused.output
        ), (run_id, refused.output)
    assert not (tmp_path / "b.zip").exists()


def test_the_record_of_a_run_is_typed_and_its_status_set_only_by_recording(tmp_path):
    store = Store(tmp_path / "store")
    with store.recording("evaluate", model_id="m") as record:
        assert store.read_run(record.run_id)["status"] == "running"
        record.evaluation_failures = []
    stored = store.read_run(record.run_id)
    assert stored["status"] == "complete" and stored["finished"] and stored["environment"]["python"]
    with pytest.raises(StoreError), store.recording("evaluate") as failing:
        raise StoreError("the disk is full")
    assert store.read_run(failing.run_id)["error"] == "the disk is full"


def test_a_rerun_with_the_same_settings_says_how_long_the_last_one_took(llama_folder, tmp_path, caplog):
    import logging

    small_audit(llama_folder, tmp_path, evaluators=["output_bias"])
    with caplog.at_level(logging.INFO, logger="fairaudit"):
        small_audit(llama_folder, tmp_path, evaluators=["output_bias"])
    said = [record.getMessage() for record in caplog.records]
    assert any("the last audit of" in line and "with these settings" in line for line in said), said
    assert any(line.startswith("evaluation: ") for line in said)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fairaudit"):
        small_audit(llama_folder, tmp_path, evaluators=["facts"])  # other settings: no estimate
    assert not any("the last audit of" in record.getMessage() for record in caplog.records)


def test_library_warnings_go_to_the_run_record_once_not_to_the_console(llama_folder, tmp_path, monkeypatch, recwarn):
    import warnings

    import fairaudit.pipeline.audit as audit_module

    original = audit_module.notify_stage_finished

    def warn_then_notify(*args, **kwargs):
        for _ in range(3):  # one place, three times: kept once
            warnings.warn("a library said something", UserWarning, stacklevel=1)
        return original(*args, **kwargs)

    monkeypatch.setattr(audit_module, "notify_stage_finished", warn_then_notify)
    run_id = small_audit(llama_folder, tmp_path)
    record = Store(tmp_path / "store").read_run(run_id)
    kept = [line for line in record["library_warnings"] if "a library said something" in line]
    assert len(kept) == 1 and kept[0].startswith("UserWarning: ")
    assert not [w for w in recwarn if "a library said something" in str(w.message)], "nothing reached the console"
