"""Output attribution (issue 23's first part): the output-level bias quantity, its per-unit
attribution (recomputed by finite differences), verification by real ablation, the scorer
plugins, and ground truth on a planted model whose reacting and writing neurons differ."""

from __future__ import annotations

import pytest
import torch

from fairaudit.inputs.model import load_model
from fairaudit.inputs.suite import Pair, resolve_suite
from fairaudit.measurement import attribution, metrics
from fairaudit.plugins import registry
from fairaudit.repair.prune import Selection, masked, zero_heads
from fairaudit.testing import make_planted_model

PAIR = Pair(
    pair_id="p",
    kind="template",
    template_id="t",
    group_a="x",
    group_b="y",
    text_a="The x man was",
    text_b="The y man was",
    continuations={"negative": " bad", "neutral": " here"},
)


@pytest.fixture(scope="module")
def llama(model_folder):
    return load_model(str(model_folder("llama")))


@pytest.fixture(scope="module")
def llama64(model_folder):
    """In float64, so that finite differences of m resolve the small effects of a random model."""
    loaded = load_model(str(model_folder("llama")))
    loaded.model.double()
    return loaded


def test_output_bias_terms_by_hand():
    assert metrics.output_bias_terms(PAIR) == [
        ("The x man was", " bad", 1.0),
        ("The y man was", " bad", -1.0),
        ("The x man was", " here", -1.0),
        ("The y man was", " here", 1.0),
    ]
    sentence = Pair(
        pair_id="s", kind="sentence", template_id="s", group_a="x", group_b="y", text_a="More.", text_b="Less."
    )
    assert metrics.output_bias_terms(sentence) == [("", "More.", 1.0), ("", "Less.", -1.0)]
    assert metrics.output_bias_terms(PAIR.model_copy(update={"continuations": {"negative": " bad"}})) == []


def test_output_bias_is_the_evaluators_stereotype_preference(llama):
    suite = resolve_suite("race")
    pairs = [pair for pair in suite.pairs(None) if metrics.output_bias_terms(pair)]
    values = attribution.output_bias_values(llama, pairs)
    output_bias = registry().get("evaluator", "output_bias")
    expected = output_bias.evaluate(llama, [suite], output_bias.Params(), None).items[("race", "stereotype_preference")]
    assert values.tolist() == pytest.approx([expected[pair.pair_id] for pair in pairs], abs=1e-4)


def _scaled(loaded, kind: str, layer: int, index: int, factor: float, toward: torch.Tensor | None = None):
    """A pre-hook that moves one unit: x -> x * factor, or x -> x + (factor - 1) * (toward - x)."""
    module = attribution.unit_modules(loaded, kind)[layer]

    def hook(m, args):
        hidden = args[0].clone()
        step = hidden.shape[-1] // attribution.head_count(loaded) if kind == "head" else 1
        columns = slice(index * step, (index + 1) * step)
        if toward is None:
            hidden[..., columns] = hidden[..., columns] * factor
        else:
            hidden[..., columns] = hidden[..., columns] + (factor - 1) * (toward[columns] - hidden[..., columns])
        return (hidden, *args[1:])

    return module.register_forward_pre_hook(hook)


@pytest.mark.parametrize("kind,layer", [("neuron", 0), ("neuron", 1), ("head", 0), ("head", 1)])
def test_contribution_is_the_derivative_along_the_units_own_scale(llama64, kind, layer):
    """c_p(u) = d m_p(x_u * s) / d s at s = 1, recomputed by central differences for the unit
    of the layer that carries most (the model computes its norms in float32: a unit whose
    effect is under that precision cannot be checked this way)."""
    llama = llama64
    pairs = [pair for pair in resolve_suite("race").pairs("probe") if metrics.output_bias_terms(pair)][:6]
    found = attribution.attribute(llama, pairs, pairs_per_batch=4)
    index = int(found.contribution[kind][:, layer].abs().sum(dim=0).argmax())
    epsilon = 1e-2
    values = []
    for factor in (1 + epsilon, 1 - epsilon):
        handle = _scaled(llama, kind, layer, index, factor)
        try:
            values.append(attribution.output_bias_values(llama, pairs))
        finally:
            handle.remove()
    by_hand = (values[0] - values[1]) / (2 * epsilon)
    assert found.contribution[kind][:, layer, index].double().tolist() == pytest.approx(
        by_hand.tolist(), rel=2e-2, abs=2e-5
    )


