"""Every score recomputed by hand (or by scipy / optiPfair) on a small case."""

from __future__ import annotations

import pytest
import torch
from scipy import stats as scipy_stats

from fairaudit.inputs.architecture import MlpWeights
from fairaudit.measurement import metrics
from fairaudit.measurement.probe import ComponentStats


def component_from(pair_diffs: torch.Tensor, control_diffs: torch.Tensor, activations: torch.Tensor) -> ComponentStats:
    """ComponentStats as the probe would accumulate them from per-pair differences [P, 1, U]."""
    return ComponentStats(
        abs_diff_sum=pair_diffs.abs().sum(0),
        abs_diff_sq_sum=pair_diffs.square().sum(0),
        diff_sum=pair_diffs.sum(0),
        activation_sum=activations.sum(0),
        activation_sq_sum=activations.square().sum(0),
        control_abs_diff_sum=control_diffs.abs().sum(0),
        control_abs_diff_sq_sum=control_diffs.square().sum(0),
        pair_divergence=pair_diffs.abs().mean(2).float(),
        control_divergence=control_diffs.abs().mean(2).float(),
    )


@pytest.fixture
def small():
    generator = torch.Generator().manual_seed(3)
    pairs = torch.randn(12, 1, 5, generator=generator, dtype=torch.float64) + torch.tensor(
        [0, 0, 1.5, -2.0, 0], dtype=torch.float64
    )
    controls = torch.randn(6, 1, 5, generator=generator, dtype=torch.float64) * 0.3
    activations = torch.randn(24, 1, 5, generator=generator, dtype=torch.float64)
    return pairs, controls, activations, component_from(pairs, controls, activations)


def test_bias_signed_spread_scaled_floor(small):
    pairs, controls, activations, component = small
    assert torch.allclose(metrics.bias(component, 12), pairs.abs().mean(0))
    assert torch.allclose(metrics.signed_bias(component, 12), pairs.mean(0))
    assert torch.allclose(metrics.activation_spread(component, 24), activations.std(0, unbiased=False))
    assert torch.allclose(
        metrics.scaled_bias(component, 12), pairs.abs().mean(0) / (activations.std(0, unbiased=False) + 1e-8)
    )
    assert torch.allclose(metrics.noise_floor(component, 6), controls.abs().mean(0))


def test_p_values_equal_scipy_welch_one_sided(small):
    pairs, controls, _, component = small
    p = metrics.p_values(component, 12, 6)
    for unit in range(5):
        expected = scipy_stats.ttest_ind(
            pairs[:, 0, unit].abs().numpy(), controls[:, 0, unit].abs().numpy(), equal_var=False, alternative="greater"
        ).pvalue
        assert float(p[0, unit]) == pytest.approx(expected, rel=1e-6)
    assert float(p[0, 3]) < 0.001 and float(p[0, 2]) < 0.01, "the shifted units are significant"
    assert torch.isnan(metrics.p_values(component, 12, 1)).all(), "one control is too few for a test"


def test_benjamini_hochberg_by_hand():
    q = metrics.benjamini_hochberg(torch.tensor([[0.01, 0.04], [0.03, 0.5]], dtype=torch.float64))
    # ranked p * m / rank = 0.04, 0.06, 0.0533, 0.5; then the running minimum from the top: 0.06 -> 0.0533
    expected = torch.tensor([[0.04, 0.04 * 4 / 3], [0.04 * 4 / 3, 0.5]], dtype=torch.float64)
    assert torch.allclose(q, expected)
    with_nan = metrics.benjamini_hochberg(torch.tensor([0.2, float("nan")], dtype=torch.float64))
    assert float(with_nan[0]) == pytest.approx(0.2) and torch.isnan(with_nan[1])


