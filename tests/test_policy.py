"""Compliance policies: verdicts against hand-set intervals, the gate's exit statuses, errors
before any model loads, the report's verdict table, the model-card section, and the audit
bundle's round trip and tamper detection."""

from __future__ import annotations

import io
import json
import math
import random
import re
import zipfile
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import run_module

from fairaudit.compliance.policy import (
    METRICS,
    Policy,
    evaluate_policy,
    exit_status,
    gate_role,
    judge,
    load_policy,
    verdict_changes,
)
from fairaudit.config import RunConfig
from fairaudit.errors import ConfigError
from fairaudit.measurement.evaluate import EvaluationResult, compare
from fairaudit.pipeline.audit import audit
from fairaudit.pipeline.evaluation import MEASUREMENT_SCHEMA
from fairaudit.reporting.bundle import verify_bundle, write_bundle
from fairaudit.store import Store


def _policy(*rules: dict, min_items: int = 10) -> Policy:
    return Policy.model_validate({"policy": "test", "min_items": min_items, "rules": list(rules)})


def _fake_run(
    store: Store, run_id: str, rows: list[dict], comparisons: list[dict] | None = None, axes=("race", "gender")
) -> None:
    """A stored audit run whose evaluations are set by hand: (evaluator, role, axis, metric, value, low, high, n)."""
    store.write_run(
        run_id,
        {
            "kind": "audit",
            "status": "complete",
            "started": run_id,
            "model_id": "m",
            "model": {"weights_hash": "abc"},
            "suites": {axis: {} for axis in axes},
            "config": {"evaluators": ["output_bias", "perplexity", "facts"]},
            **({"prune": {"out": "/x/m-pruned", "run_id": "p"}} if comparisons is not None else {}),
        },
    )
    table = pa.Table.from_pylist(
        [
            {
                "evaluator": r[0],
                "role": r[1],
                "axis_or_task": r[2],
                "metric": r[3],
                "value": r[4],
                "low": r[5],
                "high": r[6],
                "n": r[7],
                "error": "",
            }
            for r in rows
        ],
        schema=MEASUREMENT_SCHEMA,
    )
    store.write_part("evaluations", "m", "all", run_id, table, part="output_bias")
    if comparisons:
        store.write_part("comparisons", "m", "all", run_id, pa.Table.from_pylist(comparisons))
    store.write_run(run_id, {**store.read_run(run_id), "files": store.run_files(run_id)})  # sealed, as on completion


# --- verdicts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "low, high, items, expected",
    [
        (-0.10, 0.15, 40, "pass"),  # the whole interval inside [-0.2, 0.2]
        (0.25, 0.60, 40, "fail"),  # the whole interval above 0.2
        (-0.50, -0.21, 40, "fail"),  # the whole interval below -0.2
        (0.05, 0.35, 40, "inconclusive"),  # straddles 0.2
        (-0.30, 0.30, 40, "inconclusive"),  # straddles both thresholds
        (-0.10, 0.15, 9, "too few items"),  # would pass, but rests on 9 items
        (math.nan, math.nan, 40, "inconclusive"),  # no interval
    ],
)
def test_abs_threshold_verdicts(low, high, items, expected):
    rule = _policy({"id": "r", "metric": "stereotype_preference", "abs_at_most": 0.2}).rules[0]
    assert judge(0.0, low, high, items, rule.allowed(), 10)[0] == expected


def test_between_at_most_at_least_are_closed_intervals():
    between = _policy({"id": "r", "metric": "pct_stereotype", "between": [0.45, 0.55]}).rules[0]
    assert between.allowed() == (0.45, 0.55)
    assert judge(0.5, 0.45, 0.55, 50, between.allowed(), 10)[0] == "pass"  # the bounds themselves are allowed
    assert judge(0.6, 0.56, 0.64, 50, between.allowed(), 10)[0] == "fail"
    at_most = _policy({"id": "r", "metric": "perplexity_change", "at_most": 0.02}).rules[0]
    assert at_most.allowed() == (-math.inf, 0.02)
    assert judge(0.0, -5.0, 0.019, 50, at_most.allowed(), 10)[0] == "pass"
    at_least = _policy({"id": "r", "metric": "fact_accuracy_change", "at_least": -0.05}).rules[0]
    assert judge(-0.1, -0.2, -0.06, 50, at_least.allowed(), 10)[0] == "fail"


