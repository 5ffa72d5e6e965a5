"""The plugin registry: built-ins come through the entry-point group like any plugin,
and a third-party package's plugin is listed and used by name."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import run_module

import fairaudit
from fairaudit.errors import PluginError
from fairaudit.hookspecs import hookimpl
from fairaudit.plugins import register_plugin, registry, unregister_plugin

THIRD_PARTY = textwrap.dedent('''
    """A third-party fairaudit plugin: the largest signed difference per neuron."""
    from pydantic import BaseModel
    from fairaudit.hookspecs import hookimpl

    class Params(BaseModel):
        scale: float = 1.0

    class PeakSigned:
        name = "peak_signed"
        description = "absolute mean signed difference, scaled"
        Params = Params

        def compute(self, stats, loaded, scores, params):
            component = stats.components[scores.component]
            scores.neuron["peak_signed"] = (component.diff_sum / stats.n_pairs).abs() * params.scale

    @hookimpl
    def register_scorers(register):
        register(PeakSigned())
''')


def make_third_party_package(root: Path) -> Path:
    (root / "fairaudit_peak").mkdir(parents=True)
    (root / "fairaudit_peak" / "__init__.py").write_text(THIRD_PARTY)
    dist = root / "fairaudit_peak-0.3.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fairaudit-peak\nVersion: 0.3.1\n")
    (dist / "entry_points.txt").write_text("[fairaudit]\npeak = fairaudit_peak\n")
    return root


def test_builtins_are_registered_through_the_entry_point_group():
    entries = {(e.kind, e.name): e for e in registry().entries()}
    for key in [
        ("adapter", "glu"),
        ("adapter", "gpt2"),
        ("adapter", "bert"),
        ("adapter", "opt"),
        ("adapter", "fused_glu"),
        ("probe", "activations"),
        ("scorer", "bias"),
        ("scorer", "hybrid"),
        ("scorer", "layer_index"),
    ]:
        assert key in entries
        assert entries[key].distribution == "fairaudit"
        assert entries[key].plugin.startswith("fairaudit:")


def test_unknown_plugin_lists_what_is_installed():
    with pytest.raises(PluginError, match="Installed scorers: ablation, bias, hybrid, importance"):
        registry().get("scorer", "nope")


def test_third_party_plugin_is_listed_and_used_by_name(tmp_path: Path, llama_folder: Path):
    site = make_third_party_package(tmp_path / "site")
    env = {"PYTHONPATH": str(site)}
    listing = run_module("plugins", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    entry = next(e for e in json.loads(listing.stdout) if e["name"] == "peak_signed")
    assert (entry["kind"], entry["distribution"], entry["version"]) == ("scorer", "fairaudit-peak", "0.3.1")

    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {llama_folder}\nsuites: [race]\nstore: {tmp_path / 'store'}\n"
        "scoring: {scorers: [bias, {plugin: peak_signed, params: {scale: 2.0}}, layer_index]}\n"
        "pruning: null\nevaluators: []\nreport: false\n"
    )
    completed = run_module("audit", config, "--quiet", env=env)
    assert completed.returncode == 0, completed.stderr
    import pyarrow.dataset as ds

    table = ds.dataset(tmp_path / "store" / "neuron_scores", partitioning="hive").to_table()
    assert "peak_signed" in table.column_names and "bias" in table.column_names
    assert max(table.column("peak_signed").to_pylist()) > 0

    without = run_module("audit", config, "--quiet")
    assert without.returncode == 2 and "no scorer plugin named 'peak_signed'" in without.stderr


def test_plugin_registered_in_process_and_a_failing_one_is_named():
    class Broken:
        @hookimpl
        def register_scorers(self, register):
            raise RuntimeError("boom")

    register_plugin(Broken(), name="broken-plugin")
    try:
        with pytest.raises(PluginError, match="'broken-plugin' failed in register_scorers: RuntimeError: boom"):
            registry()
    finally:
        unregister_plugin("broken-plugin")
    assert "bias" in registry().names("scorer")


def test_plugins_command_lists_sources(cli):
    output = cli("plugins").output
    assert "adapter" in output and "glu" in output and f"fairaudit {fairaudit.__version__}" in output


def test_listing_plugins_imports_no_heavy_library():
    """`fairaudit plugins` and `--help` answer in about a second: registering every built-in
    plugin imports neither torch, transformers, scipy, pyarrow nor numpy (fairaudit.lazy)."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom fairaudit.cli import main\n"
        "result = CliRunner().invoke(main, ['plugins'])\nassert result.exit_code == 0 and 'output_attribution' in result.output\n"
        "print(sorted(m for m in ('torch', 'transformers', 'scipy', 'pyarrow', 'numpy') if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"
