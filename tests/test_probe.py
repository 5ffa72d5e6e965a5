"""The probe: every statistic recomputed by a naive one-prompt-at-a-time reference, and
checked against optiPfair 0.4.2 where the definitions coincide."""

from __future__ import annotations

import pytest
import torch

from fairaudit.inputs.model import load_model
from fairaudit.inputs.suite import Pair, resolve_suite
from fairaudit.measurement import metrics
from fairaudit.plugins import registry

PROBE = registry().get("probe", "activations")


def run(loaded, pairs, controls=(), **params):
    params.setdefault("progress", False)
    return PROBE.run(loaded, list(pairs), list(controls), PROBE.Params(**params), "race")


def naive_pooled(loaded, text: str, component: str, position: str = "mean", suffix: int = 0) -> torch.Tensor:
    """[layers, units]: one prompt alone, full model, hooks, pooled by hand."""
    captured = []
    handles = []
    for layer in loaded.layers:
        site = loaded.adapter.sites(layer)[component]
        if site.where == "output":
            handles.append(
                site.module.register_forward_hook(
                    lambda m, a, out: captured.append(out[0] if isinstance(out, tuple) else out)
                )
            )
        else:
            handles.append(site.module.register_forward_pre_hook(lambda m, a: captured.append(a[0])))
    with torch.no_grad():
        loaded.model(**loaded.tokenizer([text], return_tensors="pt"))
    for handle in handles:
        handle.remove()
    tokens = len(loaded.tokenizer(text)["input_ids"])
    rows = []
    for hidden in captured:
        hidden = hidden.reshape(tokens, -1).double()  # [tokens, units]
        if position == "mean":
            rows.append(hidden.mean(0))
        elif position == "last":
            rows.append(hidden[-1])
        else:
            rows.append(hidden[-suffix:].mean(0) if suffix else hidden[-1])
    return torch.stack(rows)


@pytest.fixture(scope="module")
def llama(model_folder):
    return load_model(str(model_folder("llama", layers=3, hidden=48, intermediate=96)))


@pytest.fixture(scope="module")
def race_pairs():
    suite = resolve_suite("race")
    return suite.pairs()[:10], suite.control_pairs()


UNEQUAL = Pair(
    pair_id="u",
    kind="template",
    template_id="u",
    group_a="x",
    group_b="y",
    text_a="A very tall Black man walked at night . The officer thought he",
    text_b="A white man walked at night . The officer thought he",
)


@pytest.mark.parametrize("position", ["mean", "last", "aligned"])
def test_bias_equals_naive_reference_for_every_position(llama, race_pairs, position):
    pairs = [*race_pairs[0][:4], UNEQUAL]
    stats = run(llama, pairs, position=position, batch_size=4)
    tokenize = lambda text: llama.tokenizer(text)["input_ids"]  # noqa: E731
    for component in ("attention", "mlp", "neuron"):
        differences = []
        for pair in pairs:
            a, b = tokenize(pair.text_a), tokenize(pair.text_b)
            suffix = next((n for n in range(min(len(a), len(b)), -1, -1) if n == 0 or a[-n:] == b[-n:]), 0)
            differences.append(
                naive_pooled(llama, pair.text_a, component, position, suffix)
                - naive_pooled(llama, pair.text_b, component, position, suffix)
            )
        expected = torch.stack(differences).abs().mean(0)
        got = metrics.bias(stats.components[component], stats.n_pairs)
        assert torch.allclose(got, expected, atol=1e-5), component
    assert stats.n_pairs == 5 and stats.unequal_length_pairs == 1, "the unequal pair is kept, and counted"


def test_results_do_not_depend_on_batch_size_or_padding_side(llama, race_pairs):
    pairs, controls = race_pairs
    reference = run(llama, pairs, controls, batch_size=2)
    for batch_size, side in ((6, "right"), (20, "left"), (8, "left")):
        other = run(llama, pairs, controls, batch_size=batch_size, padding_side=side)
        for name, component in reference.components.items():
            for field in ("abs_diff_sum", "diff_sum", "activation_sq_sum", "control_abs_diff_sum"):
                assert torch.allclose(
                    getattr(component, field), getattr(other.components[name], field), atol=1e-4, rtol=1e-4
                )
        assert torch.allclose(reference.optipfair_terms, other.optipfair_terms, atol=1e-5, equal_nan=True)