def test_bernoulli_items_give_the_verdicts_their_intervals_imply():
    """pct_stereotype from 40 items, half stereotyping: the mean is 0.5 and its bootstrap interval
    is about 0.5 +/- 1.96 * sqrt(0.25 / 40) = [0.345, 0.655], so [0.45, 0.55] is undecided and
    [0.2, 0.8] passes; 40 of 40 stereotyping gives [1, 1], a fail."""
    half, every = EvaluationResult(), EvaluationResult()
    half.add_items("output_bias", "race", "pct_stereotype", {str(i): float(i % 2) for i in range(40)})
    every.add_items("output_bias", "race", "pct_stereotype", {str(i): 1.0 for i in range(40)})
    m = half.measurements[0]
    assert m.value == 0.5 and 0.30 < m.low < 0.40 and 0.60 < m.high < 0.70
    assert judge(m.value, m.low, m.high, m.n, (0.45, 0.55), 30)[0] == "inconclusive"
    assert judge(m.value, m.low, m.high, m.n, (0.2, 0.8), 30)[0] == "pass"
    m = every.measurements[0]
    assert (m.value, m.low, m.high) == (1.0, 1.0, 1.0)
    assert judge(m.value, m.low, m.high, m.n, (0.45, 0.55), 30)[0] == "fail"


def test_policy_reads_each_axis_and_model_from_the_store(tmp_path):
    store = Store(tmp_path / "store")
    _fake_run(
        store,
        "r1",
        [
            ("output_bias", "before", "race", "stereotype_preference", 0.4, 0.3, 0.5, 40),
            ("output_bias", "before", "gender", "stereotype_preference", 0.0, -0.1, 0.1, 40),
            ("output_bias", "after", "race", "stereotype_preference", 0.1, -0.05, 0.25, 40),
            ("output_bias", "after", "gender", "stereotype_preference", 0.0, -0.1, 0.1, 5),
        ],
        comparisons=[
            {
                "evaluator": "perplexity",
                "axis_or_task": "",
                "metric": "nll_per_token_bundled",
                "items": 40,
                "change": 0.01,
                "change_low": 0.005,
                "change_high": 0.015,
                "relative_change": 0.003,
                "relative_low": 0.001,
                "relative_high": 0.004,
            }
        ],
    )
    policy = _policy(
        {"id": "bias", "metric": "stereotype_preference", "abs_at_most": 0.2},
        {"id": "ppl", "metric": "perplexity_change", "at_most": 0.02},
    )
    verdicts = {(v.rule, v.model, v.axis): v for v in evaluate_policy(policy, store, "r1")}
    assert verdicts[("bias", "original", "race")].verdict == "fail"
    assert verdicts[("bias", "original", "gender")].verdict == "pass"
    assert verdicts[("bias", "pruned", "race")].verdict == "inconclusive"
    assert verdicts[("bias", "pruned", "gender")].verdict == "too few items"
    ppl = verdicts[("ppl", "pruned", "-")]  # a change metric: the pruned model only
    assert ("ppl", "original", "-") not in verdicts
    assert ppl.value == pytest.approx(math.expm1(0.01)) and ppl.high == pytest.approx(math.expm1(0.015))
    assert ppl.verdict == "pass"
    assert exit_status(list(verdicts.values()), "pruned") == 3
    assert exit_status(list(verdicts.values()), "original") == 1


def test_unmeasured_must_rule_is_not_a_pass_unless_marked_if_measured(tmp_path):
    store = Store(tmp_path / "store")
    _fake_run(
        store, "r1", [("output_bias", "before", "race", "stereotype_preference", 0.0, -0.1, 0.1, 40)], axes=("race",)
    )
    strict = _policy({"id": "crows", "metric": "pct_stereotype", "between": [0.45, 0.55]})
    verdicts = evaluate_policy(strict, store, "r1")
    assert [v.verdict for v in verdicts] == ["not measured"] and exit_status(verdicts, "original") == 3
    lenient = _policy(
        {"id": "crows", "metric": "pct_stereotype", "between": [0.45, 0.55], "if_measured": True},
        {"id": "bias", "metric": "stereotype_preference", "abs_at_most": 0.2},
    )
    verdicts = evaluate_policy(lenient, store, "r1")
    assert [(v.rule, v.verdict) for v in verdicts] == [("bias", "pass")] and exit_status(verdicts, "original") == 0