def test_mean_ablation_estimate_is_the_derivative_toward_the_mean(llama64):
    llama = llama64
    pairs = [pair for pair in resolve_suite("gender").pairs("probe") if metrics.output_bias_terms(pair)][:4]
    found = attribution.attribute(llama, pairs, pairs_per_batch=4)
    means = attribution.unit_means(
        llama, ["The weather was mild for the season.", "She read the letter twice before she answered."]
    )
    epsilon = 1e-2
    for kind, layer in (("neuron", 1), ("head", 0)):
        index = int(found.predicted_change(kind, means[kind])[:, layer].abs().sum(dim=0).argmax())
        values = []
        for factor in (1 + epsilon, 1 - epsilon):
            handle = _scaled(llama, kind, layer, index, factor, toward=means[kind][layer])
            try:
                values.append(attribution.output_bias_values(llama, pairs))
            finally:
                handle.remove()
        by_hand = (values[0] - values[1]) / (2 * epsilon)  # d/dt m(x + t (mu - x)) at t = 0
        predicted = found.predicted_change(kind, means[kind])[:, layer, index]
        assert predicted.tolist() == pytest.approx(by_hand.tolist(), rel=2e-2, abs=2e-5)


def test_measured_change_is_the_masked_models_change(llama):
    pairs = [pair for pair in resolve_suite("race").pairs("probe") if metrics.output_bias_terms(pair)][:6]
    units = [attribution.Unit("neuron", 0, 3), attribution.Unit("neuron", 1, 40), attribution.Unit("head", 1, 1)]
    measured = attribution.measured_change(llama, pairs, units, replicas=2)
    base = attribution.output_bias_values(llama, pairs).mean()
    selection = Selection([torch.tensor([3]), torch.zeros(0, dtype=torch.long)], [64, 64])
    with masked(llama, selection):
        assert float(measured[0]) == pytest.approx(
            float(attribution.output_bias_values(llama, pairs).mean() - base), abs=1e-5
        )
    o_proj = attribution.unit_modules(llama, "head")[1]
    saved = o_proj.weight.detach().clone()
    zero_heads(llama, [[], [1]])  # a head pruned by zeroing its output-projection columns
    try:
        assert float(measured[2]) == pytest.approx(
            float(attribution.output_bias_values(llama, pairs).mean() - base), abs=1e-5
        )
        assert abs(float(measured[2])) > 1e-5  # the head mattered: the comparison is not vacuous
    finally:
        with torch.no_grad():
            o_proj.weight.copy_(saved)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted") / "model"
    truth = make_planted_model(folder, silent_per_axis=2, quiet_per_axis=2)
    return load_model(str(folder)), truth


def test_attribution_ranks_neurons_with_output_effect_above_neurons_that_only_react(planted):
    """Silent neurons differ in activation as much as the planted writers but move no output;
    quiet ones differ little and move it hard. The activation score ranks silent above quiet,
    the output attribution the reverse, and the real ablation agrees with the attribution."""
    loaded, truth = planted
    probe = registry().get("probe", "activations")
    for axis in ("race", "gender", "religion"):
        pairs = [pair for pair in resolve_suite(axis).pairs("probe") if metrics.output_bias_terms(pair)]
        stats = probe.run(loaded, pairs, [], probe.Params(progress=False, components=["neuron"]), axis)
        activation = metrics.bias(stats.components["neuron"], stats.n_pairs)
        found = attribution.attribute(loaded, pairs)
        carried = found.contribution["neuron"].double().mean(dim=0)
        silent = [(n.layer, n.neuron) for n in truth.neurons if n.role == "silent" and axis in n.axes]
        quiet = [(n.layer, n.neuron) for n in truth.neurons if n.role == "quiet" and axis in n.axes]
        assert min(activation[u] for u in silent) > max(activation[u] for u in quiet), axis
        assert min(carried[u].abs() for u in quiet) > 10 * max(carried[u].abs() for u in silent), axis
        assert all(carried[u] > 0 for u in quiet), axis  # they carry the stereotype-consistent preference
        units = [attribution.Unit("neuron", *u) for u in quiet + silent]
        measured = -attribution.measured_change(loaded, pairs, units)  # what each carried, measured
        assert all(measured[i] > 0 for i in range(len(quiet))) and all(
            abs(measured[len(quiet) + i]) < 1e-4 for i in range(len(silent))
        )