def test_memory_is_independent_of_the_number_of_pairs(llama, race_pairs):
    few = run(llama, race_pairs[0][:2])
    many = run(llama, race_pairs[0])
    for name in few.components:
        assert few.components[name].abs_diff_sum.shape == many.components[name].abs_diff_sum.shape
    assert many.components["neuron"].abs_diff_sum.shape == (3, 96)


def test_neuron_bias_equals_optipfair_analyze_neuron_bias(llama, race_pairs):
    optipfair = pytest.importorskip("optipfair.bias.activations")
    pairs = [*race_pairs[0], UNEQUAL]
    reference = optipfair.analyze_neuron_bias(
        llama.model, llama.tokenizer, [(p.text_a, p.text_b) for p in pairs], show_progress=False
    )
    stats = run(llama, pairs, components=["gate", "up", "neuron"], batch_size=6)
    for layer in range(3):
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj")):
            expected = reference[f"{theirs}_layer_{layer}"].double()
            assert torch.allclose(metrics.bias(stats.components[ours], stats.n_pairs)[layer], expected, atol=1e-5)


def test_optipfair_index_equals_calculate_bias_metrics(llama):
    activations = pytest.importorskip("optipfair.bias.activations")
    bias_metrics = pytest.importorskip("optipfair.bias.metrics")
    pair = resolve_suite("race").pairs()[0]
    act_a, act_b = activations.get_activation_pairs(llama.model, llama.tokenizer, pair.text_a, pair.text_b)
    expected = bias_metrics.calculate_bias_metrics(act_a, act_b)["overall_metrics"]["mean_difference"]
    stats = run(llama, [pair, UNEQUAL])
    value, used = metrics.optipfair_index(stats)
    assert used == 1 and value == pytest.approx(expected, abs=1e-6)
    assert len(stats.optipfair_keys) == 6 * 3


def test_bias_index_and_controls_by_hand(llama, race_pairs):
    pairs, controls = race_pairs[0][:3], race_pairs[1][:2]
    stats = run(llama, pairs, controls)
    per_pair = []
    for pair in pairs:
        layer_means = [
            (naive_pooled(llama, pair.text_a, c) - naive_pooled(llama, pair.text_b, c)).abs().mean(1)
            for c in ("attention", "mlp")
        ]
        per_pair.append(torch.stack(layer_means).mean())
    assert metrics.bias_index(stats) == pytest.approx(float(torch.stack(per_pair).mean()), abs=1e-6)
    floor = torch.stack(
        [(naive_pooled(llama, c.text_a, "neuron") - naive_pooled(llama, c.text_b, "neuron")).abs() for c in controls]
    ).mean(0)
    assert torch.allclose(metrics.noise_floor(stats.components["neuron"], stats.n_controls), floor, atol=1e-5)
    sides = torch.stack([naive_pooled(llama, text, "neuron") for p in pairs for text in (p.text_a, p.text_b)])
    assert torch.allclose(
        metrics.activation_spread(stats.components["neuron"], 2 * len(pairs)), sides.std(0, unbiased=False), atol=1e-5
    )


@pytest.mark.parametrize("family", ["gpt2", "opt", "bert", "phi3", "gemma3"])
def test_other_families_match_the_naive_reference(model_folder, race_pairs, family):
    loaded = load_model(str(model_folder(family)))
    pairs = race_pairs[0][:3]
    stats = run(loaded, pairs, batch_size=4, padding_side="left")
    for component in ("attention", "mlp", "neuron"):
        expected = (
            torch.stack(
                [naive_pooled(loaded, p.text_a, component) - naive_pooled(loaded, p.text_b, component) for p in pairs]
            )
            .abs()
            .mean(0)
        )
        assert torch.allclose(metrics.bias(stats.components[component], 3), expected, atol=1e-5), component


def test_component_missing_for_family_is_a_config_error(model_folder):
    from fairaudit.errors import ConfigError

    loaded = load_model(str(model_folder("gpt2")))
    with pytest.raises(ConfigError, match="'gate'.*not available for the 'gpt2' adapter"):
        run(loaded, resolve_suite("race").pairs()[:1], components=["gate"])