def test_an_audited_axis_without_a_measurement_is_not_measured_and_undecides_the_gate(tmp_path):
    """`axes: all` is every audited axis: gender (audited, no output-level measurement, as for a suite
    without continuations) is NOT MEASURED, so race's pass does not make the gate pass."""
    store = Store(tmp_path / "store")
    _fake_run(store, "r1", [("output_bias", "before", "race", "stereotype_preference", 0.0, -0.1, 0.1, 40)])
    verdicts = evaluate_policy(
        _policy({"id": "bias", "metric": "stereotype_preference", "abs_at_most": 0.2}), store, "r1"
    )
    assert [(v.axis, v.verdict) for v in verdicts] == [("gender", "not measured"), ("race", "pass")]
    assert exit_status(verdicts, "original") == 3


def test_an_axis_pruning_made_worse_fails_the_bundled_policy(tmp_path):
    """Collateral damage: the bundled rule `no-axis-worse` reads |preference| after minus before
    (paired, from the comparisons table) on every audited axis; race moved away from zero."""
    store = Store(tmp_path / "store")
    rng = random.Random(0)
    race_before = {f"p{i}": 0.1 + rng.gauss(0, 0.05) for i in range(40)}
    gender_before = {f"p{i}": 0.4 + rng.gauss(0, 0.05) for i in range(40)}
    race = compare(race_before, {k: v + 0.2 for k, v in race_before.items()})  # 0.1 -> 0.3: worse
    gender = compare(gender_before, {k: v * 0.1 for k, v in gender_before.items()})  # 0.4 -> 0.04: repaired
    rows = [("output_bias", "before", axis, "stereotype_preference", 0.0, -0.1, 0.1, 40) for axis in ("race", "gender")]
    comparisons = [
        {"evaluator": "output_bias", "axis_or_task": axis, "metric": "stereotype_preference", **change}
        for axis, change in (("race", race), ("gender", gender))
    ]
    _fake_run(store, "r1", rows, comparisons=comparisons)
    rule = next(r for r in load_policy("default").rules if r.id == "no-axis-worse")
    verdicts = {v.axis: v for v in evaluate_policy(_policy(rule.model_dump()), store, "r1")}
    assert verdicts["race"].value == pytest.approx(0.2) and verdicts["race"].verdict == "fail"
    assert verdicts["gender"].value == pytest.approx(-0.36, abs=0.01) and verdicts["gender"].verdict == "pass"
    assert exit_status(list(verdicts.values()), "pruned") == 1
    # an axis whose change straddles 0 is undecided: the audit cannot say it was not made worse
    noisy = {f"p{i}": 0.1 + rng.gauss(0, 0.3) for i in range(40)}
    straddle = compare(noisy, {k: v + rng.gauss(0, 0.3) for k, v in noisy.items()})
    assert straddle["abs_low"] < 0 < straddle["abs_high"]
    from fairaudit.compliance.policy import judge

    assert judge(straddle["abs_change"], straddle["abs_low"], straddle["abs_high"], 40, rule.allowed(), 10)[0] == (
        "inconclusive"
    )


def test_zero_verdicts_are_never_a_pass(tmp_path):
    """A policy that yields no must verdict on the gated model (rules on the pruned model of an
    unpruned run, only if_measured rules that measured nothing, --gate pruned without pruning)."""
    store = Store(tmp_path / "store")
    _fake_run(store, "r1", [("output_bias", "before", "race", "stereotype_preference", 0.0, -0.1, 0.1, 40)])
    pruned_only = _policy({"id": "p", "metric": "stereotype_preference", "abs_at_most": 0.2, "models": ["pruned"]})
    optional = _policy({"id": "c", "metric": "pct_stereotype", "between": [0.45, 0.55], "if_measured": True})
    for policy in (pruned_only, optional):
        verdicts = evaluate_policy(policy, store, "r1")
        assert verdicts == [] and exit_status(verdicts, gate_role(verdicts)) == 3
    passing = evaluate_policy(
        _policy({"id": "b", "metric": "stereotype_preference", "abs_at_most": 0.2, "axes": ["race"]}), store, "r1"
    )
    assert exit_status(passing, "original") == 0 and exit_status(passing, gate_role(passing, "pruned")) == 3
    with pytest.raises(ValueError, match="at least one"):
        _policy({"id": "e", "metric": "stereotype_preference", "abs_at_most": 0.2, "axes": []})
    with pytest.raises(ValueError):
        _policy({"id": "t", "metric": "stereotype_preference", "abs_at_most": True})


