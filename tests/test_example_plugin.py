"""The worked third-party plugin under examples/ is a real package: installed with pip (into a
temporary folder, so the test environment is left as it was), fairaudit finds it through its
entry point, lists it, and an audit uses its scorer and evaluator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fairaudit.store import Store

EXAMPLE = Path(__file__).parent.parent / "examples" / "fairaudit-peak"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    target, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("source") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source)  # pip builds in the source folder: a copy keeps the checkout clean
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
    }


def fairaudit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fairaudit", *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )


def test_the_example_plugin_is_listed_with_its_distribution(installed):
    listed = fairaudit(installed, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {(row["kind"], row["name"]): row for row in json.loads(listed.stdout)}
    for kind, name in (("scorer", "peak_signed"), ("evaluator", "neutral_gap")):
        assert rows[(kind, name)]["distribution"].startswith("fairaudit-peak"), rows[(kind, name)]


def test_an_audit_uses_the_example_scorer_and_evaluator(installed, llama_folder, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"""model: {llama_folder}
suites: [race]
store: {tmp_path / "store"}
report: false
scoring: {{scorers: [bias, {{plugin: peak_signed, params: {{scale: 2}}}}]}}
evaluators: [neutral_gap]
pruning: null
""")
    run = fairaudit(installed, "audit", config, "--quiet")
    assert run.returncode == 0, run.stderr
    store = Store(tmp_path / "store")
    neurons = store.rows("neuron_scores", axis="race")
    assert neurons and all(
        row["peak_signed"] == pytest.approx(2 * abs(row["signed_bias"]), rel=1e-5, abs=1e-9) for row in neurons[:50]
    )
    gaps = [row for row in store.rows("evaluations") if row["evaluator"] == "neutral_gap"]
    assert gaps and gaps[0]["metric"] == "neutral_gap" and gaps[0]["value"] >= 0 and gaps[0]["n"] > 10