def test_importance_definitions_by_hand():
    gate = torch.tensor([[1.0, -3.0, 2.0], [0.5, 0.5, -0.5]])
    up = torch.tensor([[-1.0, 0.0, 4.0], [2.0, -2.0, 0.0]])
    weights = MlpWeights(rows=(gate, up), down=torch.zeros(3, 2))
    assert metrics.importance_ppm(weights).tolist() == [(2 + 3) + (4 + 1), (0.5 + 0.5) + (2 + 2)]
    assert metrics.importance_maw(weights).tolist() == [3 + 4, 0.5 + 2]
    assert metrics.importance_pon(weights).tolist() == [6 * 5, 1.5 * 4]
    assert torch.allclose(metrics.importance_l2(weights), gate.norm(dim=1) + up.norm(dim=1))
    assert torch.allclose(metrics.importance_vow(weights), gate.var(dim=1) + up.var(dim=1))


def test_importance_equals_optipfair_functions():
    mlp_glu = pytest.importorskip("optipfair.pruning.mlp_glu")
    gate, up = torch.randn(16, 8), torch.randn(16, 8)
    weights = MlpWeights(rows=(gate, up), down=torch.zeros(8, 16))
    for ours, theirs in (("ppm", "maw"), ("vow", "vow"), ("pon", "pon"), ("l2", "l2")):
        expected = getattr(mlp_glu, f"compute_neuron_pair_importance_{theirs}")(gate, up)
        assert torch.allclose(metrics.IMPORTANCE[ours](weights), expected), ours


def test_hybrid_equals_optipfair_fairness_pruning_scores(model_folder):
    activations = pytest.importorskip("optipfair.bias.activations")
    from fairaudit.inputs.model import load_model

    loaded = load_model(str(model_folder("llama")))
    generator = torch.Generator().manual_seed(0)
    bias_scores = {
        f"{kind}_layer_{layer}": torch.rand(64, generator=generator)
        for layer in range(2)
        for kind in ("gate_proj", "up_proj")
    }
    expected = activations.compute_fairness_pruning_scores(loaded.model, bias_scores, bias_weight=0.8)
    for layer in range(2):
        bias_mean = (bias_scores[f"gate_proj_layer_{layer}"] + bias_scores[f"up_proj_layer_{layer}"]) / 2
        importance = metrics.importance_ppm(loaded.adapter.mlp_weights(loaded.layers[layer]))
        assert torch.allclose(metrics.hybrid(bias_mean, importance, 0.8), expected[layer], atol=1e-6)


def test_hybrid_by_hand_and_minmax_of_a_constant():
    bias_scores = torch.tensor([[0.0, 1.0, 2.0]])
    importance = torch.tensor([[10.0, 30.0, 20.0]])
    assert torch.allclose(metrics.hybrid(bias_scores, importance, 0.5), torch.tensor([[0.5, 0.25, 0.75]]), atol=1e-6)
    assert metrics.minmax(torch.tensor([[2.0, 2.0, 2.0]])).tolist() == [[0.0, 0.0, 0.0]]


def test_bootstrap_interval_brackets_the_mean():
    values = torch.arange(100, dtype=torch.float64)
    low, high = metrics.bootstrap_interval(values, 0.95, 2000, seed=1)
    assert low < 49.5 < high and 40 < low and high < 60
    assert metrics.bootstrap_interval(torch.full((10,), 3.0)) == (3.0, 3.0)
    assert all(value != value for value in metrics.bootstrap_interval(torch.tensor([1.0])))


def test_the_detectable_effect_by_hand():
    """An interval [-0.1, 0.3] has a standard error of 0.2 / 1.96 = 0.10204; 80% power at the 5%
    level needs a true mean of (1.95996 + 0.84162) x 0.10204 = 0.28588."""
    assert metrics.detectable_effect(-0.1, 0.3) == pytest.approx(0.28588, abs=1e-5)
    assert metrics.detectable_effect(float("nan"), 0.3) != metrics.detectable_effect(float("nan"), 0.3)  # NaN