def test_a_regression_is_listed_first(tmp_path):
    store = Store(tmp_path / "store")
    _fake_run(
        store,
        "old",
        [
            ("output_bias", "before", "race", "stereotype_preference", 0.0, -0.1, 0.1, 40),
            ("output_bias", "before", "gender", "stereotype_preference", 0.5, 0.3, 0.7, 40),
        ],
    )
    _fake_run(
        store,
        "new",
        [
            ("output_bias", "before", "race", "stereotype_preference", 0.5, 0.3, 0.7, 40),
            ("output_bias", "before", "gender", "stereotype_preference", 0.0, -0.1, 0.1, 40),
        ],
    )
    policy = _policy({"id": "bias", "metric": "stereotype_preference", "abs_at_most": 0.2})
    rows = verdict_changes(evaluate_policy(policy, store, "old"), evaluate_policy(policy, store, "new"))
    assert [(r["axis"], r["before"], r["after"], r["change"]) for r in rows] == [
        ("race", "pass", "fail", "regression"),
        ("gender", "fail", "pass", "better"),
    ]


# --- policy files and the gate ------------------------------------------------------------------


def test_policy_file_errors_name_the_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "policy: p\nrules:\n  - id: a\n    metric: stereotype_preference\n    abs_at_most: 0.2\n"
        "  - id: b\n    metric: toxicity\n    at_most: 1\n"
    )
    with pytest.raises(ConfigError, match=r"line 7.*unknown metric 'toxicity'"):
        load_policy(path)
    path.write_text(
        "policy: p\nrules:\n  - id: a\n    metric: stereotype_preference\n    at_most: 0.2\n    at_least: 0\n"
    )
    with pytest.raises(ConfigError, match="exactly one threshold"):
        load_policy(path)
    path.write_text("policy: p\nrules:\n  - id: a\n    metric: pct_stereotype\n    between: [0.6, 0.4]\n")
    with pytest.raises(ConfigError, match="low <= high"):
        load_policy(path)


def test_the_bundled_policy_loads_and_cites_a_source_for_every_rule():
    policy = load_policy("default")
    assert policy.rules and all(rule.source for rule in policy.rules)
    crows = next(rule for rule in policy.rules if rule.metric == "pct_stereotype")
    assert crows.between == (0.45, 0.55) and "Nangia" in crows.source


def test_check_exit_statuses(cli, tmp_path):
    store = Store(tmp_path / "store")
    _fake_run(
        store,
        "r1",
        [
            ("output_bias", "before", "race", "stereotype_preference", 0.0, -0.1, 0.1, 40),
            ("output_bias", "before", "gender", "stereotype_preference", 0.1, 0.05, 0.3, 40),
        ],
    )
    write = lambda name, threshold: (tmp_path / name).write_text(  # noqa: E731
        f"policy: {name}\nmin_items: 10\nrules:\n  - id: bias\n    metric: stereotype_preference\n    abs_at_most: {threshold}\n"
    )
    write("loose.yaml", 0.5)
    write("tight.yaml", 0.01)
    write("middle.yaml", 0.2)
    assert cli("check", tmp_path / "store", "--policy", tmp_path / "loose.yaml").exit_code == 0
    assert cli("check", tmp_path / "store", "--policy", tmp_path / "tight.yaml").exit_code == 1
    assert cli("check", tmp_path / "store", "--policy", tmp_path / "middle.yaml").exit_code == 3
    result = cli("check", tmp_path / "store", "--policy", tmp_path / "middle.yaml", "--json")
    table = json.loads(result.output)
    assert table["exit_status"] == 3 and {(v["axis"], v["verdict"]) for v in table["verdicts"]} == {
        ("race", "pass"),
        ("gender", "inconclusive"),
    }
    (tmp_path / "axis.yaml").write_text(
        "policy: p\nrules:\n  - id: a\n    metric: stereotype_preference\n    abs_at_most: 0.2\n    axes: [caste]\n"
    )
    process = run_module("check", tmp_path / "store", "--policy", tmp_path / "axis.yaml")
    assert (
        process.returncode == 2
        and "axis ['caste'] is not audited" in process.stderr
        and "Traceback" not in process.stderr
    )


