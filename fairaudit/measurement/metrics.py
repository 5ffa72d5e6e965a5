"""Metric definitions: each score of the audit is defined once, here.

Shapes: per-neuron scores are `[layers, units]`, per-layer scores `[layers]`.
Notation (see `fairaudit.measurement.probe`): for pair p, d_p = h(a_p) - h(b_p), h pooled over tokens.
README.md ("Scores") gives each definition in words, with what it does not show.
"""

from __future__ import annotations

import math

from fairaudit.inputs.architecture import MlpWeights
from fairaudit.inputs.suite import Pair
from fairaudit.lazy import numpy as np
from fairaudit.lazy import scipy_stats, torch
from fairaudit.measurement.probe import ActivationStats, ComponentStats

EPSILON = 1e-8


def bias(component: ComponentStats, n_pairs: int) -> torch.Tensor:
    """mean_p |d_p|: optiPfair's `analyze_neuron_bias` with `position: mean`."""
    return component.abs_diff_sum / max(n_pairs, 1)


def signed_bias(component: ComponentStats, n_pairs: int) -> torch.Tensor:
    """mean_p d_p: positive when the unit is more active for group a than for group b."""
    return component.diff_sum / max(n_pairs, 1)


def activation_spread(component: ComponentStats, n_prompts: int) -> torch.Tensor:
    """Standard deviation of the pooled activation over every prompt (both sides)."""
    mean = component.activation_sum / max(n_prompts, 1)
    variance = (component.activation_sq_sum / max(n_prompts, 1) - mean.square()).clamp(min=0)
    return variance.sqrt()


def scaled_bias(component: ComponentStats, n_pairs: int) -> torch.Tensor:
    """mean_p |d_p| / spread: scale-free, so large-magnitude units do not win by size."""
    return bias(component, n_pairs) / (activation_spread(component, 2 * n_pairs) + EPSILON)


def noise_floor(component: ComponentStats, n_controls: int) -> torch.Tensor:
    """mean over control pairs of |d|: the difference a non-demographic word makes."""
    if n_controls == 0:
        return torch.full_like(component.abs_diff_sum, float("nan"))
    return component.control_abs_diff_sum / n_controls


def p_values(component: ComponentStats, n_pairs: int, n_controls: int) -> torch.Tensor:
    """One-sided Welch t-test per unit: is mean |d| over the axis' pairs larger than over
    the control pairs? NaN when there are fewer than two pairs or two controls."""
    if n_pairs < 2 or n_controls < 2:
        return torch.full_like(component.abs_diff_sum, float("nan"))
    mean_pairs = component.abs_diff_sum / n_pairs
    mean_controls = component.control_abs_diff_sum / n_controls
    var_pairs = ((component.abs_diff_sq_sum - n_pairs * mean_pairs.square()) / (n_pairs - 1)).clamp(min=0)
    var_controls = ((component.control_abs_diff_sq_sum - n_controls * mean_controls.square()) / (n_controls - 1)).clamp(
        min=0
    )
    se_pairs, se_controls = var_pairs / n_pairs, var_controls / n_controls
    standard_error = (se_pairs + se_controls).sqrt().clamp(min=1e-30)
    t_statistic = (mean_pairs - mean_controls) / standard_error
    dof = (se_pairs + se_controls).square() / (
        se_pairs.square() / (n_pairs - 1) + se_controls.square() / (n_controls - 1)
    ).clamp(min=1e-300)
    p = scipy_stats.t.sf(t_statistic.numpy(), dof.clamp(min=1).numpy())
    return torch.from_numpy(np.asarray(p, dtype=np.float64))


def benjamini_hochberg(p: torch.Tensor) -> torch.Tensor:
    """Benjamini-Hochberg q-values (false discovery rate), over every entry of `p`; NaN kept."""
    flat = p.flatten().double()
    valid = ~torch.isnan(flat)
    q = torch.full_like(flat, float("nan"))
    values = flat[valid]
    if values.numel():
        order = torch.argsort(values)
        ranked = values[order] * values.numel() / torch.arange(1, values.numel() + 1, dtype=torch.float64)
        ranked = torch.flip(torch.cummin(torch.flip(ranked, [0]), 0).values, [0]).clamp(max=1.0)
        adjusted = torch.empty_like(values)
        adjusted[order] = ranked
        q[valid] = adjusted
    return q.reshape(p.shape)


