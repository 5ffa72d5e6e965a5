"""The command line: help everywhere, `python -m fairaudit`, probe output."""

from __future__ import annotations

import json
import re

import pytest
from conftest import run_module

from fairaudit.cli import main

COMMANDS = [
    [],
    ["suites"],
    ["suites", "list"],
    ["suites", "show"],
    ["suites", "validate"],
    ["plugins"],
    ["probe"],
    ["audit"],
    ["store"],
    ["store", "ls"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "fairaudit")
def test_every_command_has_help(cli, command):
    result = cli(*command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output


def test_python_dash_m_is_the_same_command():
    completed = run_module("suites", "list")
    assert completed.returncode == 0 and "nationality" in completed.stdout
    assert main.name == "main"


def test_probe_prints_a_summary_per_axis_and_stores_it(cli, llama_folder, tmp_path):
    result = cli(
        "probe",
        "--model",
        llama_folder,
        "--suite",
        "race",
        "--suite",
        "religion",
        "--store",
        tmp_path / "s",
        "--position",
        "last",
        "--quiet",
        "--json",
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload["axes"]) == {"race", "religion"}
    assert payload["axes"]["race"]["pairs"] == 150 and payload["axes"]["religion"]["pairs"] == 150
    table = cli("probe", "--model", llama_folder, "--suite", "race", "--store", tmp_path / "s2")
    assert "bias index [95% CI]" in table.output and "race" in table.output
    listing = cli("store", "ls", tmp_path / "s")
    assert payload["run_id"] in listing.output and "complete" in listing.output


def test_store_ls_on_a_missing_folder_exits_2(cli, tmp_path):
    result = cli("store", "ls", tmp_path / "absent")
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_python_api_is_what_the_cli_calls_and_import_is_cheap():
    import subprocess
    import sys

    import fairaudit
    from fairaudit.pipeline import audit, evaluation

    assert fairaudit.audit is audit.audit and fairaudit.evaluate_models is evaluation.evaluate_models
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, fairaudit; print('torch' in sys.modules)"], capture_output=True, text=True
    )
    assert probe.stdout.strip() == "False"


def test_evaluate_help_names_every_default_evaluator(cli):
    from fairaudit.config import DEFAULT_EVALUATORS

    output = " ".join(cli("evaluate", "--help").output.split())
    assert all(name in output for name in DEFAULT_EVALUATORS)


def test_a_relative_model_path_names_the_store_the_same_way_in_every_command(cli, model_folder, tmp_path, monkeypatch):
    """`probe --model ./x/model` stores results as 'model'; `overlap --model ./x/model` (or
    the absolute path, or `.` from inside the folder) finds them."""
    import shutil

    shutil.copytree(model_folder("llama"), tmp_path / "x" / "model")
    monkeypatch.chdir(tmp_path)
    probed = cli("probe", "--model", "./x/model", "--suite", "race", "--suite", "gender", "--store", "store", "--quiet")
    assert probed.exit_code == 0, probed.output
    for spelling in ("./x/model", str(tmp_path / "x" / "model"), "x/model/"):
        result = cli("overlap", "store", "--model", spelling, "--json")
        assert result.exit_code == 0, (spelling, result.output)
    monkeypatch.chdir(tmp_path / "x" / "model")
    assert cli("overlap", str(tmp_path / "store"), "--model", ".", "--json").exit_code == 0


def test_audit_says_each_stage_on_stderr_and_quiet_says_nothing(cli, llama_folder, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {llama_folder}\nsuites: [race, gender]\nstore: {tmp_path / 'store'}\nreport: false\n"
        f"pruning: {{selection: {{fraction: 0.05}}, out: {tmp_path / 'pruned'}}}\nevaluators: [bias_reprobe]\n"
    )
    loud = cli("audit", config)
    assert loud.exit_code == 0, loud.output
    lines = [line for line in loud.stderr.splitlines() if line.startswith("fairaudit: ")]
    assert lines[0] == f"fairaudit: loading {llama_folder}"
    assert any(line.startswith("fairaudit: probing axis 1 of 2: race (") for line in lines)
    assert any(line.startswith("fairaudit: probing axis 2 of 2: gender (") for line in lines)
    assert any(
        line.startswith("fairaudit: writing the pruned model to ") and "MiB in float32" in line for line in lines
    )
    # the two models are evaluated side by side: either line may come first
    # (each with its estimate from the tokens it will forward: ", about N s")
    assert [re.sub(r", about \d+ (s|min)$", "", line) for line in sorted(lines) if "evaluating" in line] == [
        "fairaudit: evaluating 1 of 2: bias_reprobe on the original model",
        "fairaudit: evaluating 2 of 2: bias_reprobe on the pruned model",
    ]
    quiet = cli("audit", config, "--store", tmp_path / "store2", "--quiet")
    assert quiet.exit_code == 0 and quiet.stdout == "" and "fairaudit: " not in quiet.stderr


def test_library_bars_and_load_reports_stay_off_the_console(llama_folder, tmp_path):
    """transformers' own progress bars ('Loading weights') would interleave with fairaudit's one
    line per stage: the command turns them off unless the user's environment asks for them."""
    import os
    import subprocess
    import sys

    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "fairaudit",
            "probe",
            "--model",
            str(llama_folder),
            "--suite",
            "race",
            "--store",
            str(tmp_path / "store"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "HF_HUB_OFFLINE": "1"},
    )
    assert completed.returncode == 0, completed.stderr
    assert "fairaudit: loading" in completed.stderr and "Loading weights" not in completed.stderr