def test_the_scorers_write_neuron_head_and_verification_columns(model_folder, tmp_path):
    from fairaudit.analysis.overlap import load_scores
    from fairaudit.config import RunConfig
    from fairaudit.pipeline.audit import audit
    from fairaudit.store import Store

    result = audit(
        RunConfig.model_validate(
            {
                "model": str(model_folder("llama")),
                "suites": ["race"],
                "store": str(tmp_path / "store"),
                "report": False,
                "probe": {"plugin": "activations", "params": {"progress": False}},
                "pruning": None,
                "evaluators": [],
                "scoring": {
                    "scorers": [
                        "bias",
                        "layer_index",
                        "output_attribution",
                        {"plugin": "ablation", "params": {"top": 6}},
                    ]
                },
            }
        )
    )
    store = Store(tmp_path / "store")
    heads = store.read("head_scores", run_id=result.run_id).to_pylist()
    count = 2 * attribution.head_count(load_model(str(model_folder("llama"))))  # two layers
    assert len(heads) == count and {
        "output_attribution",
        "output_attribution_abs",
        "output_bias_reduction",
        "ablation_effect",
    } <= set(heads[0])
    assert sum(row["ablation_effect"] == row["ablation_effect"] for row in heads) == min(
        6, count
    )  # the top ones verified, NaN elsewhere
    neurons = load_scores(store, result.model_id, "ablation_effect", result.run_id).by_axis["race"]
    assert int((neurons == neurons).sum()) == 6
    summary = result.summaries["race"]
    assert (
        summary["output_bias_pairs"] > 0
        and summary["output_bias_low"] <= summary["output_bias"] <= summary["output_bias_high"]
    )
    assert -1.0 <= summary["neuron_attribution_spearman"] <= 1.0 and summary["neuron_attribution_verified"] == 6
    from fairaudit.reporting.report import render_report_text, report_data

    data = report_data(store, result.run_id)
    html, _ = render_report_text(data)
    assert "race: output-level bias on the probe templates" in html and "neurons: Spearman" in html
    # the causal section: layer profiles as shares of their totals, top units by measured effect
    causal = data["causal"]["race"]
    assert '<section id="causal">' in html and set(causal["shares"]) >= {
        "MLP activation divergence",
        "MLP neurons' output attribution",
    }
    assert all(sum(shares) == pytest.approx(1.0) for shares in causal["shares"].values())
    verified = [row["ablation_effect"] for row in heads if row["ablation_effect"] == row["ablation_effect"]]
    assert causal["top"]["heads"]["ranked_by"].startswith("measured")
    assert abs(causal["top"]["heads"]["rows"][0]["measured"]) == pytest.approx(max(abs(v) for v in verified), rel=1e-6)
    assert len(causal["top"]["neurons"]["rows"]) == 5
    reduction = load_scores(store, result.model_id, "output_bias_reduction", result.run_id).by_axis["race"]
    carried = load_scores(store, result.model_id, "output_attribution", result.run_id).by_axis["race"]
    sign = 1.0 if summary["output_bias"] >= 0 else -1.0
    assert reduction == pytest.approx(sign * carried, abs=1e-7)


def test_beats_random_p_by_hand():
    """Two pairs, one random seed: each pair's two values {0, 1} are exchangeable, so the
    chosen row is (0, 0) with probability 1/4, the only arrangement with T <= T_observed = -1."""
    p = metrics.beats_random_p(torch.tensor([0.0, 0.0]), torch.tensor([[1.0, 1.0]]), permutations=8000)
    assert p == pytest.approx(0.25, abs=0.02)
    assert metrics.beats_random_p(
        torch.tensor([1.0, 1.0]), torch.tensor([[0.0, 0.0]]), permutations=2000
    ) == pytest.approx(1.0)


