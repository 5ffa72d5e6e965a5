"""Diagnosis views: where the bias appears and how it grows, token by token and layer by layer.

For one pair: a per-token x per-layer divergence map of the attention and MLP outputs, and
a PCA of both prompts' token representations at one layer. For an axis: the "emergence"
summary (first layer where attention divergence exceeds the control pairs' noise floor, the
layer where MLP divergence peaks, and the amplification from first to last layer). Capture
goes through `fairaudit.capture`, the probe's own hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fairaudit.capture import token_states
from fairaudit.metrics import bootstrap_interval
from fairaudit.model import LoadedModel
from fairaudit.probe import ActivationStats
from fairaudit.suite import Pair

VIEW_COMPONENTS = ("attention", "mlp")


@dataclass
class PairView:
    """The diagnosis of one pair. `heat[component]` is `[layers, tokens of prompt a]`;
    `pca[component]` is `[tokens a + tokens b - 2 * pca_from, 2]` at `layer`: the first
    `pca_from` tokens of each prompt are left out, because the first token (BOS or the first
    word, the attention sink) alone can take most of the variance and squash every other point.
    Tokens are their decoded text (no byte-level markers such as 'Ġ')."""

    pair: Pair
    layer: int
    tokens_a: list[str]
    tokens_b: list[str]
    substituted_a: list[bool]
    substituted_b: list[bool]
    heat: dict[str, torch.Tensor] = field(default_factory=dict)
    pca: dict[str, torch.Tensor] = field(default_factory=dict)
    explained: dict[str, tuple[float, float]] = field(default_factory=dict)
    most_moved: dict[str, str] = field(default_factory=dict)
    pca_from: int = 0


def shared_ends(ids_a: list[int], ids_b: list[int]) -> tuple[int, int]:
    """Lengths of the common prefix and common suffix of two token sequences (not overlapping)."""
    prefix = 0
    while prefix < min(len(ids_a), len(ids_b)) and ids_a[prefix] == ids_b[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(ids_a), len(ids_b)) - prefix and ids_a[-1 - suffix] == ids_b[-1 - suffix]:
        suffix += 1
    return prefix, suffix


def counterpart(position: int, length_a: int, length_b: int, prefix: int, suffix: int) -> list[int]:
    """Positions of prompt b that position `position` of prompt a is compared with: the same
    position in the shared prefix, the same distance from the end in the shared suffix, and
    every substituted position of b for a substituted position of a."""
    if position < prefix:
        return [position]
    if position >= length_a - suffix:
        return [length_b - (length_a - position)]
    middle = list(range(prefix, length_b - suffix))
    return middle or [max(prefix - 1, 0)]


def pca_2d(points: torch.Tensor) -> tuple[torch.Tensor, tuple[float, float]]:
    """First two principal components of `points` `[n, units]` (centred, by SVD): the
    coordinates `[n, 2]` and the share of variance each explains. Signs follow the SVD."""
    centred = points.double() - points.double().mean(dim=0, keepdim=True)
    left, singular, _ = torch.linalg.svd(centred, full_matrices=False)
    total = float(singular.square().sum()) or 1.0
    components = min(2, singular.numel())
    coordinates = torch.zeros(points.shape[0], 2, dtype=torch.float64)
    coordinates[:, :components] = left[:, :components] * singular[:components]
    shares = [float(singular[i].square()) / total if i < components else 0.0 for i in range(2)]
    return coordinates, (shares[0], shares[1])


def token_text(tokenizer, token_id: int) -> str:
    """What a reader should see for one token: its decoded text, trimmed; a whitespace-only
    token as a visible mark; a token that decodes to part of a character as its raw form."""
    text = tokenizer.decode([token_id])
    if "\ufffd" in text:
        return tokenizer.convert_ids_to_tokens(token_id)
    return text.strip() or {"\n": "⏎", "\t": "⇥"}.get(text[:1], "␣")


def diagnose_pair(loaded: LoadedModel, pair: Pair, layer: int) -> PairView:
    tokenizer = loaded.tokenizer
    ids_a, ids_b = tokenizer(pair.text_a)["input_ids"], tokenizer(pair.text_b)["input_ids"]
    prefix, suffix = shared_ends(ids_a, ids_b)
    states_a = token_states(loaded, pair.text_a, list(VIEW_COMPONENTS))
    states_b = token_states(loaded, pair.text_b, list(VIEW_COMPONENTS))
    view = PairView(pair=pair, layer=layer,
                    tokens_a=[token_text(tokenizer, i) for i in ids_a], tokens_b=[token_text(tokenizer, i) for i in ids_b],
                    substituted_a=[prefix <= t < len(ids_a) - suffix for t in range(len(ids_a))],
                    substituted_b=[prefix <= t < len(ids_b) - suffix for t in range(len(ids_b))],
                    pca_from=1 if min(len(ids_a), len(ids_b)) > 2 else 0)
    skip = view.pca_from
    for component in VIEW_COMPONENTS:
        a, b = states_a[component], states_b[component]  # [layers, tokens, units]
        columns = []
        for position in range(len(ids_a)):
            partner = b[:, counterpart(position, len(ids_a), len(ids_b), prefix, suffix)].mean(dim=1)
            columns.append((a[:, position] - partner).abs().mean(dim=-1))
        view.heat[component] = torch.stack(columns, dim=1)  # [layers, tokens a]
        coordinates, shares = pca_2d(torch.cat([a[layer, skip:], b[layer, skip:]]))
        view.pca[component] = coordinates
        view.explained[component] = shares
        moves = [float((a[layer, t] - b[layer, counterpart(t, len(ids_a), len(ids_b), prefix, suffix)].mean(dim=0)).norm())
                 for t in range(len(ids_a))]
        view.most_moved[component] = view.tokens_a[max(range(len(moves)), key=moves.__getitem__)]
    return view


@dataclass
class Emergence:
    """How an axis' divergence appears and grows through the layers."""

    axis: str
    attention_onset: int | None  # first layer whose attention divergence exceeds the control noise floor
    mlp_peak: int  # layer of the largest MLP divergence
    amplification: float  # MLP divergence at the last layer / at the first layer
    amplification_low: float
    amplification_high: float
    attention_by_layer: list[float]
    mlp_by_layer: list[float]
    attention_floor: list[float]