def test_lm_eval_prints_nothing_of_its_own_outside_a_git_repository(llama_folder, tmp_path):
    """lm-eval's request-building bar and its `git describe` ("fatal: not a git repository")
    would reach the console between fairaudit's lines; the lm_eval evaluator keeps them off."""
    (tmp_path / "audit.yaml").write_text(
        f"model: {llama_folder}\nsuites: [race]\nstore: {tmp_path / 'store'}\npruning: null\n"
        f"evaluators: [lm_eval]\nreport: false\ndiagnose_top: 0\n"
    )
    completed = run_module("audit", "audit.yaml", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    printed = [line for line in completed.stderr.splitlines() if line and not line.startswith("fairaudit: ")]
    assert "evaluating 1 of 1: lm_eval" in completed.stderr
    assert not [line for line in printed if "fatal" in line or "/40" in line], printed


def test_help_lists_what_a_user_can_type(cli):
    """--help of prune, probe and evaluate ends with the registered plugins, one line each, and
    the score columns each scorer writes."""
    prune = cli("prune", "--help").output
    assert (
        "Scorers" in prune
        and "Pruners" in prune
        and "output_bias_reduction" in prune
        and "[columns: p_value, q_value]" in prune
    )
    evaluate = cli("evaluate", "--help").output
    assert "Evaluators" in evaluate and "random_baseline" in evaluate and "factual-knowledge control" in evaluate
    assert "Probes" in cli("probe", "--help").output


def test_device_and_dtype_reach_every_command_that_loads_a_model(cli, llama_folder, tmp_path):
    """--dtype bfloat16 (CPU here; the device machine runs the same with --device cuda): the
    audit's config is overridden, probe / prune / evaluate / diagnose load the model in it, and a
    prune whose dtype differs from its store run's is refused with the --dtype to pass."""
    import torch

    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {llama_folder}\nsuites: [race]\nstore: {tmp_path / 'store'}\nreport: false\n"
        f"pruning: {{selection: {{fraction: 0.05}}, out: {tmp_path / 'pruned'}}}\nevaluators: [output_bias]\n"
    )
    audited = cli("audit", config, "--dtype", "bfloat16", "--device", "cpu", "--quiet", "--json")
    assert audited.exit_code == 0, audited.output
    run = json.loads(audited.stdout)["run_id"]
    from fairaudit.store import Store

    record = Store(tmp_path / "store").read_run(run)
    assert record["model"]["dtype"] == "bfloat16"
    assert cli("audit", config, "--resume", run, "--dtype", "float32").exit_code == 2
    refused = cli(
        "prune",
        "--model",
        llama_folder,
        "--store",
        tmp_path / "store",
        "--axis",
        "race",
        "--fraction",
        "0.05",
        "--out",
        tmp_path / "p32",
        "--quiet",
    )
    assert refused.exit_code == 2 and "pass --dtype bfloat16" in refused.output and not (tmp_path / "p32").exists()
    pruned = cli(
        "prune",
        "--model",
        llama_folder,
        "--store",
        tmp_path / "store",
        "--axis",
        "race",
        "--fraction",
        "0.05",
        "--out",
        tmp_path / "p16",
        "--dtype",
        "bfloat16",
        "--save-dtype",
        "bfloat16",
        "--quiet",
    )
    assert pruned.exit_code == 0, pruned.output
    from safetensors import safe_open

    with safe_open(str(next((tmp_path / "p16").glob("*.safetensors"))), "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.bfloat16}
    evaluated = cli(
        "evaluate",
        "--model",
        llama_folder,
        "--compare",
        tmp_path / "p16",
        "--suite",
        "race",
        "--evaluator",
        "output_bias",
        "--store",
        tmp_path / "ev",
        "--dtype",
        "bfloat16",
        "--quiet",
        "--json",
    )
    assert evaluated.exit_code == 0, evaluated.output
    record = Store(tmp_path / "ev").read_run(json.loads(evaluated.stdout)["run_id"])
    assert record["model"]["dtype"] == "bfloat16" and record["compare"]["dtype"] == "bfloat16"
    diagnosed = cli(
        "diagnose",
        "--model",
        llama_folder,
        "--suite",
        "race",
        "--top",
        "1",
        "--out",
        tmp_path / "d",
        "--dtype",
        "bfloat16",
        "--json",
    )
    assert diagnosed.exit_code == 0, diagnosed.output


def test_audit_takes_the_model_on_the_command_line(cli, llama_folder, tmp_path):
    """`fairaudit audit [CONFIG] --model PATH_OR_ID` audits that model with the config's settings."""
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: smollm2-135m\nsuites: [race]\npruning: null\nevaluators: []\nreport: false\n"
        "diagnose_top: 0\nprobe: {plugin: activations, params: {progress: false}}\n"
    )
    done = cli("audit", config, "--model", llama_folder, "--store", tmp_path / "store", "--json")
    assert done.exit_code == 0, done.output
    payload = json.loads(done.stdout)
    assert payload["model"] == llama_folder.name and list(payload["axes"]) == ["race"]
    refused = cli("audit", "--resume", payload["run_id"], "--store", tmp_path / "store", "--model", llama_folder)
    assert refused.exit_code == 2 and "cannot be given with --resume" in refused.output


def test_the_default_audit_applies_the_default_policy_and_a_bug_is_not_a_verdict(cli, monkeypatch, tmp_path):
    """`fairaudit audit` with no config is gated by the default policy (its exit status is the gate's:
    0, 1 fail, 3 undecided); an evaluator failure exits 4 and an unexpected exception (a bug) 70
    with its traceback, so that neither reads as a verdict."""
    import fairaudit.pipeline.audit as audit_module
    from fairaudit.errors import FairauditError

    seen = []

    def stop(config, **kwargs):
        seen.append(config)
        raise FairauditError("stopped here")

    monkeypatch.setattr(audit_module, "audit", stop)
    assert cli("audit", "--store", tmp_path / "store").exit_code == 2
    assert cli("audit", "--store", tmp_path / "store", "--model", "./elsewhere").exit_code == 2
    assert [config.policy for config in seen] == ["default", "default"]

    def bug(config, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(audit_module, "audit", bug)
    crashed = cli("audit", "--store", tmp_path / "store")
    assert crashed.exit_code == 70 and "RuntimeError: kaboom" in crashed.stderr and "a bug" in crashed.stderr
