"""Hostile or careless input, part two: no foreign code runs, no number is silently wrong,
nothing the user did not name is overwritten, small files do not hang, and errors are one
paragraph with exit status 2. Each test fails without the protection it names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from conftest import run_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from fairaudit.config import RunConfig, load_config
from fairaudit.errors import ConfigError, FairauditError, ModelError, StoreError, SuiteError
from fairaudit.inputs.model import ModelSpec, load_model
from fairaudit.inputs.suite import load_suite, resolve_suites
from fairaudit.measurement.probe import screen_pairs
from fairaudit.pipeline.audit import _check_model_name, audit
from fairaudit.pipeline.pruning import prune_model
from fairaudit.reporting.report import render_report, report_data
from fairaudit.store import Store

TWO_GROUPS = "suite: s\naxis: {axis}\ngroups:\n  a: {{group: Black}}\n  b: {{group: white}}\ntemplates:\n  - {{id: t, text: 'The {{group}} man walked'}}\n"


def _copy_model(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    return target


def _weights(folder: Path) -> Path:
    return next(folder.glob("*.safetensors"))


@pytest.fixture(scope="module")
def audited(model_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    result = audit(
        RunConfig.model_validate(
            {
                "model": str(model_folder("llama")),
                "suites": ["race", "gender"],
                "store": str(root / "store"),
                "probe": {"plugin": "activations", "params": {"progress": False}},
                "pruning": {"out": str(root / "pruned"), "selection": {"fraction": 0.05}},
                "evaluators": ["bias_reprobe", "output_bias"],
                "report": False,
            }
        )
    )
    return root, result


# --- code execution -------------------------------------------------------------------------------


def test_lm_eval_task_folder_with_function_tags_needs_the_flag(llama_folder, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "evil.yaml").write_text("task: evil\ndataset_path: json\nprocess_docs: !function utils.run\n")
    (tasks / "utils.py").write_text("import os\nos.system('touch pwned')\ndef run(d): return d\n")
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {llama_folder}\nsuites: [race]\npruning: null\n"
        f"evaluators: [{{plugin: lm_eval, params: {{tasks: [evil], include_path: {tasks}}}}}]\n"
    )
    process = run_module("audit", config, "--store", tmp_path / "store", cwd=tmp_path)
    assert process.returncode == 2 and "--allow-task-code" in process.stderr and "Traceback" not in process.stderr
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "store").exists()
    allowed = load_config(config, granted={"allow_task_code"})  # the flag grants it
    assert allowed.evaluators[0].params["allow_task_code"] is True
    asked = tmp_path / "asked.yaml"  # a file cannot grant it to itself
    asked.write_text(config.read_text().replace("include_path:", "allow_task_code: true, include_path:"))
    with pytest.raises(ConfigError, match="allow-task-code"):
        load_config(asked)


def test_a_config_or_a_stored_run_cannot_turn_on_remote_code_or_pickles(llama_folder, tmp_path, audited):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{id: {llama_folder}, trust_remote_code: true, allow_pickle: true}}\nsuites: [race]\n")
    with pytest.raises(ConfigError, match="--allow-pickle --trust-remote-code"):
        load_config(config)
    assert load_config(config, granted={"trust_remote_code", "allow_pickle"}).model.trust_remote_code
    root, _ = audited
    store = Store(tmp_path / "store")
    shutil.copytree(root / "store", store.root)
    interrupted = "tampered"
    record = store.read_run(audited[1].run_id)
    record["config"]["model"]["trust_remote_code"] = True
    store.write_run(interrupted, {**record, "status": "interrupted", "run_id": interrupted})
    with pytest.raises(ConfigError, match="stored config of run tampered.*--trust-remote-code"):
        audit(resume=interrupted, config=RunConfig(store=str(store.root)))


def test_report_never_trusts_markup_read_from_a_store(audited, tmp_path):
    root, result = audited
    store = Store(tmp_path / "store")
    shutil.copytree(root / "store", store.root)
    hostile = (
        '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script>'
        '<img src=x onerror="alert(3)"><text x="1">ok</text><a href="javascript:alert(4)"><rect/></a></svg>'
    )
    store.write_part(
        "diagnosis",
        result.model_id,
        "race",
        result.run_id,
        pa.Table.from_pylist([{"pair_id": "p", "figure": "divergence_map", "svg": hostile}]),
    )
    # an attacker who also rewrites the run's manifest of hashes (docs/trust.md): the markup is still not trusted
    store.write_run(result.run_id, {**store.read_run(result.run_id), "files": store.run_files(result.run_id)})
    html, _ = render_report(report_data(store, result.run_id), tmp_path / "report.html")
    text = html.read_text(encoding="utf-8")
    for marker in ("<script", "onerror", "onload", "javascript:", "<img"):
        assert marker not in text.lower(), marker
    assert '<text x="1">ok</text>' in text  # the allowed part of the figure survives


def test_shard_maps_cannot_reach_pickles_or_files_outside_the_folder(llama_folder, tmp_path):
    folder = _copy_model(llama_folder, tmp_path / "model")
    weights = _weights(folder)
    index = {"metadata": {}, "weight_map": {name: "pytorch_model-00001.bin" for name in load_file(weights)}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    weights.rename(folder / "elsewhere.bak")
    with pytest.raises(ModelError, match="pickled weight file 'pytorch_model-00001.bin'.*--allow-pickle"):
        load_model(str(folder))
    index["weight_map"] = {name: "../../outside.safetensors" for name in index["weight_map"]}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="outside the folder"):
        load_model(ModelSpec(id=str(folder), allow_pickle=True))


# --- silent wrong numbers -------------------------------------------------------------------------


def test_axes_and_models_that_sanitise_alike_are_refused(tmp_path):
    (tmp_path / "one.yaml").write_text(TWO_GROUPS.format(axis="gender"))
    (tmp_path / "two.yaml").write_text(TWO_GROUPS.format(axis="gender."))
    with pytest.raises(ConfigError, match="stored under one name"):
        resolve_suites([str(tmp_path / "one.yaml"), str(tmp_path / "two.yaml")])
    store = Store(tmp_path / "store")
    store.write_run("r1", {"kind": "audit", "status": "complete", "model_id": "org/model"})
    with pytest.raises(ConfigError, match="same name"):
        _check_model_name(store, "org--model")
    _check_model_name(store, "org/model")  # the same model again is fine


def test_neuron_marks_come_from_this_runs_own_prune(audited, tmp_path):
    root, result = audited
    store = Store(tmp_path / "store")
    shutil.copytree(root / "store", store.root)
    before = report_data(store, result.run_id)["top_neurons"]
    pruned_id = Path(result.pruned["out"]).name
    layers = {row["layer"] for row in store.rows("neuron_maps", model=pruned_id)}
    other = [
        {"layer": layer, "pruned_index": 0, "original_index": 0, "zeroed": False} for layer in layers
    ]  # keeps one neuron
    store.write_part("neuron_maps", pruned_id, "race", "20990101T000000-other", pa.Table.from_pylist(other))
    assert report_data(store, result.run_id)["top_neurons"] == before


def test_non_finite_weights_and_activations_are_refused(llama_folder, tmp_path):
    folder = _copy_model(llama_folder, tmp_path / "nan")
    tensors = load_file(_weights(folder))
    name = next(n for n in tensors if "mlp.down_proj" in n)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, _weights(folder), metadata={"format": "pt"})
    with pytest.raises(ModelError, match=f"'{name}' holds NaN"):
        load_model(str(folder))
    folder = _copy_model(llama_folder, tmp_path / "overflow")  # finite weights whose activations overflow
    tensors = load_file(_weights(folder))
    for key in tensors:
        if "layers.0.mlp" in key:
            tensors[key] = tensors[key] * 1e30
    save_file(tensors, _weights(folder), metadata={"format": "pt"})
    config = RunConfig.model_validate(
        {
            "model": str(folder),
            "suites": ["race"],
            "store": str(tmp_path / "store"),
            "pruning": None,
            "evaluators": [],
            "report": False,
            "probe": {"plugin": "activations", "params": {"progress": False}},
        }
    )
    with pytest.raises(ModelError, match="activations are not finite"):
        audit(config)
    assert not list((tmp_path / "store").glob("neuron_scores/**/*.parquet"))  # no NaN score was stored
    assert Store(tmp_path / "store").runs()[0]["status"] == "failed"


def test_a_checkpoint_missing_weights_is_refused_unless_asked(llama_folder, tmp_path):
    folder = _copy_model(llama_folder, tmp_path / "model")
    tensors = load_file(_weights(folder))
    missing = next(n for n in tensors if "layers.1.mlp.up_proj" in n)
    del tensors[missing]
    tensors["model.layers.1.extra.weight"] = torch.zeros(2)
    save_file(tensors, _weights(folder), metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"1 missing \(model.layers.1.mlp.up_proj.weight\); 1 unexpected"):
        load_model(str(folder))
    assert load_model(ModelSpec(id=str(folder), allow_missing_weights=True)).model is not None


def test_degenerate_pairs_are_left_out_with_a_note_and_long_prompts_refused(llama_folder, tmp_path):
    loaded = load_model(str(llama_folder))  # a word-level tokenizer: words it does not know are all <unk>
    path = tmp_path / "s.yaml"
    path.write_text(
        "suite: s\naxis: a\ngroups:\n  a: {group: Black}\n  b: {group: white}\n  c: {group: Zorblat}\n"
        "  d: {group: Quixer}\nreference: a\ntemplates:\n  - {id: t, text: 'The {group} man walked'}\n"
        "controls:\n  - ['A zorblat man', 'A quixer man']\n  - ['The man walked', 'The woman walked']\n"
    )
    suite = load_suite(path)
    pairs, controls, notes = screen_pairs(loaded, suite)
    assert [p.pair_id for p in pairs] == ["t:b:a", "t:c:a", "t:d:a"]
    path.write_text(path.read_text().replace("reference: a\n", ""))
    pairs, controls, notes = screen_pairs(loaded, load_suite(path))
    assert "t:c:d" not in {p.pair_id for p in pairs} and len(pairs) == 5
    assert [c.pair_id for c in controls] == ["control:1"]
    assert "1 probe pair(s)" in notes[0] and "t:c:d" in notes[0] and "1 control pair(s)" in notes[1]
    path.write_text(TWO_GROUPS.format(axis="a").replace("man walked", "man " + "walked " * 300))
    with pytest.raises(SuiteError, match="longer than the model's context of 256 tokens"):
        screen_pairs(loaded, load_suite(path))


def test_duplicate_yaml_keys_are_refused_with_the_line(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(TWO_GROUPS.format(axis="race") + "templates:\n  - {id: u, text: 'A {group} woman'}\n")
    with pytest.raises(SuiteError, match="line 8: key 'templates' is given twice.*first on line 6"):
        load_suite(path)
    path.write_text(
        "suite: s\naxis: a\ngroups:\n  a: {group: x}\n  a: {group: y}\n  b: {group: z}\ntemplates: [{id: t, text: '{group}'}]\n"
    )
    with pytest.raises(SuiteError, match="line 5: key 'a' is given twice"):
        load_suite(path)


def test_scores_that_are_not_scores_and_selections_of_nothing_exit_2(audited, llama_folder, tmp_path):
    root, result = audited
    process = run_module(
        "overlap", root / "store", "--model", result.model_id, "--score", "layer", "--out", tmp_path / "o"
    )
    assert process.returncode == 2 and "'layer' is not a per-neuron score" in process.stderr
    process = run_module("overlap", root / "store", "--model", result.model_id, "--top", "nan", "--out", tmp_path / "o")
    assert process.returncode == 2 and "Traceback" not in process.stderr
    process = run_module(
        "prune",
        "--model",
        llama_folder,
        "--store",
        root / "store",
        "--axis",
        "race",
        "--fraction",
        "0.001",
        "--run",
        result.run_id,
        "--out",
        tmp_path / "p",
    )
    assert process.returncode == 2 and "prunes no neuron" in process.stderr and not (tmp_path / "p").exists()


# --- data loss --------------------------------------------------------------------------------------


def test_report_does_not_replace_a_json_file_it_was_not_named(audited, tmp_path, cli):
    root, result = audited
    foreign = tmp_path / "x.json"
    foreign.write_text('{"mine": true}')
    process = run_module("report", root / "store", "--run", result.run_id, "--out", tmp_path / "x.html")
    assert process.returncode == 2 and "x.json exists and is not the JSON twin" in process.stderr
    assert foreign.read_text() == '{"mine": true}' and not (tmp_path / "x.html").exists()
    assert cli("report", root / "store", "--run", result.run_id, "--out", tmp_path / "y.html").exit_code == 0
    assert (
        cli("report", root / "store", "--run", result.run_id, "--out", tmp_path / "y.html").exit_code == 0
    )  # its own twin
    assert cli("report", root / "store", "--run", result.run_id, "--out", tmp_path / "x.html", "--force").exit_code == 0


def test_diagnose_never_writes_through_a_symlink(llama_folder, tmp_path, cli):
    out = tmp_path / "figures"
    out.mkdir()
    first = cli("diagnose", "--model", llama_folder, "--suite", "race", "--top", "1", "--out", out, "--json")
    names = json.loads(first.output)["files"]
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in names:
        Path(name).unlink()
        Path(name).symlink_to(victim)
    (out / "emergence.json").unlink()
    (out / "emergence.json").symlink_to(victim)
    assert cli("diagnose", "--model", llama_folder, "--suite", "race", "--top", "1", "--out", out).exit_code == 0
    assert victim.read_text() == "keep me"
    assert not any(Path(name).is_symlink() for name in names)


def test_a_failed_prune_leaves_no_model_and_a_failed_record(audited, llama_folder, tmp_path, monkeypatch):
    root, result = audited
    store = Store(tmp_path / "store")
    shutil.copytree(root / "store", store.root)
    from transformers import LlamaForCausalLM

    from fairaudit.config import PruningConfig, SelectionParams

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.tmp-{dead.pid}-abc"  # what a killed prune left
    stale.mkdir()

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", full_disk)
    with pytest.raises(StoreError, match="No space left on device"):
        prune_model(
            str(llama_folder),
            store.root,
            PruningConfig(selection=SelectionParams(axes=["race"], fraction=0.05)),
            tmp_path / "out",
            run_id=result.run_id,
        )
    assert not (tmp_path / "out").exists() and not stale.exists()
    prunes = [r for r in store.runs() if r.get("kind") == "prune" and r.get("source_run") == result.run_id]
    assert [r["status"] for r in prunes if r["run_id"] != result.pruned.get("run_id")] == ["failed"]


# --- hangs and memory ---------------------------------------------------------------------------------


def test_small_files_that_expand_without_bound_are_refused_fast(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(
        "suite: s\naxis: a\ngroups:\n"
        + "".join(f"  g{i}: {{group: w{i}}}\n" for i in range(2000))
        + "templates:\n"
        + "".join(f"  - {{id: t{i}, text: 'The {{group}} person'}}\n" for i in range(50))
    )
    started = time.time()
    with pytest.raises(SuiteError, match="expands to 99,950,000 pairs.*limit is 20,000"):
        load_suite(bomb)
    assert time.time() - started < 5
    spec = tmp_path / "spec.yaml"
    spec.write_text(TWO_GROUPS.format(axis="a").replace("{group}", "{group:>1000000000}"))
    with pytest.raises(SuiteError, match="format specs"):
        load_suite(spec)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for special in (fifo, Path("/dev/zero")):
        started = time.time()
        with pytest.raises(SuiteError, match="not a regular file"):
            load_suite(special)
        assert time.time() - started < 2


def test_a_large_legitimate_suite_is_not_taken_for_a_billion_laughs(tmp_path):
    rows = "".join(
        f"  - {{id: p{i}, more: 'The first sentence number {i} is here', less: 'The second sentence number {i} is here', "
        f"label: stereo, group_more: a, group_less: b}}\n"
        for i in range(19_000)
    )
    path = tmp_path / "big.yaml"
    path.write_text(f"suite: big\naxis: big\ndescription: '{'x' * 1_500_000}'\nsentence_pairs:\n{rows}")
    assert 3_000_000 < path.stat().st_size < 5_000_000
    assert len(load_suite(path).sentence_pairs) == 19_000


# --- tracebacks and clear messages ----------------------------------------------------------------------


def test_a_corrupt_part_names_the_file_and_other_runs_stay_readable(audited, tmp_path, cli):
    root, result = audited
    store = Store(tmp_path / "store")
    shutil.copytree(root / "store", store.root)
    other = audit(
        RunConfig.model_validate(
            {
                **store.read_run(result.run_id)["config"],
                "store": str(store.root),
                "pruning": None,
                "evaluators": [],
                "report": False,
            }
        )
    )
    part = next(store.root.glob(f"neuron_scores/*/axis=race/run_id={other.run_id}/*.parquet"))
    part.write_bytes(part.read_bytes()[:40])
    (store.root / "neuron_scores" / "stray.txt").write_text("notes")
    (store.root / "neuron_scores" / "model=x" / "axis=y" / "run_id=z").mkdir(parents=True)
    (store.root / "neuron_scores" / "model=x" / "axis=y" / "run_id=z" / "part-0.parquet").write_bytes(b"stray")
    process = run_module(
        "overlap", store.root, "--model", result.model_id, "--run", other.run_id, "--out", tmp_path / "o"
    )
    assert process.returncode == 2 and str(part) in process.stderr and "Traceback" not in process.stderr
    process = run_module(
        "overlap", store.root, "--model", result.model_id, "--run", result.run_id, "--out", tmp_path / "o"
    )
    assert process.returncode == 0, process.stderr  # the untouched run is readable
    with pytest.raises(StoreError, match=str(part)):
        store.read("neuron_scores", run_id=other.run_id)
    assert cli("report", store.root, "--run", result.run_id, "--out", tmp_path / "r.html").exit_code == 0
    (store.root / "runs" / f"run_id={other.run_id}" / "run.json").write_text("{not json")
    process = run_module("report", store.root, "--run", other.run_id, "--out", tmp_path / "r2.html")
    assert process.returncode == 2 and "cannot be read" in process.stderr and "Traceback" not in process.stderr
    assert cli("store", "ls", store.root).exit_code == 0


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    damage=st.lists(
        st.tuples(
            st.sampled_from(["truncate", "replace", "stray", "garbage_record"]),
            st.integers(0, 10_000),
            st.binary(max_size=64),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_generated_store_damage_never_gives_a_traceback(audited, tmp_path_factory, damage):
    root, result = audited
    store = Store(tmp_path_factory.mktemp("damage") / "store")
    shutil.copytree(root / "store", store.root)
    files = sorted(path for path in store.root.rglob("*") if path.is_file())
    for kind, index, data in damage:
        target = files[index % len(files)]
        if kind == "truncate":
            target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
        elif kind == "replace":
            target.write_bytes(data)
        elif kind == "stray":
            (target.parent / f"stray-{index}.parquet").write_bytes(data)
        else:
            (store.root / "runs" / f"run_id=x{index}").mkdir(parents=True, exist_ok=True)
            (store.root / "runs" / f"run_id=x{index}" / "run.json").write_bytes(data)
    for call in (
        lambda: report_data(store, result.run_id),
        lambda: store.runs(),
        lambda: [store.rows(table, run_id=result.run_id) for table in ("neuron_scores", "evaluations", "neuron_maps")],
    ):
        try:
            call()
        except FairauditError as exc:
            assert str(exc) and "\n" not in str(exc)


@settings(max_examples=40, deadline=None)
@given(groups=st.integers(2, 3000), templates=st.integers(1, 200), reference=st.booleans())
def test_generated_suite_sizes_are_bounded_before_any_expansion(tmp_path_factory, groups, templates, reference):
    path = tmp_path_factory.mktemp("size") / "s.yaml"
    path.write_text(
        "suite: s\naxis: a\n"
        + ("reference: g0\n" if reference else "")
        + "groups:\n"
        + "".join(f"  g{i}: {{group: w{i}}}\n" for i in range(groups))
        + "templates:\n"
        + "".join(f"  - {{id: t{i}, text: 'The {{group}} person {i}'}}\n" for i in range(templates))
    )
    pairs = (groups - 1 if reference else groups * (groups - 1) // 2) * templates
    started = time.time()
    try:
        suite = load_suite(path)
    except SuiteError as exc:
        assert pairs > 20_000 and f"{pairs:,} pairs" in str(exc)
    else:
        assert pairs <= 20_000 and len(suite.pairs(None)) == pairs
    assert time.time() - started < 10


def test_diagnose_figures_of_pairs_whose_names_sanitise_alike_do_not_overwrite_each_other(llama_folder, tmp_path, cli):
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "suite: s\naxis: a\ngroups:\n  'x y': {group: Black}\n  'x-y': {group: white}\n  z: {group: Asian}\n"
        "reference: z\ntemplates:\n  - {id: t, text: 'The {group} man walked'}\n"
    )
    result = cli(
        "diagnose",
        "--model",
        llama_folder,
        "--suite",
        suite,
        "--pair",
        "t:x y:z",
        "--pair",
        "t:x-y:z",
        "--out",
        tmp_path / "figures",
        "--json",
    )
    files = json.loads(result.output)["files"]
    assert len(files) == len(set(files)) and all(Path(f).exists() for f in files)
    assert len({Path(f).read_text() for f in files}) == len(files)  # two pairs' figures, none overwritten


def test_clear_messages_for_the_rough_cases(audited, llama_folder, tmp_path):
    root, result = audited
    (tmp_path / "file").write_text("x")
    process = run_module(
        "prune",
        "--model",
        llama_folder,
        "--store",
        root / "store",
        "--axis",
        "race",
        "--fraction",
        "0.05",
        "--out",
        tmp_path / "file",
    )
    assert (
        process.returncode == 2
        and "is not an empty folder" in process.stderr
        and (tmp_path / "file").read_text() == "x"
    )
    process = run_module(
        "probe", "--model", llama_folder, "--suite", "race", "--batch-size", "0", "--store", tmp_path / "s"
    )
    assert process.returncode == 2 and "--batch-size" in process.stderr and "run config" not in process.stderr
    process = run_module("audit", "--store", root / "store", "--resume", result.run_id)
    assert process.returncode == 2 and "nothing to resume" in process.stderr
    folder = _copy_model(llama_folder, tmp_path / "remote-tokenizer")
    settings_file = folder / "tokenizer_config.json"
    settings = json.loads(settings_file.read_text())
    settings.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]})
    settings_file.write_text(json.dumps(settings))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelError) as raised:
        load_model(str(folder))
    assert "--trust-remote-code" in str(raised.value) and "trust_remote_code=True" not in str(raised.value)


def test_json_output_is_strict_json(audited, tmp_path):
    root, _ = audited
    (tmp_path / "policy.yaml").write_text(
        "policy: p\nrules:\n  - {id: crows, metric: pct_stereotype, between: [0.45, 0.55]}\n"
    )
    process = run_module("check", root / "store", "--policy", tmp_path / "policy.yaml", "--json")
    assert process.returncode == 3 and "NaN" not in process.stdout
    payload = json.loads(process.stdout, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert payload["verdicts"][0]["value"] is None and payload["verdicts"][0]["verdict"] == "not measured"


def test_the_same_axis_twice_is_refused(tmp_path):
    for name in ("one", "two"):
        (tmp_path / f"{name}.yaml").write_text(TWO_GROUPS.format(axis="race"))
    with pytest.raises(ConfigError, match="appears in more than one suite"):
        resolve_suites([str(tmp_path / "one.yaml"), str(tmp_path / "two.yaml")])