# --- importance (weights only; higher = more important) -----------------------------


def importance_ppm(weights: MlpWeights) -> torch.Tensor:
    """optiPfair's code ("MAW"/PPM): sum over input rows of max_j W[i,j] + |min_j W[i,j]|."""
    return torch.stack([row.max(dim=1).values + row.min(dim=1).values.abs() for row in weights.rows]).sum(dim=0)


def importance_maw(weights: MlpWeights) -> torch.Tensor:
    """The write-up's formula: sum over input rows of max_j |W[i,j]|."""
    return torch.stack([row.abs().max(dim=1).values for row in weights.rows]).sum(dim=0)


def importance_vow(weights: MlpWeights) -> torch.Tensor:
    """Sum over input rows of the row's variance (unbiased, as torch.var)."""
    return torch.stack([row.var(dim=1) for row in weights.rows]).sum(dim=0)


def importance_pon(weights: MlpWeights) -> torch.Tensor:
    """Product over input rows of the row's L1 norm."""
    return torch.stack([row.abs().sum(dim=1) for row in weights.rows]).prod(dim=0)


def importance_l2(weights: MlpWeights) -> torch.Tensor:
    """Sum over input rows of the row's L2 norm."""
    return sum(row.norm(p=2, dim=1) for row in weights.rows)


IMPORTANCE = {
    "ppm": importance_ppm,
    "maw": importance_maw,
    "vow": importance_vow,
    "pon": importance_pon,
    "l2": importance_l2,
}


def minmax(scores: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] along the last axis (within a layer), as optiPfair: constant -> 0."""
    low = scores.min(dim=-1, keepdim=True).values
    high = scores.max(dim=-1, keepdim=True).values
    span = high - low
    normalised = (scores - low) / (span + EPSILON)
    return torch.where(span <= 1e-8 + 1e-5 * low.abs(), torch.zeros_like(scores), normalised)


def hybrid(bias_scores: torch.Tensor, importance: torch.Tensor, weight: float) -> torch.Tensor:
    """w * norm(bias) + (1 - w) * (1 - norm(importance)), min-max within each layer.
    High = biased and unimportant: a pruning candidate."""
    return weight * minmax(bias_scores) + (1 - weight) * (1 - minmax(importance))


# --- per-layer and single-number indices ---------------------------------------------

INDEX_COMPONENTS = ("attention", "mlp")


def layer_divergence(stats: ActivationStats, component: str) -> torch.Tensor:
    """[layers]: mean over pairs of the mean over units of |d_p| (pooled as configured)."""
    return stats.components[component].pair_divergence.double().mean(dim=0)


def pair_bias_index(stats: ActivationStats) -> torch.Tensor:
    """[pairs]: for each pair, the mean over layers and over attention and MLP outputs of
    the mean |d_p| over units. Its mean over pairs is fairaudit's bias index."""
    return index_of_divergence(
        {name: stats.components[name].pair_divergence for name in INDEX_COMPONENTS if name in stats.components}
    )


def index_of_divergence(divergence: dict[str, torch.Tensor]) -> torch.Tensor:
    """`pair_bias_index` from each component's `[pairs, layers]` mean |d_p| over units."""
    return torch.stack([value.double() for value in divergence.values()], dim=2).mean(dim=(1, 2))


def bias_index(stats: ActivationStats) -> float:
    """fairaudit's single bias index: mean over pairs of `pair_bias_index`."""
    return float(pair_bias_index(stats).mean())