def emergence(stats: ActivationStats, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> Emergence:
    """From a probe run with control pairs. Noise floor per layer: the mean over control pairs
    of their attention divergence; amplification interval: percentile bootstrap over pairs."""
    attention = stats.components["attention"].pair_divergence.double()  # [pairs, layers]
    mlp = stats.components["mlp"].pair_divergence.double()
    floor = stats.components["attention"].control_divergence.double().mean(dim=0) if stats.n_controls else torch.zeros(attention.shape[1])
    attention_mean, mlp_mean = attention.mean(dim=0), mlp.mean(dim=0)
    above = [layer for layer in range(attention.shape[1]) if attention_mean[layer] > floor[layer]]
    ratios = mlp[:, -1] / mlp[:, 0].clamp(min=1e-12)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, mlp.shape[0], (resamples, mlp.shape[0]), generator=generator)
    resampled = mlp[draws][:, :, -1].mean(dim=1) / mlp[draws][:, :, 0].mean(dim=1).clamp(min=1e-12)
    tail = (1 - confidence) / 2
    low, high = (float(torch.quantile(resampled, tail)), float(torch.quantile(resampled, 1 - tail))) if mlp.shape[0] > 1 else bootstrap_interval(ratios)
    return Emergence(axis=stats.axis, attention_onset=above[0] if above else None, mlp_peak=int(mlp_mean.argmax()),
                     amplification=float(mlp_mean[-1] / mlp_mean[0].clamp(min=1e-12)), amplification_low=low, amplification_high=high,
                     attention_by_layer=attention_mean.tolist(), mlp_by_layer=mlp_mean.tolist(), attention_floor=floor.tolist())


def render_view(view: PairView) -> dict[str, str]:
    """SVG figures of a pair view: file stem -> SVG text. Token text is escaped by `fairaudit.svg`."""
    from fairaudit.store import safe_name
    from fairaudit.svg import matrix_heatmap, scatter

    stem = safe_name(view.pair.pair_id.replace(":", "_"), 80)
    figures = {}
    for component in VIEW_COMPONENTS:
        heat = view.heat[component]
        peak_layer, peak_token = divmod(int(heat.argmax()), heat.shape[1])
        figures[f"{stem}-{component}-heatmap"] = matrix_heatmap(
            f"{view.pair.pair_id}: {component} output divergence per token and layer",
            [f"layer {i}" for i in range(heat.shape[0])], view.tokens_a, heat.tolist(), view.substituted_a,
            caption=f"Largest divergence: token '{view.tokens_a[peak_token]}' at layer {peak_layer}. "
                    f"Compared: {view.pair.text_a!r} vs {view.pair.text_b!r}.",
            x_label="token of prompt a (substituted words underlined and bold); darker = larger divergence", y_label="layer",
            scale_label="mean |difference|:")
        shares, skip = view.explained[component], view.pca_from
        left_out = " The first token of each prompt is left out (it alone can take most of the variance)." if skip else ""
        figures[f"{stem}-{component}-pca-layer{view.layer}"] = scatter(
            f"{view.pair.pair_id}: PCA of {component} outputs at layer {view.layer}",
            [tuple(row) for row in view.pca[component].tolist()], view.tokens_a[skip:] + view.tokens_b[skip:],
            [f"a: {view.pair.group_a}"] * (len(view.tokens_a) - skip) + [f"b: {view.pair.group_b}"] * (len(view.tokens_b) - skip),
            view.substituted_a[skip:] + view.substituted_b[skip:],
            x_label=f"PC1 ({shares[0]:.0%} of variance)", y_label=f"PC2 ({shares[1]:.0%})",
            caption=f"The token that moves most between the two prompts: '{view.most_moved[component]}'. Substituted words ringed.{left_out}")
    return figures
