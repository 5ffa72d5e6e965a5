"""What leaves the machine (docs/trust.md, "Network"): an audit of a local model opens no socket,
whatever the environment says about the hub (run in a fresh interpreter without the offline
variables, since the hub libraries read them when they are imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import json, socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("the test forbids the network")
socket.socket.connect = socket.socket.connect_ex = refuse
socket.getaddrinfo = socket.create_connection = refuse
from fairaudit.config import RunConfig
from fairaudit.pipeline.audit import audit
result = audit(RunConfig.model_validate(json.loads(sys.argv[1])))
print(json.dumps({"attempts": attempts, "report": str(result.report)}))
"""


def test_an_audit_of_a_local_model_opens_no_socket(llama_folder, tmp_path):
    config = {
        "model": str(llama_folder),
        "suites": ["race", "gender"],
        "store": str(tmp_path / "store"),
        "probe": {"plugin": "activations", "params": {"progress": False}},
        "diagnose_top": 1,
        "policy": "default",
        "pruning": {"out": str(tmp_path / "pruned"), "causal": {"budgets": [0.02], "rounds": 1}},
        "evaluators": [
            "bias_reprobe",
            "output_bias",
            {"plugin": "random_baseline", "params": {"seeds": 2}},
            {"plugin": "generations", "params": {"pairs_per_axis": 2}},
            {"plugin": "perplexity", "params": {"max_length": 64}},
            {"plugin": "lm_eval", "params": {"limit": 4}},
            "facts",
            "fidelity",
        ],
    }
    environment = {key: value for key, value in os.environ.items() if not key.endswith("_OFFLINE")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(config)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["attempts"] == [] and found["report"].endswith(".html"), found