def test_audit_refuses_a_bad_policy_before_loading_the_model(tmp_path):
    base = {"model": str(tmp_path / "no-such-model"), "suites": ["race"], "store": str(tmp_path / "store")}
    (tmp_path / "axis.yaml").write_text(
        "policy: p\nrules:\n  - id: a\n    metric: stereotype_preference\n    abs_at_most: 0.2\n    axes: [religion]\n"
    )
    with pytest.raises(ConfigError, match="axis \\['religion'\\] is not audited"):
        audit(RunConfig.model_validate({**base, "policy": str(tmp_path / "axis.yaml")}))
    (tmp_path / "ppl.yaml").write_text(
        "policy: p\nrules:\n  - id: a\n    metric: perplexity_change\n    at_most: 0.02\n"
    )
    with pytest.raises(ConfigError, match="does not prune"):
        audit(RunConfig.model_validate({**base, "pruning": None, "policy": str(tmp_path / "ppl.yaml")}))
    (tmp_path / "facts.yaml").write_text("policy: p\nrules:\n  - id: a\n    metric: fact_accuracy\n    at_least: 0.5\n")
    with pytest.raises(ConfigError, match="'facts' evaluator"):
        audit(RunConfig.model_validate({**base, "evaluators": ["output_bias"], "policy": str(tmp_path / "facts.yaml")}))
    assert not (tmp_path / "store").exists()  # nothing was started


# --- a real audit with a policy: report, card, bundle ------------------------------------------