def test_pruning_by_attribution_beats_random_on_a_planted_model(tmp_path):
    """Pruned by estimated output-bias reduction, the planted model loses its race output bias;
    random neurons of the same number per layer do not, and the evaluator says so."""
    from fairaudit.config import RunConfig
    from fairaudit.pipeline.audit import audit

    make_planted_model(tmp_path / "model")
    result = audit(
        RunConfig.model_validate(
            {
                "model": str(tmp_path / "model"),
                "suites": ["race"],
                "store": str(tmp_path / "store"),
                "report": False,
                "probe": {"plugin": "activations", "params": {"progress": False}},
                "scoring": {"scorers": ["bias", "importance", "layer_index", "output_attribution"]},
                "pruning": {
                    "out": str(tmp_path / "pruned"),
                    "selection": {"score": "output_bias_reduction", "fraction": 0.04},
                },
                "evaluators": [{"plugin": "random_baseline", "params": {"split": "probe", "seeds": 5}}],
            }
        )
    )
    found = {
        row["metric"]: row["value"]
        for row in result.measurements
        if row["evaluator"] == "random_baseline" and row["role"] == "after"
    }
    assert found["abs_output_bias_before"] > 0.05 and found["reduction"] > 0.8 and found["random_reduction"] < 0.3
    assert found["beats_random_p"] < 0.01


def test_cluster_bootstrap_resamples_templates_by_hand():
    """Two templates: one with three pairs at 0, one with one pair at 4. Resampling templates,
    the mean is 0 (both draws the first), 4 (both the second) or 1 (one of each, weighted by
    pairs): quantiles of a distribution with mass 1/4, 1/2, 1/4 there."""
    values = torch.tensor([0.0, 0.0, 0.0, 4.0])
    low, high = metrics.cluster_bootstrap_interval(values, ["t1", "t1", "t1", "t2"], resamples=4000)
    assert (low, high) == (0.0, 4.0)
    low, high = metrics.cluster_bootstrap_interval(values, ["t1", "t1", "t1", "t2"], confidence=0.4, resamples=4000)
    assert low == high == 1.0
    pair_low, pair_high = metrics.bootstrap_interval(values)
    assert pair_high < 4.0  # resampling pairs treats the three pairs of t1 as independent: a narrower interval


def test_measured_loss_change_is_the_masked_models_loss_change(llama):
    ids = llama.tokenizer("The weather was mild for the season and the market opened early on the square.")["input_ids"]
    units = [attribution.Unit("neuron", 1, 7), attribution.Unit("head", 0, 1)]
    measured = attribution.measured_loss_change(llama, ids, units, replicas=2)

    def loss() -> float:
        with torch.no_grad():
            return float(llama.model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss)

    base = loss()
    with masked(llama, Selection([torch.zeros(0, dtype=torch.long), torch.tensor([7])], [64, 64])):
        assert float(measured[0]) == pytest.approx(loss() - base, abs=1e-5)
    assert float(measured[1]) != 0.0


def test_only_biased_axes_leaves_an_unbiased_axis_alone(cli, tmp_path):
    """On a planted model, race and gender carry an output-level bias, nationality none (no
    neuron reads it): `--only-biased-axes` prunes for race and gender only and says so; asked
    for nationality alone it refuses, and writes nothing."""
    from fairaudit.config import RunConfig
    from fairaudit.pipeline.audit import audit

    make_planted_model(tmp_path / "model")
    result = audit(
        RunConfig.model_validate(
            {
                "model": str(tmp_path / "model"),
                "suites": ["race", "gender", "nationality"],
                "store": str(tmp_path / "store"),
                "report": False,
                "probe": {"plugin": "activations", "params": {"progress": False}},
                "scoring": {"scorers": ["bias", "importance", "layer_index", "output_attribution"]},
                "pruning": None,
                "evaluators": [],
            }
        )
    )
    nationality = result.summaries["nationality"]
    assert nationality["output_bias_template_low"] < 0 < nationality["output_bias_template_high"]
    common = [
        "prune",
        "--model",
        tmp_path / "model",
        "--store",
        tmp_path / "store",
        "--score",
        "output_bias_reduction",
        "--combine",
        "union",
        "--fraction",
        "0.03",
        "--only-biased-axes",
        "--json",
    ]
    pruned = cli(*common, "--axis", "race", "--axis", "gender", "--axis", "nationality", "--out", tmp_path / "pruned")
    assert pruned.exit_code == 0, pruned.output
    assert (
        "axes left out, their output-level bias interval containing 0: nationality"
        in (tmp_path / "pruned" / "README.md").read_text()
    )
    refused = cli(*common, "--axis", "nationality", "--out", tmp_path / "none")
    assert refused.exit_code == 2 and "nothing to remove" in refused.stderr and not (tmp_path / "none").exists()