def optipfair_index(stats: ActivationStats) -> tuple[float, int]:
    """optiPfair's `calculate_bias_metrics(...)["overall_metrics"]["mean_difference"]`,
    averaged over the pairs whose prompts have equal token counts; returns (value, pairs used).

    Per pair: the unweighted mean over every hooked (component, layer) of the mean over
    token positions (BOS included) and units of |h_a(t) - h_b(t)|."""
    terms = stats.optipfair_terms
    if terms is None or terms.numel() == 0:
        return float("nan"), 0
    usable = ~torch.isnan(terms).any(dim=1)
    if not bool(usable.any()):
        return float("nan"), 0
    return float(terms[usable].mean(dim=1).mean()), int(usable.sum())


def bootstrap_interval(
    values: torch.Tensor, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of the finite `values` (resampling pairs)."""
    values = values[torch.isfinite(values)].double()
    if values.numel() < 2:
        return float("nan"), float("nan")
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, values.numel(), (resamples, values.numel()), generator=generator)
    means = values[draws].mean(dim=1)
    tail = (1 - confidence) / 2
    return float(torch.quantile(means, tail)), float(torch.quantile(means, 1 - tail))


def cluster_bootstrap_interval(
    values: torch.Tensor, clusters: list[str], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`, resampling whole clusters (the
    pairs of one template) with replacement: pairs made from one template share its wording and
    are not independent, so this interval is the honest one for a claim about templates."""
    keep = torch.isfinite(values)
    names = [cluster for cluster, kept in zip(clusters, keep.tolist()) if kept]
    keys = sorted(set(names))
    if len(keys) < 2:
        return float("nan"), float("nan")
    index = torch.tensor([keys.index(name) for name in names])
    sums = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, index, values[keep].double())
    counts = torch.zeros(len(keys), dtype=torch.float64).index_add_(
        0, index, torch.ones(len(names), dtype=torch.float64)
    )
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, len(keys), (resamples, len(keys)), generator=generator)
    means = sums[draws].sum(dim=1) / counts[draws].sum(dim=1)
    tail = (1 - confidence) / 2
    return float(torch.quantile(means, tail)), float(torch.quantile(means, 1 - tail))


def detectable_effect(low: float, high: float, power: float = 0.8, confidence: float = 0.95) -> float:
    """The smallest true mean that a test whose 95% interval is [low, high] would find different
    from 0 with probability `power` (normal approximation: the interval's standard error times
    z(1 - alpha/2) + z(power), 2.80 for 95% and 80%). NaN without an interval."""
    from statistics import NormalDist

    if not (math.isfinite(low) and math.isfinite(high)):
        return math.nan
    z = NormalDist().inv_cdf
    error = (high - low) / (2 * z(0.5 + confidence / 2))
    return (z(0.5 + confidence / 2) + z(power)) * error


def magnitude_change_interval(
    before: torch.Tensor, after: torch.Tensor, clusters: list[str], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """|mean after| - |mean before| of paired per-pair values (positive: moved away from zero) and
    its 95% percentile bootstrap interval, resampling whole clusters (templates) of pairs together."""
    keys = sorted(set(clusters))
    change = abs(float(after.double().mean())) - abs(float(before.double().mean()))
    if len(keys) < 2:
        return change, float("nan"), float("nan")
    index = torch.tensor([keys.index(name) for name in clusters])
    counts = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, index, torch.ones(len(clusters)).double())
    sums = [torch.zeros(len(keys), dtype=torch.float64).index_add_(0, index, v.double()) for v in (before, after)]
    draws = torch.randint(0, len(keys), (resamples, len(keys)), generator=torch.Generator().manual_seed(seed))
    total = counts[draws].sum(dim=1)
    magnitude = (sums[1][draws].sum(dim=1) / total).abs() - (sums[0][draws].sum(dim=1) / total).abs()
    return change, float(torch.quantile(magnitude, 0.025)), float(torch.quantile(magnitude, 0.975))


# --- output-level bias ---------------------------------------------------------------