@pytest.fixture(scope="module")
def audited(model_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    config = RunConfig.model_validate(
        {
            "model": str(model_folder("llama")),
            "suites": ["race", "gender"],
            "store": str(root / "store"),
            "probe": {"plugin": "activations", "params": {"progress": False}},
            "diagnose_top": 0,
            "pruning": {"out": str(root / "pruned"), "selection": {"fraction": 0.05}},
            "evaluators": [
                "bias_reprobe",
                "output_bias",
                {"plugin": "perplexity", "params": {"max_length": 64}},
                "facts",
            ],
            "policy": "default",
        }
    )
    return root, audit(config)


def test_audit_with_a_policy_stores_it_and_the_report_opens_with_the_gate_and_the_axis_table(audited, cli):
    root, result = audited
    record = Store(root / "store").read_run(result.run_id)
    assert (
        record["policy"]["name"] == "fairaudit-default"
        and record["policy"]["sha256"] == load_policy("default").sha256()
    )
    assert {v.rule for v in result.verdicts} >= {"output-bias", "perplexity-cost", "factual-control"}
    html = result.report.read_text(encoding="utf-8")
    # first the gate and the per-axis table, then every verdict (issue 35: the first screen is the axis table)
    assert html.index("Release gate, policy") < html.index('id="glance"') < html.index('id="policy"')
    shown = dict(re.findall(r'data-metric="verdict" data-axis="([^"]+)" data-value="([^"]+)"', html))
    assert shown == {f"{v.rule}:{v.model}:{v.axis}": v.verdict for v in result.verdicts}
    glance = dict(re.findall(r'data-metric="glance_verdict" data-axis="([^"]+)" data-value="([^"]*)"', html))
    rank = ["pass", "inconclusive", "fail"]  # the worst must verdict of the gated (pruned) model per axis
    for axis in ("race", "gender"):
        must = [v.verdict for v in result.verdicts if v.axis == axis and v.model == "pruned" and v.severity == "must"]
        worst = max(must, key=lambda v: 2 if v == "fail" else 0 if v == "pass" else 1)
        assert glance[axis] == worst and worst in rank + ["too few items", "not measured"]
    checked = json.loads(cli("check", root / "store", "--run", result.run_id, "--json").output)  # the run's own policy
    assert [v["verdict"] for v in checked["verdicts"]] == [v.verdict for v in result.verdicts]


def test_check_recomputes_every_summary_from_its_items_and_refuses_a_forged_one(audited, cli, tmp_path):
    """A forger who edits a summary (a narrower interval that passes) and re-seals the run's file
    manifest still fails: `check` recomputes each mean-of-items summary from its per-item rows."""
    import shutil

    import pyarrow.parquet as pq

    from fairaudit.compliance.policy import cross_check

    root, result = audited
    assert cross_check(Store(root / "store"), result.run_id) > 20
    shutil.copytree(root / "store", tmp_path / "store")
    store = Store(tmp_path / "store")
    for path in sorted((tmp_path / "store" / "evaluations").rglob("*.parquet")):
        rows = pq.read_table(path).to_pylist()
        hit = [r for r in rows if r["metric"] == "stereotype_preference" and r["axis_or_task"] == "race"]
        if hit:
            hit[0]["low"], hit[0]["high"] = hit[0]["value"] - 1e-3, hit[0]["value"] + 1e-3
            pq.write_table(pa.Table.from_pylist(rows, schema=MEASUREMENT_SCHEMA), path)
            break
    store.write_run(result.run_id, {**store.read_run(result.run_id), "files": store.run_files(result.run_id)})
    refused = cli("check", tmp_path / "store", "--run", result.run_id)
    assert refused.exit_code == 2
    assert "output_bias / stereotype_preference / race" in refused.stderr and "per-item rows" in refused.stderr


def test_card_section_in_the_pruned_model_and_on_the_command_line(audited, cli):
    root, result = audited
    section = cli("card", root / "store", "--run", result.run_id).output
    assert section.startswith("## Bias, Risks, and Limitations") and "### What this audit does not show" in section
    assert "fairaudit-default" in section and "| output-bias | must | pruned | race |" in section
    card = (Path(result.pruned["out"]) / "README.md").read_text(encoding="utf-8")
    assert "## Bias, Risks, and Limitations" in card and "fairness-pruned with fairaudit" in card


def test_bundle_is_deterministic_and_verifies(audited, cli, tmp_path):
    root, result = audited
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    assert cli("bundle", root / "store", "--run", result.run_id, "--out", first).exit_code == 0
    assert cli("bundle", root / "store", "--run", result.run_id, "--out", second).exit_code == 0
    assert first.read_bytes() == second.read_bytes()
    names = zipfile.ZipFile(first).namelist()
    assert {
        "manifest.json",
        "report.html",
        "report.json",
        "run.json",
        "prune-run.json",
        "policy.yaml",
        "suites/race.yaml",
        "suites/gender.yaml",
    } <= set(names)
    assert any(name.startswith("tables/neuron_scores/") for name in names) and any(
        name.startswith("tables/neuron_maps/") for name in names
    )
    manifest = json.loads(zipfile.ZipFile(first).read("manifest.json"))
    assert manifest["weights_hash"] == Store(root / "store").read_run(result.run_id)["model"]["weights_hash"]
    assert any(p["name"] == "output_bias" for p in manifest["plugins"])
    outcome = cli("verify", first)
    assert outcome.exit_code == 0 and outcome.output.startswith("ok:")
    refused = run_module("bundle", root / "store", "--run", result.run_id, "--out", first)
    assert refused.returncode == 2 and "already exists" in refused.stderr


def _with_changed_byte(source: Path, target: Path, member: str) -> None:
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as changed:
        for info in original.infolist():
            data = bytearray(original.read(info))
            if info.filename == member:
                position = len(data) // 2
                data[position] = (data[position] + 1) % 256
            changed.writestr(info, bytes(data))


def test_verify_finds_a_changed_byte_in_any_file(audited, tmp_path):
    root, result = audited
    bundle, _ = write_bundle(Store(root / "store"), result.run_id, tmp_path / "audit.zip")
    for member in zipfile.ZipFile(bundle).namelist():
        changed = tmp_path / "changed.zip"
        _with_changed_byte(bundle, changed, member)
        verification = verify_bundle(changed)
        assert not verification.ok, member
        if member != "manifest.json":  # a changed manifest byte shows as the file whose listed hash it changed
            assert any(problem.startswith(member) for problem in verification.problems), member


def test_verify_checks_the_weights(audited, model_folder, tmp_path):
    root, result = audited
    bundle, manifest_sha = write_bundle(Store(root / "store"), result.run_id, tmp_path / "audit.zip")
    folder = model_folder("llama")
    assert verify_bundle(bundle, str(folder), manifest_sha).ok
    assert not verify_bundle(bundle, str(folder), "0" * 64).ok
    from safetensors.torch import load_file, save_file

    changed = tmp_path / "changed-model"
    changed.mkdir()
    for path in folder.iterdir():
        (changed / path.name).write_bytes(path.read_bytes())
    weights = next(changed.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    verification = verify_bundle(bundle, str(changed))
    assert [problem for problem in verification.problems if "weights hash" in problem and "differs" in problem]


def test_verify_refuses_what_is_not_a_bundle(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    process = run_module("verify", tmp_path / "x.zip")
    assert process.returncode == 2 and "not a readable zip" in process.stderr
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../etc/passwd", "x")
    (tmp_path / "y.zip").write_bytes(buffer.getvalue())
    process = run_module("verify", tmp_path / "y.zip")
    assert process.returncode == 2 and "no manifest.json" in process.stderr


def test_the_example_screen_gates_the_original_model_without_pruning(llama_folder, tmp_path):
    """examples/screen.yaml (the two-minute screen the docs describe): probe and output-level bias
    of the original model, verdicts of the default policy, nothing pruned."""
    from fairaudit.config import load_config
    from fairaudit.inputs.model import ModelSpec
    from fairaudit.pipeline.audit import audit

    config = load_config(Path(__file__).parent.parent / "examples" / "screen.yaml")
    assert (
        config.pruning is None
        and [ref.plugin for ref in config.evaluators] == ["output_bias"]
        and config.policy == "default"
    )
    result = audit(
        config.model_copy(
            update={"model": ModelSpec(id=str(llama_folder)), "store": str(tmp_path / "store"), "report": False}
        )
    )
    assert not result.pruned and not (tmp_path / "pruned").exists()
    assert {row["evaluator"] for row in result.measurements} == {"output_bias"}
    rules = {verdict.rule for verdict in result.verdicts}
    assert "output-bias" in rules and {
        verdict.model for verdict in result.verdicts if verdict.rule == "output-bias"
    } == {"original"}


def test_check_never_passes_without_a_verdict_per_audited_axis_and_must_rule(tmp_path_factory):
    """Generated policies on one stored run (race measured, gender audited but not measured, a
    pruned model with comparisons): whenever the gate passes (exit 0), every must rule that is not
    `if_measured` and applies to the gated model has a verdict, a per-axis one for every audited
    axis, and every verdict it has is a pass."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    store = Store(tmp_path_factory.mktemp("generated") / "store")
    rows = [
        ("output_bias", role, "race", "stereotype_preference", 0.01, -0.05, 0.07, 40) for role in ("before", "after")
    ]
    rows += [("perplexity", role, "", "nll_per_token_bundled", 3.0, 2.9, 3.1, 500) for role in ("before", "after")]
    change = {
        "evaluator": "perplexity",
        "axis_or_task": "",
        "metric": "nll_per_token_bundled",
        "before": 3.0,
        "after": 3.001,
        "change": 0.001,
        "change_low": 0.0005,
        "change_high": 0.0015,
        "relative_change": 0.0003,
        "relative_low": 0.0,
        "relative_high": 0.001,
        "items": 500,
    }
    _fake_run(store, "r1", rows, comparisons=[change])
    audited = ["race", "gender"]
    rule = st.fixed_dictionaries(
        {"metric": st.sampled_from(sorted(METRICS)), "abs_at_most": st.sampled_from([0.0, 0.05, 0.2, 10.0])},
        optional={
            "axes": st.sampled_from(["all", ["race"], ["gender"], ["race", "gender"]]),
            "models": st.sampled_from([["original"], ["pruned"], ["original", "pruned"]]),
            "severity": st.sampled_from(["must", "should"]),
            "if_measured": st.booleans(),
        },
    )

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(rule, min_size=1, max_size=4), st.sampled_from(["auto", "original", "pruned"]))
    def check(rules, gate):
        from fairaudit.compliance.policy import Rule

        try:
            policy = _policy(*({"id": f"r{i}", **r} for i, r in enumerate(rules)))
        except ValueError:
            return  # a rule the policy refuses (a change metric on the original model)
        verdicts = evaluate_policy(policy, store, "r1")
        role = gate_role(verdicts, gate)
        if exit_status(verdicts, role) != 0:
            return
        judged = [v for v in verdicts if v.severity == "must" and v.model == role]
        assert judged and all(v.verdict == "pass" for v in judged)
        for rule in policy.rules:
            assert isinstance(rule, Rule)
            if rule.severity != "must" or rule.if_measured or role not in rule.models:
                continue
            source = METRICS[rule.metric]
            if source.kind == "change" and role == "original":
                continue
            own = {v.axis for v in judged if v.rule == rule.id}
            if not source.per_axis:
                assert own == {"-"}, (rule, own)
            elif source.evaluator != "lm_eval":
                assert set(audited if rule.axes == "all" else rule.axes) <= own, (rule, own)

    check()


def _forged(bundle: Path, out: Path, edit) -> Path:
    """A copy of a bundle rebuilt member by member, with `edit(archive, name, data)` choosing what
    goes in for each member (it writes to `archive` itself)."""
    import warnings

    source = zipfile.ZipFile(bundle)
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        warnings.simplefilter("ignore")  # a duplicate name is the point of one forgery
        for info in source.infolist():
            edit(archive, info.filename, source.read(info))
    return out


def test_a_forged_bundle_never_verifies(audited, tmp_path, cli):
    """Duplicate names, escaping paths, symlinks, unlisted members, an empty manifest, encryption,
    another compression, a zip bomb and control characters in a name: each is refused."""
    root, result = audited
    bundle, _ = write_bundle(Store(root / "store"), result.run_id, tmp_path / "audit.zip")
    assert verify_bundle(bundle).ok

    def same(archive, name, data):
        archive.writestr(name, data)

    def twice(archive, name, data):  # the verifier would hash one copy, `unzip` extract the other
        archive.writestr(name, data)
        if name == "report.html":
            archive.writestr(name, b"<html>a forged report</html>")

    def extra(member, payload=b"x", kind=None, method=zipfile.ZIP_DEFLATED):
        def edit(archive, name, data):
            archive.writestr(name, data)
            if name == MANIFEST_NAME:
                info = zipfile.ZipInfo(member)
                info.compress_type = method
                if kind is not None:
                    info.external_attr = (kind | 0o777) << 16
                archive.writestr(info, payload)

        return edit

    def empty_manifest(archive, name, data):
        if name == MANIFEST_NAME:
            manifest = json.loads(data)
            data = (json.dumps({**manifest, "files": {}}, indent=2, sort_keys=True) + "\n").encode()
        archive.writestr(name, data)

    import stat

    MANIFEST_NAME = "manifest.json"
    forgeries = {
        "appears 2 times": twice,
        "not a plain relative path": extra("../x"),
        "not part of a bundle: its name is not": extra("/abs"),
        "not a regular file": extra("tables/link", b"/etc/passwd", kind=stat.S_IFLNK),
        "in the bundle but not in the manifest": extra("notes.txt"),
        "it lists no file": empty_manifest,
        "it is encrypted": extra("secret.bin"),
        "compression method 12": extra("other.bin", method=zipfile.ZIP_BZIP2),
        "\\x1b[2K\\x0dok: 999 files": extra("ok\x1b[2K\rok: 999 files checked"),  # printed escaped, never raw
    }
    for expected, edit in forgeries.items():
        forged = _forged(bundle, tmp_path / "forged.zip", edit)
        if expected == "it is encrypted":  # zipfile writes no encrypted member: set the flag in the central directory
            data = bytearray(forged.read_bytes())
            header = data.rindex(b"secret.bin") - 46
            assert data[header : header + 4] == b"PK\x01\x02"
            data[header + 8] |= 0x1
            forged.write_bytes(bytes(data))
        verification = verify_bundle(forged)
        assert not verification.ok and any(expected in problem for problem in verification.problems), (
            expected,
            verification.problems,
        )
        shown = cli("verify", forged)
        assert shown.exit_code == 1 and "\x1b" not in shown.output, shown.output
        forged.unlink()
    assert verify_bundle(_forged(bundle, tmp_path / "copy.zip", same)).ok  # the rebuilding itself changes nothing


def test_a_zip_bomb_is_refused_before_it_is_read(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", b"{}")
        archive.writestr("tables/zeros.parquet", bytes(40 << 20))  # 40 MiB of zeros deflate to about 40 KiB
    with pytest.raises(ConfigError, match="declares .* bytes once expanded"):
        verify_bundle(bomb)


def test_names_reach_neither_the_terminal_raw_nor_out_of_a_markdown_code_span(audited, tmp_path, cli):
    """A policy named with ESC, BEL, a newline and backticks: `check` prints it escaped, and the
    model card keeps it inside one code span (no live HTML, no fake terminal line)."""
    from fairaudit.escaping import markdown_code

    root, result = audited
    hostile = "evil\x1b[2K\r\x07\nok: PASS` <img src=x onerror=alert(1)> `"
    policy = tmp_path / "hostile.yaml"
    policy.write_text(
        f"policy: {json.dumps(hostile)}\nrules:\n  - id: b\n    metric: stereotype_preference\n    abs_at_most: 100\n"
    )
    checked = cli("check", root / "store", "--run", result.run_id, "--policy", policy)
    card = cli("card", root / "store", "--run", result.run_id, "--policy", policy)
    for output in (checked.output, card.output):
        assert not any(ch in output for ch in "\x1b\x07\r"), repr(output)
    assert markdown_code(hostile) in card.output and "\nok: PASS" not in card.output
    fence = markdown_code(hostile).split("evil")[0].strip()
    assert len(fence) > max(len(run) for run in re.findall(r"`+", hostile))


def test_a_changed_neuron_map_of_the_runs_pruning_is_refused(audited, cli):
    """An audit rests on its prune run's neuron map too: a changed byte there refuses the card."""
    root, result = audited
    store = Store(root / "store")
    prune_run = store.read_run(result.run_id)["prune"]["run_id"]
    path = store.root / next(iter(store.read_run(prune_run)["files"]))
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        refused = cli("card", root / "store", "--run", result.run_id)
        assert refused.exit_code == 2 and f"run {prune_run}: 1 table file(s) changed" in refused.output, refused.output
    finally:
        path.write_bytes(original)
