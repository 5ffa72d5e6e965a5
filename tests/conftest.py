"""Shared fixtures: small models of real architectures, saved and loaded like a user's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if os.environ.get(
    "PYTEST_XDIST_WORKER"
):  # `make test` runs two workers on two cores: one thread each (and in their subprocesses)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from fairaudit.cli import main  # noqa: E402
from fairaudit.testing import make_model  # noqa: E402

DATA = Path(__file__).parent / "data"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory):
    """A factory: model_folder('llama') -> folder of a small saved model of that family."""
    made: dict[tuple, Path] = {}

    def build(family: str = "llama", **shape) -> Path:
        key = (family, tuple(sorted(shape.items())))
        if key not in made:
            made[key] = make_model(family, tmp_path_factory.mktemp(family) / "model", **shape)
        return made[key]

    return build


@pytest.fixture(scope="session")
def llama_folder(model_folder) -> Path:
    return model_folder("llama")


@pytest.fixture
def cli():
    """Run the CLI in-process: cli('suites', 'list') -> click Result (exit_code, output)."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [str(arg) for arg in args], catch_exceptions=False)

    return invoke


def run_module(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `python -m fairaudit ARGS` in a subprocess (real exit status, real stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "fairaudit", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