def first_difference(first: list, second: list) -> tuple:
    """The first items where two sequences differ ((None, x) when one is a prefix of the other)."""
    for a, b in zip(first, second):
        if a != b:
            return a, b
    return (
        first[len(second)] if len(first) > len(second) else None,
        second[len(first)] if len(second) > len(first) else None,
    )


def output_bias_terms(pair: Pair) -> list[tuple[str, str, float]]:
    """The pair's output-level bias m as (context, continuation, sign) terms: m is the signed
    sum of the terms' summed continuation log-probabilities (natural log), positive when the
    model prefers the stereotype-consistent reading.

    - A template pair with `negative` and `neutral` continuations: m = [log p(neg | a) -
      log p(neg | b)] - [log p(neu | a) - log p(neu | b)], the `stereotype_preference` of the
      output_bias evaluator (group a is the one the negative continuation stereotypes).
    - A statement pair (the group named after a negative or a neutral context c; t_a and t_b the
      sentence from the group on): m = [log p(t_a | c_neg) - log p(t_b | c_neg)] - [log p(t_a |
      c_neu) - log p(t_b | c_neu)], the `statement_preference` of the output_bias evaluator.
    - A sentence pair (CrowS-Pairs, StereoSet; `text_a` the more stereotyping sentence):
      m = log p(text_a) - log p(text_b), each with an empty context.
    - Any other pair has no output-level quantity: []."""
    if pair.kind == "sentence":
        return [("", pair.text_a, 1.0), ("", pair.text_b, -1.0)]
    if pair.kind == "statement":
        negative, neutral = pair.contexts["negative"], pair.contexts["neutral"]
        tail_a, tail_b = pair.text_a[len(negative) :], pair.text_b[len(negative) :]
        return [(negative, tail_a, 1.0), (negative, tail_b, -1.0), (neutral, tail_a, -1.0), (neutral, tail_b, 1.0)]
    if pair.kind == "template" and {"negative", "neutral"} <= set(pair.continuations):
        negative, neutral = pair.continuations["negative"], pair.continuations["neutral"]
        return [
            (pair.text_a, negative, 1.0),
            (pair.text_b, negative, -1.0),
            (pair.text_a, neutral, -1.0),
            (pair.text_b, neutral, 1.0),
        ]
    return []


def spearman(first, second) -> float:
    """Spearman rank correlation of two equal-length vectors (tensors or arrays; NaN pairs left
    out; NaN, without scipy's ConstantInputWarning, when fewer than three remain or either side
    is constant)."""
    first, second = torch.as_tensor(first), torch.as_tensor(second)
    keep = torch.isfinite(first) & torch.isfinite(second)
    if int(keep.sum()) < 3:
        return float("nan")
    a, b = first[keep].double().numpy(), second[keep].double().numpy()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(scipy_stats.spearmanr(a, b).statistic)


def beats_random_p(chosen: torch.Tensor, random: torch.Tensor, permutations: int = 2000, seed: int = 0) -> float:
    """One-sided permutation p-value that a chosen selection leaves less output bias than
    random selections of the same size. `chosen`: `[pairs]` m_p after pruning; `random`:
    `[seeds, pairs]` m_p after each random selection. Statistic T = |mean_p chosen| - mean over
    seeds of |mean_p random|; under the null the seeds + 1 values of each pair are
    exchangeable, so each permutation shuffles every pair's values among the selections.
    p = (1 + #{T_perm <= T}) / (1 + permutations): small when the chosen one beats chance."""
    pooled = torch.cat([chosen.double()[None], random.double()])  # [selections, pairs]

    def statistic(matrix: torch.Tensor) -> torch.Tensor:  # matrix [..., selections, pairs]
        means = matrix.mean(dim=-1).abs()
        return means[..., 0] - means[..., 1:].mean(dim=-1)

    observed = float(statistic(pooled))
    generator = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand((permutations, *pooled.shape), generator=generator), dim=1)
    shuffled = torch.gather(pooled.expand(permutations, -1, -1), 1, order)
    return float((1 + (statistic(shuffled) <= observed + 1e-12).sum()) / (1 + permutations))
