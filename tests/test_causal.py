"""Causal selection (`fairaudit.repair.causal`, `prune --causal`): on the planted model it gates in the
axis with an output bias and leaves the unbiased one alone, chooses the planted neurons that
carry the bias, keeps held-out templates out of every choice, and removes the held-out bias;
with nothing to remove it refuses before writing anything."""

from __future__ import annotations

import json
import math

import pytest

from fairaudit.inputs.model import load_model
from fairaudit.inputs.suite import resolve_suite
from fairaudit.measurement import attribution
from fairaudit.repair.causal import CausalParams, plan, split_probe
from fairaudit.repair.prune import masked
from fairaudit.resources import data_dir
from fairaudit.testing import make_planted_model


def test_split_probe_takes_every_kth_template_for_validation():
    suite = resolve_suite("race")
    selection, validation = split_probe(suite.pairs("probe"), every=4)
    templates = list(dict.fromkeys(pair.template_id for pair in suite.pairs("probe")))
    assert {pair.template_id for pair in validation} == set(templates[3::4])
    assert not {pair.template_id for pair in selection} & {pair.template_id for pair in validation}
    assert not {pair.template_id for pair in selection + validation} & {
        pair.template_id for pair in suite.pairs("heldout")
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("causal") / "model"
    truth = make_planted_model(folder)
    return truth, load_model(str(folder))


def test_causal_plan_gates_chooses_the_planted_neurons_and_removes_the_heldout_bias(planted, monkeypatch):
    truth, loaded = planted
    suites = [resolve_suite("race"), resolve_suite("nationality")]
    read = []  # every pair whose output bias the plan measured: never a held-out one
    original = attribution.output_bias_values
    monkeypatch.setattr(
        attribution,
        "output_bias_values",
        lambda model, pairs, *a, **k: read.extend(pairs) or original(model, pairs, *a, **k),
    )
    corpus = loaded.tokenizer((data_dir() / "corpus.txt").read_text(encoding="utf-8"))["input_ids"]
    said = []
    found = plan(loaded, suites, CausalParams(budgets=[0.01, 0.02], method="neurons"), corpus, say=said.append)
    monkeypatch.undo()
    # the time estimate said after the gate: the steps' planned token positions, a floor on what they forwarded
    assert any(line.startswith("attribution, quality guard and budgets: about ") for line in said), said
    for step in ("attribution", "guard", "budget"):
        planned, measured = found.planned[step], found.compute[step]
        assert planned["grad_tokens"] == (planned["tokens"] if step == "attribution" else 0)
        assert 0.9 * measured["tokens"] <= planned["tokens"] <= measured["tokens"], (step, planned, measured)
    assert found.as_dict()["planned"] == found.planned
    gates = {gate.axis: gate for gate in found.gates}
    assert gates["race"].active and gates["race"].template_low > 0
    assert not gates["nationality"].active, "no neuron reads nationality in the planted model: it must be left alone"
    nationality = gates["nationality"]  # what it could have detected: its interval's width, 80% power
    width = nationality.template_high - nationality.template_low
    assert nationality.detectable == pytest.approx((1.959964 + 0.841621) * width / (2 * 1.959964), rel=1e-5)
    assert read and not {pair.pair_id for pair in read} & {
        pair.pair_id for suite in suites for pair in suite.pairs("heldout")
    }
    assert found.chosen_budget is not None and found.guard["checked"] >= len(found.order)
    planted_race = {(n.layer, n.neuron) for n in truth.neurons if "race" in n.axes}
    chosen = found.order_at(found.chosen_budget)
    assert {unit.kind for unit in chosen} == {"neuron"}
    assert len({(unit.layer, unit.index) for unit in chosen} & planted_race) >= 4, (chosen, planted_race)
    heldout = [pair for pair in suites[0].pairs("heldout") if pair.continuations]
    before = float(attribution.output_bias_values(loaded, heldout).mean())
    with masked(loaded, found.selection):
        after = float(attribution.output_bias_values(loaded, heldout).mean())
    assert before > 0.03 and abs(after) < 0.5 * abs(before), (before, after)


def test_shared_prefixes_leave_every_decision_of_the_plan_unchanged(planted, monkeypatch):
    """The speed-up of output-level scoring (each context forwarded once, its continuations scored
    from a KV cache) changes no decision: the same gates, candidates, guard verdicts and budget."""
    import fairaudit.measurement.evaluate as evaluate_module

    _, loaded = planted
    suites = [resolve_suite("race"), resolve_suite("gender")]
    corpus = loaded.tokenizer((data_dir() / "corpus.txt").read_text(encoding="utf-8"))["input_ids"]
    params = CausalParams(budgets=[0.01, 0.02], rounds=1, method="neurons")
    found = {}
    for share in (True, False):
        monkeypatch.setattr(evaluate_module, "SHARE_PREFIXES", share)
        found[share] = plan(loaded, suites, params, corpus)
    fast, slow = found[True], found[False]
    assert [gate.active for gate in fast.gates] == [gate.active for gate in slow.gates]
    assert [gate.bias for gate in fast.gates] == pytest.approx([gate.bias for gate in slow.gates], abs=1e-4)
    assert fast.order == slow.order and fast.guard == slow.guard and fast.chosen_budget == slow.chosen_budget
    assert fast.compute["gate"]["tokens"] < slow.compute["gate"]["tokens"]


def test_causal_plan_with_heads_chooses_the_head_that_carries_the_bias_and_zeroes_it(planted, cli, tmp_path):
    """In the planted model, head 0 of layer 0 copies every planted direction to later tokens: the
    only head through which race reaches the output. With heads as candidates the planner ranks it
    first, the quality guard passes it (it carries nothing else), and the pruned model has its
    block of the attention output projection zeroed; the random baseline then removes one random
    head of layer 0 beside the random neurons."""
    from safetensors import safe_open

    truth, loaded = planted
    corpus = loaded.tokenizer((data_dir() / "corpus.txt").read_text(encoding="utf-8"))["input_ids"]
    found = plan(
        loaded, [resolve_suite("race")], CausalParams(budgets=[0.01], rounds=1, heads=True, method="neurons"), corpus
    )
    assert found.order[0] == attribution.Unit("head", 0, 0), found.order[:5]
    assert found.total == sum(128 for _ in range(4)) + 4 * 4 and found.as_dict()["heads"] >= 1
    assert (0, 0) in found.selection.heads
    heldout = [pair for pair in resolve_suite("race").pairs("heldout") if pair.continuations]
    before = float(attribution.output_bias_values(loaded, heldout).mean())
    with masked(loaded, found.selection):
        assert abs(float(attribution.output_bias_values(loaded, heldout).mean())) < 0.5 * abs(before)

    (tmp_path / "store").mkdir()
    result = cli(
        "prune",
        "--causal",
        "--model",
        loaded.provenance["source"],
        "--store",
        tmp_path / "store",
        "--axis",
        "race",
        "--budgets",
        "0.01",
        "--rounds",
        "1",
        "--causal-heads",
        "--out",
        tmp_path / "pruned",
        "--json",
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [0, 0] in payload["heads"] and payload["causal"]["heads"] == len(payload["heads"])
    with safe_open(str(next((tmp_path / "pruned").glob("*.safetensors"))), "pt") as weights:
        o_proj = weights.get_tensor("model.layers.0.self_attn.o_proj.weight")
    original = dict(loaded.model.named_parameters())["model.layers.0.self_attn.o_proj.weight"]
    assert original[:, :16].any() and not o_proj[:, :16].any()  # head 0's block (head_dim 16), which carried the copy
    neuron_map = json.loads((tmp_path / "pruned" / "fairaudit_neuron_map.json").read_text())
    assert 0 in neuron_map["zeroed_heads"][0]
    assert "Attention heads zeroed by the causal selection" in (tmp_path / "pruned" / "README.md").read_text()

    from fairaudit.plugins import registry

    pruned = load_model(str(tmp_path / "pruned"))
    evaluator = registry().get("evaluator", "random_baseline")
    measured = evaluator.evaluate(pruned, [resolve_suite("race")], evaluator.Params(seeds=3), reference=loaded)
    values = {m.metric: m.value for m in measured.measurements}
    assert values["reduction"] > 0.5 and values["beats_random_p"] < 0.1, values


def test_random_selection_draws_heads_per_layer_beside_neurons():
    from fairaudit.repair.units import random_selection

    first = random_selection([2, 0, 1], [8, 8, 8], seed=3, head_counts=[1, 0, 2], heads=4)
    assert [len(p) for p in first.pruned] == [2, 0, 1]
    assert [len(h) for h in first.heads_per_layer()] == [1, 0, 2] and all(0 <= h < 4 for _, h in first.heads)
    without = random_selection([2, 0, 1], [8, 8, 8], seed=3)
    assert [p.tolist() for p in without.pruned] == [p.tolist() for p in first.pruned] and without.heads == []


def test_prune_causal_refuses_when_no_axis_has_an_output_bias_and_writes_nothing(cli, llama_folder, tmp_path):
    (tmp_path / "store").mkdir()
    result = cli(
        "prune",
        "--causal",
        "--model",
        llama_folder,
        "--store",
        tmp_path / "store",
        "--axis",
        "gender",
        "--budgets",
        "0.05",
        "--out",
        tmp_path / "pruned",
    )
    assert result.exit_code == 2 and "causal selection found nothing to prune" in result.stderr
    assert "Nothing was written" in result.stderr and not (tmp_path / "pruned").exists()
    assert not list((tmp_path / "store").glob("runs/*")), "no prune run is recorded before a selection exists"


def test_prune_causal_writes_a_model_and_its_record(cli, planted, tmp_path):
    truth, loaded = planted
    (tmp_path / "store").mkdir()
    result = cli(
        "prune",
        "--causal",
        "--model",
        loaded.provenance["source"],
        "--store",
        tmp_path / "store",
        "--axis",
        "race",
        "--budgets",
        "0.01,0.02",
        "--rounds",
        "1",
        "--sweep",
        "--no-statements",
        "--out",
        tmp_path / "pruned",
        "--json",
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["causal"]["chosen_budget"] in (0.01, 0.02) and payload["source_run"] is None
    # --no-statements: budgets chosen on validation templates alone
    assert all("statements_abs_bias_kept" not in row for row in payload["causal"]["budgets"])
    assert payload["ranking"].endswith("chosen on validation templates")
    curve = payload["causal"]["heldout_curve"]  # evaluation only, one row per budget and axis
    assert [(row["budget"], row["axis"]) for row in curve] == [(0.01, "race"), (0.02, "race")]
    assert all(row["heldout_abs_bias_after"] < row["heldout_abs_bias_before"] for row in curve)
    assert payload["ranking"].startswith("causal selection: output attribution of race")
    assert (tmp_path / "pruned" / "config.json").exists() and "causal selection" in (
        tmp_path / "pruned" / "README.md"
    ).read_text()


def test_an_audit_prunes_causally_and_the_report_shows_the_plan(planted, tmp_path):
    from pydantic import ValidationError

    from fairaudit.config import RunConfig
    from fairaudit.pipeline.audit import audit

    truth, loaded = planted
    config = {
        "model": loaded.provenance["source"],
        "suites": ["race", "nationality"],
        "store": str(tmp_path / "store"),
        "probe": {"plugin": "activations", "params": {"progress": False}},
        "diagnose_top": 0,
        "pruning": {"out": str(tmp_path / "pruned"), "causal": {"budgets": [0.01], "rounds": 1, "heldout_curve": True}},
        "evaluators": [{"plugin": "random_baseline", "params": {"seeds": 3}}],
    }
    with pytest.raises(ValidationError, match="leave out 'selection'"):  # refused where the config is parsed
        RunConfig.model_validate({**config, "pruning": {**config["pruning"], "selection": {"fraction": 0.01}}})
    result = audit(RunConfig.model_validate(config))
    assert result.pruned["causal"]["chosen_budget"] == 0.01
    found = {
        row["metric"]: row["value"]
        for row in result.measurements
        if row["evaluator"] == "random_baseline" and row["role"] == "after"
    }
    assert found["reduction"] > found["random_reduction"], found
    html = result.report.read_text(encoding="utf-8")
    assert "Causal selection" in html and "Budgets, measured on validation templates" in html and '"causal": {' in html
    assert "probe statements: |output bias| kept" in html and "both (the objective)" in html
    assert all(row["statements_abs_bias_kept"] >= 0 for row in result.pruned["causal"]["budgets"])
    assert "Held-out |output bias| kept at each budget" in html and "did not inform the choice" in html
    assert "The plan's forward passes ran in float32." in html
    assert "nationality: against random neurons" in html and html.count("This axis was not selected for") == 1
    zeroed = result.pruned["zeroed"]
    assert ("zeroed in place" in html) == (zeroed > 0)


def test_the_documented_causal_audit_config_is_valid():
    from pathlib import Path

    from fairaudit.config import load_config

    config = load_config(Path(__file__).parent.parent / "benchmarks" / "causal_audit.yaml")
    config.check_plugins()
    assert config.pruning.causal.gate == "templates" and "random_baseline" in [ref.plugin for ref in config.evaluators]


def test_prune_zeroes_the_heads_with_the_largest_stored_head_score(cli, llama_folder, tmp_path):
    from safetensors import safe_open

    from fairaudit.config import RunConfig
    from fairaudit.measurement.attribution import head_count
    from fairaudit.pipeline.audit import audit
    from fairaudit.store import Store

    audit(
        RunConfig.model_validate(
            {
                "model": str(llama_folder),
                "suites": ["race"],
                "store": str(tmp_path / "store"),
                "report": False,
                "probe": {"plugin": "activations", "params": {"progress": False}},
                "pruning": None,
                "evaluators": [],
                "scoring": {"scorers": ["bias", "importance", "hybrid", "layer_index", "output_attribution"]},
            }
        )
    )
    rows = Store(tmp_path / "store").rows("head_scores", axis="race")
    expected = sorted((r["layer"], r["head"]) for r in sorted(rows, key=lambda r: -r["output_bias_reduction"])[:2])
    result = cli(
        "prune",
        "--model",
        llama_folder,
        "--store",
        tmp_path / "store",
        "--axis",
        "race",
        "--score",
        "hybrid",
        "--fraction",
        "0.05",
        "--heads",
        "2",
        "--out",
        tmp_path / "pruned",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert [tuple(head) for head in json.loads(result.stdout)["heads"]] == expected
    count = head_count(load_model(str(llama_folder)))
    with safe_open(str(next((tmp_path / "pruned").glob("*.safetensors"))), "pt") as weights:
        for layer in range(2):
            o_proj = weights.get_tensor(f"model.layers.{layer}.self_attn.o_proj.weight")
            width = o_proj.shape[1] // count
            zeroed = {head for head in range(count) if not o_proj[:, head * width : (head + 1) * width].any()}
            assert zeroed == {head for at, head in expected if at == layer}
    assert "Attention heads zeroed by `output_bias_reduction`" in (tmp_path / "pruned" / "README.md").read_text()
    missing = cli(
        "prune",
        "--model",
        llama_folder,
        "--store",
        tmp_path / "store",
        "--axis",
        "race",
        "--score",
        "hybrid",
        "--fraction",
        "0.05",
        "--heads",
        "1",
        "--head-score",
        "nope",
        "--out",
        tmp_path / "pruned2",
    )
    assert (
        missing.exit_code == 2 and "has no head score 'nope'" in missing.stderr and not (tmp_path / "pruned2").exists()
    )

    from fairaudit.repair.prune import pruned_counts

    removed = cli(
        "prune",
        "--model",
        llama_folder,
        "--store",
        tmp_path / "store",
        "--axis",
        "race",
        "--score",
        "hybrid",
        "--fraction",
        "0.05",
        "--heads",
        "1",
        "--head-scope",
        "per_layer",
        "--remove-heads",
        "--out",
        tmp_path / "removed",
        "--json",
    )
    assert removed.exit_code == 0, removed.output
    assert [layer for layer, _ in json.loads(removed.stdout)["heads"]] == [0, 1]
    assert json.loads((tmp_path / "removed" / "config.json").read_text())["num_attention_heads"] == count - 1
    assert pruned_counts(load_model(str(tmp_path / "removed")))[1] == [1, 1]  # what the random baseline draws
    assert "Attention heads removed by `output_bias_reduction`" in (tmp_path / "removed" / "README.md").read_text()
    uneven = cli(
        "prune",
        "--model",
        llama_folder,
        "--store",
        tmp_path / "store",
        "--axis",
        "race",
        "--score",
        "hybrid",
        "--fraction",
        "0.05",
        "--heads",
        "3",
        "--remove-heads",
        "--out",
        tmp_path / "uneven",
    )
    assert uneven.exit_code == 2 and "same number" in uneven.stderr and not (tmp_path / "uneven").exists()


def test_the_default_pruning_is_causal_and_an_audit_with_nothing_to_prune_goes_on_unpruned(llama_folder, tmp_path):
    """Pruning without a `selection` is causal. On a random model no axis has an output bias whose
    interval excludes 0: the audit records why nothing was pruned, evaluates the original model,
    writes no pruned model, and its report says so; a resume does not try again."""
    from fairaudit.config import CausalParams, PruningConfig, RunConfig
    from fairaudit.pipeline.audit import audit
    from fairaudit.store import Store

    assert PruningConfig().causal == CausalParams() and PruningConfig(selection={"fraction": 0.1}).causal is None
    assert PruningConfig(causal=None).causal is None
    config = RunConfig.model_validate(
        {
            "model": str(llama_folder),
            "suites": ["gender"],
            "store": str(tmp_path / "store"),
            "probe": {"plugin": "activations", "params": {"progress": False}},
            "diagnose_top": 0,
            "pruning": {"out": str(tmp_path / "pruned")},
            "evaluators": ["output_bias"],
        }
    )
    result = audit(config)
    record = Store(tmp_path / "store").read_run(result.run_id)
    assert record["status"] == "complete" and "prune" not in record and not (tmp_path / "pruned").exists()
    assert record["prune_skipped"]["reason"].startswith("causal selection found nothing to prune")
    assert result.pruned == {"skipped": record["prune_skipped"]["reason"]}
    assert [gate["active"] for gate in record["prune_skipped"]["causal"]["gates"]] == [False]
    assert {row["role"] for row in result.measurements} == {"before"}  # the original model only
    html = result.report.read_text(encoding="utf-8")
    assert (
        "Nothing was pruned: causal selection found nothing to prune" in html and "axes selected for: gender no" in html
    )


def test_imported_sentence_pairs_are_never_selected_on_and_the_random_baseline_evaluates_them(
    planted, tmp_path, monkeypatch
):
    """Held-out discipline for imported data sets: a CrowS-Pairs-like suite's sentence pairs (the
    probe split, by the suite format) are never read by the planner, which leaves that axis alone
    (nor are held-out templates and statements);
    the random baseline evaluates them beside the held-out templates."""
    from fairaudit.inputs.suite import load_suite
    from fairaudit.plugins import registry

    truth, loaded = planted
    path = tmp_path / "crows.yaml"
    path.write_text(
        "suite: crows_race\naxis: race-color\nversion: 1\ndescription: imported\nsentence_pairs:\n"
        + "".join(
            f"  - {{id: s{i}, more: 'The Black man was angry {i}.', less: 'The white man was angry {i}.'}}\n"
            for i in range(6)
        ),
        encoding="utf-8",
    )
    imported = load_suite(path)
    read = []
    original = attribution.output_bias_values
    monkeypatch.setattr(
        attribution,
        "output_bias_values",
        lambda model, pairs, *a, **k: read.extend(pairs) or original(model, pairs, *a, **k),
    )
    corpus = loaded.tokenizer((data_dir() / "corpus.txt").read_text(encoding="utf-8"))["input_ids"]
    found = plan(loaded, [resolve_suite("race"), imported], CausalParams(budgets=[0.01], rounds=1), corpus)
    monkeypatch.undo()
    # templates, and the probe statements the budget is chosen on; never a sentence pair or a held-out statement
    race = resolve_suite("race")
    heldout = {pair.pair_id for pair in race.pairs("heldout") + race.statement_pairs("heldout")}
    assert read and {pair.kind for pair in read} == {"template", "statement"}
    assert not heldout & {pair.pair_id for pair in read}
    gate = next(gate for gate in found.gates if gate.axis == "race-color")
    assert not gate.active and gate.selection_pairs == 0

    import fairaudit.repair.prune as prune_module

    evaluator = registry().get("evaluator", "random_baseline")
    monkeypatch.setattr(
        prune_module, "pruned_counts", lambda model: ([1] * 4, [0] * 4)
    )  # as if one neuron per layer was pruned
    measured = evaluator.evaluate(loaded, [imported], evaluator.Params(seeds=2), reference=loaded)
    assert {m.metric: m.n for m in measured.measurements}["beats_random_p"] == 6


def test_a_bfloat16_model_is_planned_in_float32_and_given_back_unchanged(planted):
    """bfloat16's rounding noise is above the guard's 0.3% (on SmolLM2-135M it rejected twice the
    candidates and left no admissible budget), so `plan` casts a half-precision model up for
    the planning and back after: the plan is the one of the same weights in float32, and the
    model's weights (dtype, values, hash) are what they were. `float32: false` plans in bfloat16."""
    import torch

    from fairaudit.inputs.model import ModelSpec, weights_hash

    _, reference = planted
    half = load_model(ModelSpec(id=reference.provenance["source"], dtype="bfloat16"))
    corpus = half.tokenizer((data_dir() / "corpus.txt").read_text(encoding="utf-8"))["input_ids"]
    suites, params = [resolve_suite("race")], CausalParams(budgets=[0.01, 0.02], rounds=1, method="neurons")
    before = weights_hash(half.model)
    said, seen = [], []
    record = lambda module, args, out: seen.append((out[0] if isinstance(out, tuple) else out).dtype)  # noqa: E731
    handle = half.layers[0].register_forward_hook(record)
    found = plan(half, suites, params, corpus, say=said.append)
    handle.remove()
    assert set(seen) == {torch.float32}, "every forward pass of the plan ran in float32"
    assert found.measured_in == "float32" and found.as_dict()["measured_in"] == "float32"
    assert said[0] == "planning in float32: the bfloat16 weights are cast up, and back after"
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16} and weights_hash(half.model) == before
    upcast = load_model(ModelSpec(id=reference.provenance["source"], dtype="bfloat16"))
    upcast.model.float()  # the same bfloat16-rounded weights, in float32
    assert found.order == plan(upcast, suites, params, corpus).order
    seen.clear()
    handle = half.layers[0].register_forward_hook(record)
    in_half = plan(half, suites, params.model_copy(update={"float32": False}), corpus)
    handle.remove()
    assert in_half.measured_in == "bfloat16" and set(seen) == {torch.bfloat16}


def test_planning_out_of_gpu_memory_says_how_to_plan_in_the_models_dtype(planted, cli, tmp_path, monkeypatch):
    import torch

    from fairaudit.errors import ModelError
    from fairaudit.inputs.model import ModelSpec

    _, reference = planted
    half = load_model(ModelSpec(id=reference.provenance["source"], dtype="bfloat16"))

    def out_of_memory():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(half.model, "float", out_of_memory)
    with pytest.raises(ModelError, match="ran out of GPU memory.*--plan-in model.*float32: false"):
        plan(half, [resolve_suite("race")], CausalParams(budgets=[0.01]), [1, 2, 3])
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    (tmp_path / "store").mkdir()
    result = cli(
        "prune",
        "--causal",
        "--model",
        reference.provenance["source"],
        "--store",
        tmp_path / "store",
        "--axis",
        "race",
        "--budgets",
        "0.01,0.02",
        "--rounds",
        "1",
        "--dtype",
        "bfloat16",
        "--plan-in",
        "model",
        "--out",
        tmp_path / "pruned",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["causal"]["measured_in"] == "bfloat16"


def test_the_random_baseline_takes_unmasked_values_output_bias_computed_on_the_same_weights(planted, monkeypatch):
    """The random baseline's unpruned and pruned values are the output_bias evaluator's, when that
    evaluator ran on the same weights (hash recomputed) with no mask on; the masked random
    selections are always computed; a model changed in place is computed again."""
    import torch

    import fairaudit.measurement.evaluate as evaluate_module
    import fairaudit.repair.prune as prune_module
    from fairaudit.measurement.evaluate import LOGLIKELIHOODS
    from fairaudit.plugins import registry

    _, loaded = planted
    twin = load_model(loaded.provenance["source"])  # stands for the pruned model: another object
    suites = [resolve_suite("race")]
    baseline, output_bias = registry().get("evaluator", "random_baseline"), registry().get("evaluator", "output_bias")
    params = baseline.Params(seeds=2)
    monkeypatch.setattr(prune_module, "pruned_counts", lambda model: ([1] * 4, [0] * 4))
    computed = []
    original = evaluate_module._loglikelihoods
    monkeypatch.setattr(
        evaluate_module,
        "_loglikelihoods",
        lambda model, requests, *a: computed.extend(requests) or original(model, requests, *a),
    )
    try:
        fresh = {m.metric: m.value for m in baseline.evaluate(twin, suites, params, reference=loaded).measurements}
        unique = len(computed) // 4  # the unpruned, the pruned, two random selections
        for model in (loaded, twin):
            output_bias.evaluate(model, suites, output_bias.Params(), None)
        computed.clear()
        reused = {m.metric: m.value for m in baseline.evaluate(twin, suites, params, reference=loaded).measurements}
        assert len(computed) == 2 * unique, "only the two random selections are computed"
        # reused and fresh log-likelihoods came from batches of other shapes: equal within float32 rounding of
        # the log-likelihoods summed into each m_p (bit-identical on one CPU, not across CPUs' kernels)
        nats = 1e-6 * max(abs(value) for value in evaluate_module.recall(loaded, LOGLIKELIHOODS).values())

        def tolerance(key: str) -> float:  # the template format's figures, and the statements' ("statements_...")
            prefix = key[: len(key) - len(key.removeprefix("statements_"))]
            name = key[len(prefix) :]
            before = fresh[prefix + "abs_output_bias_before"]
            return nats if name.startswith("abs_") else nats / before if "reduction" in name else 1e-12

        assert any(k.startswith("statements_") for k in fresh)
        assert reused.keys() == fresh.keys() and all(
            math.isclose(reused[k], fresh[k], rel_tol=1e-9, abs_tol=tolerance(k)) for k in fresh
        ), (reused, fresh)
        with torch.no_grad():
            twin.layers[1].mlp.down_proj.weight.data.add_(0.01)  # changed in place, behind autograd's back
        computed.clear()
        baseline.evaluate(twin, suites, params, reference=loaded)
        assert len(computed) == 3 * unique, "the changed model is measured again, the unchanged reference is not"
    finally:
        loaded.measured.pop(LOGLIKELIHOODS, None)


def fake_budgets(
    monkeypatch, levels: dict[tuple[str, str], dict[int, float]], facts_lost: dict[int, int] | None = None
):
    """The budget step on made-up figures: `levels[(axis, format)][units removed]` is every pair's m
    (with small noise), 12 pairs from 4 templates per axis and format; `facts_lost[units removed]`:
    how many validation facts (the first ones) go from answered right (margin 2, log-probability -1)
    to wrong (margin -1, log-probability -1.5); returns choose(params) -> plan."""
    import contextlib
    from types import SimpleNamespace

    import torch

    import fairaudit.measurement.attribution as attribution_module
    import fairaudit.repair.causal as causal
    import fairaudit.repair.prune as prune_module
    import fairaudit.repair.validation as validation_module

    removed = {"units": 0}

    @contextlib.contextmanager
    def fake_masked(loaded, units):
        removed["units"] = units
        yield
        removed["units"] = 0

    def values(loaded, pairs, *args, **kwargs):
        noise = torch.tensor([0.01 * ((i % 3) - 1) for i in range(len(pairs))])
        return levels[(pairs[0].axis, pairs[0].kind)][removed["units"]] + noise.double()

    monkeypatch.setattr(prune_module, "masked", fake_masked)
    monkeypatch.setattr(attribution_module, "output_bias_values", values)
    monkeypatch.setattr(causal, "selection_of", lambda units, widths, ranking="": len(units))
    monkeypatch.setattr(validation_module, "corpus_perplexity", lambda loaded, ids, selection=None: 10.0)

    def fact_scores(loaded, facts):
        lost = (facts_lost or {}).get(removed["units"], 0)
        return [(-1.5, -1.0) if index < lost else (-1.0, 2.0) for index in range(len(facts))]

    monkeypatch.setattr(validation_module, "scored_facts", fact_scores)

    def pairs(kind: str) -> dict[str, list]:
        axes = sorted({axis for axis, found in levels if found == kind})
        return {
            axis: [SimpleNamespace(axis=axis, kind=kind, template_id=f"t{i // 3}") for i in range(12)] for axis in axes
        }

    def choose(params: CausalParams) -> causal.CausalPlan:
        order = [attribution.Unit("neuron", 0, index) for index in range(2)]
        found = causal.CausalPlan(gates=[], order=order, guard={}, total=2)
        statements = pairs("statement") if params.statements else None
        before = validation_module.Before(None, pairs("template"), ["religion"], [], params, statements)
        causal._choose_budget(None, found, before, [2], lambda text: None)
        return found

    return choose


def test_a_budget_that_moves_an_axis_left_alone_away_from_zero_is_rejected(monkeypatch):
    """Collateral damage: religion is selected for; race is left alone. The larger budget repairs
    religion more but moves race from +0.1 to +0.6 on its validation templates (the whole paired
    interval of |m after| - |m before| above 0): it is rejected, the smaller budget chosen."""
    choose = fake_budgets(
        monkeypatch,
        {("religion", "template"): {0: 0.5, 1: 0.2, 2: 0.05}, ("race", "template"): {0: 0.1, 1: 0.1, 2: 0.6}},
    )
    found = choose(CausalParams(budgets=[0.5, 0.99]))
    assert [row["made_worse"] for row in found.budgets] == [[], ["race"]]
    assert found.budgets[1]["left_alone_abs_change_race"] == pytest.approx(0.5)
    assert found.chosen_budget == 0.5
    unchecked = choose(CausalParams(budgets=[0.5, 0.99], collateral=False))
    assert unchecked.chosen_budget == 0.99 and "made_worse" not in unchecked.budgets[0]


def test_a_budget_that_costs_validation_facts_is_rejected(monkeypatch):
    """The fact guard: the larger budget repairs religion more but loses 3 of the bundled validation
    facts (accuracy change -3/n, log-probability of the correct answers -0.5 * 3/n): beyond
    `max_fact_drop` 0.02, it is rejected before its bias is measured (its figures are missing from
    `levels` while the guard is on: reading them would fail); with `max_fact_drop: 1` (no guard) it
    is chosen and the facts are not read."""
    from fairaudit.measurement.facts import VALIDATION_FACTS, read_facts
    from fairaudit.repair.validation import said

    count = len(read_facts(bundled=VALIDATION_FACTS))
    levels = {("religion", "template"): {0: 0.5, 1: 0.2}, ("race", "template"): {0: 0.1, 1: 0.1}}
    choose = fake_budgets(monkeypatch, levels, facts_lost={1: 1, 2: 3})
    found = choose(CausalParams(budgets=[0.5, 0.99]))
    first, second = found.budgets
    assert first["fact_accuracy_change"] == pytest.approx(-1 / count)
    assert second["fact_accuracy_change"] == pytest.approx(-3 / count)
    assert second["fact_logprob_change"] == pytest.approx(-0.5 * 3 / count)
    assert second["over"] == "facts" and "abs_bias_kept" not in second and "over" not in first
    assert said(second).startswith("over the facts limit, bias not measured, corpus-slice perplexity +0.00%")
    assert found.chosen_budget == 0.5
    levels[("religion", "template")][2], levels[("race", "template")][2] = 0.05, 0.1
    unguarded = choose(CausalParams(budgets=[0.5, 0.99], max_fact_drop=1))
    assert unguarded.chosen_budget == 0.99 and "fact_accuracy_change" not in unguarded.budgets[1]
    assert unguarded.budgets[1]["abs_bias_kept"] == pytest.approx(0.1, abs=0.01)


def test_the_fact_guard_reads_facts_the_evaluator_never_measures():
    """Held-out discipline for the control: the planner's validation facts and the `facts`
    evaluator's share no prompt, and both cover every category."""
    from fairaudit.measurement.facts import EVALUATION_FACTS, VALIDATION_FACTS, read_facts

    guard, evaluated = read_facts(bundled=VALIDATION_FACTS), read_facts(bundled=EVALUATION_FACTS)
    assert len(guard) >= 90
    assert not {fact["prompt"] for fact in guard} & {fact["prompt"] for fact in evaluated}
    assert not {fact["id"] for fact in guard} & {fact["id"] for fact in evaluated}
    assert {fact["category"] for fact in guard} == {fact["category"] for fact in evaluated}
    assert all(fact["correct"] not in fact["distractors"] and fact["distractors"] for fact in guard)


def test_the_budget_is_chosen_on_validation_templates_and_probe_statements_together(monkeypatch):
    """The larger budget flattens religion's validation templates (0.5 -> 0.05) but pushes its probe
    statements further from zero (0.5 -> 0.7): over both formats it keeps (0.05 + 0.7) / (0.5 + 0.5)
    = 0.75 of |m| against the smaller budget's (0.2 + 0.45) / 1.0 = 0.65, which is chosen; on
    templates alone (`statements: false`) the larger one would be. A left-alone axis whose statements
    move away from zero rejects the budget as its templates would."""
    levels = {
        ("religion", "template"): {0: 0.5, 1: 0.2, 2: 0.05},
        ("religion", "statement"): {0: 0.5, 1: 0.45, 2: 0.7},
        ("race", "template"): {0: 0.1, 1: 0.1, 2: 0.1},
        ("race", "statement"): {0: 0.1, 1: 0.1, 2: 0.1},
    }
    choose = fake_budgets(monkeypatch, levels)
    found = choose(CausalParams(budgets=[0.5, 0.99]))
    first, second = found.budgets
    assert first["abs_bias_kept"] == pytest.approx(0.65, abs=1e-9) and second["abs_bias_kept"] == pytest.approx(0.75)
    assert first["validation_abs_bias_kept"] == pytest.approx(0.4) and second[
        "statements_abs_bias_kept"
    ] == pytest.approx(1.4)
    assert found.chosen_budget == 0.5
    assert choose(CausalParams(budgets=[0.5, 0.99], statements=False)).chosen_budget == 0.99
    levels[("race", "statement")][2] = 0.6
    worse = choose(CausalParams(budgets=[0.5, 0.99]))
    assert worse.budgets[1]["made_worse"] == ["race (statements)"]
    assert worse.budgets[1]["left_alone_abs_change_statements_race"] == pytest.approx(0.5)


def test_the_random_baseline_compares_the_questions_when_asked(planted, monkeypatch):
    """`questions: true`: s_AMB of the suites' ambiguous questions, before and after, against the
    same random selections (metrics `questions_...`); the values are output_bias's answers."""
    import fairaudit.repair.prune as prune_module
    from fairaudit.plugins import registry

    _, loaded = planted
    twin = load_model(loaded.provenance["source"])  # stands for the pruned model
    suites = [resolve_suite("race")]
    baseline, output_bias = registry().get("evaluator", "random_baseline"), registry().get("evaluator", "output_bias")
    monkeypatch.setattr(prune_module, "pruned_counts", lambda model: ([1] * 4, [0] * 4))
    found = {
        m.metric: m
        for m in baseline.evaluate(
            twin, suites, baseline.Params(seeds=1, questions=True), reference=loaded
        ).measurements
    }
    measured = {
        m.metric: m.value for m in output_bias.evaluate(loaded, suites, output_bias.Params(), None).measurements
    }
    ambiguous = [q for q in suites[0].all_questions() if q.condition == "ambiguous"]
    assert found["questions_abs_output_bias_before"].value == pytest.approx(abs(measured["bbq_bias_ambiguous"]))
    assert found["questions_abs_output_bias_after"].value == found["questions_abs_output_bias_before"].value
    assert found["questions_beats_random_p"].n == len(ambiguous) == 60
    assert 0 < found["questions_beats_random_p"].value <= 1
    assert baseline.Params().questions is False, "off by default: each random selection answers every question"
    from fairaudit.reporting.sections import _random_verdict  # the report's sentence for it

    said = _random_verdict("race", {metric: m.value for metric, m in found.items()}, True, "questions_")
    assert said.startswith("race: against random neurons of the same number per layer, |output-level bias| in the ")
    assert "question format (s_AMB), which no selection reads, went from" in said
