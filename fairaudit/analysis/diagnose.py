"""Diagnosis views: where the bias appears and how it grows, token by token and layer by layer.

For one pair: a per-token x per-layer divergence map of the attention and MLP outputs, and
a PCA of both prompts' token representations at one layer. For an axis: the "emergence"
summary (first layer where attention divergence exceeds the control pairs' noise floor, the
layer where MLP divergence peaks, and the amplification from first to last layer). Capture
goes through `fairaudit.measurement.capture`, the probe's own hooks.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairaudit.errors import FairauditError
from fairaudit.inputs.model import LoadedModel
from fairaudit.inputs.suite import Pair
from fairaudit.lazy import torch
from fairaudit.measurement.capture import token_states
from fairaudit.measurement.metrics import bootstrap_interval
from fairaudit.measurement.probe import ActivationStats

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
    view = PairView(
        pair=pair,
        layer=layer,
        tokens_a=[token_text(tokenizer, i) for i in ids_a],
        tokens_b=[token_text(tokenizer, i) for i in ids_b],
        substituted_a=[prefix <= t < len(ids_a) - suffix for t in range(len(ids_a))],
        substituted_b=[prefix <= t < len(ids_b) - suffix for t in range(len(ids_b))],
        pca_from=1 if min(len(ids_a), len(ids_b)) > 2 else 0,
    )
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
        moves = [
            float((a[layer, t] - b[layer, counterpart(t, len(ids_a), len(ids_b), prefix, suffix)].mean(dim=0)).norm())
            for t in range(len(ids_a))
        ]
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
    floor = (
        stats.components["attention"].control_divergence.double().mean(dim=0)
        if stats.n_controls
        else torch.zeros(attention.shape[1])
    )
    attention_mean, mlp_mean = attention.mean(dim=0), mlp.mean(dim=0)
    above = [layer for layer in range(attention.shape[1]) if attention_mean[layer] > floor[layer]]
    ratios = mlp[:, -1] / mlp[:, 0].clamp(min=1e-12)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, mlp.shape[0], (resamples, mlp.shape[0]), generator=generator)
    resampled = mlp[draws][:, :, -1].mean(dim=1) / mlp[draws][:, :, 0].mean(dim=1).clamp(min=1e-12)
    tail = (1 - confidence) / 2
    low, high = (
        (float(torch.quantile(resampled, tail)), float(torch.quantile(resampled, 1 - tail)))
        if mlp.shape[0] > 1
        else bootstrap_interval(ratios)
    )
    return Emergence(
        axis=stats.axis,
        attention_onset=above[0] if above else None,
        mlp_peak=int(mlp_mean.argmax()),
        amplification=float(mlp_mean[-1] / mlp_mean[0].clamp(min=1e-12)),
        amplification_low=low,
        amplification_high=high,
        attention_by_layer=attention_mean.tolist(),
        mlp_by_layer=mlp_mean.tolist(),
        attention_floor=floor.tolist(),
    )


def render_view(view: PairView) -> dict[str, str]:
    """SVG figures of a pair view: file stem -> SVG text. Token text is escaped by `fairaudit.svg`."""
    from fairaudit.store import safe_name
    from fairaudit.svg import matrix_heatmap, scatter

    stem = safe_name(view.pair.pair_id.replace(":", "_"), 80)
    figures: dict[str, str] = {}
    for component in VIEW_COMPONENTS:
        heat = view.heat[component]
        peak_layer, peak_token = divmod(int(heat.argmax()), heat.shape[1])
        figures[f"{stem}-{component}-heatmap"] = matrix_heatmap(
            f"{view.pair.pair_id}: {component} output divergence per token and layer",
            [f"layer {i}" for i in range(heat.shape[0])],
            view.tokens_a,
            heat.tolist(),
            view.substituted_a,
            caption=f"Largest divergence: token '{view.tokens_a[peak_token]}' at layer {peak_layer}. "
            f"Compared: {view.pair.text_a!r} vs {view.pair.text_b!r}.",
            x_label="token of prompt a (substituted words underlined and bold); darker = larger divergence",
            y_label="layer",
            scale_label="mean |difference|:",
        )
        shares, skip = view.explained[component], view.pca_from
        left_out = (
            " The first token of each prompt is left out (it alone can take most of the variance)." if skip else ""
        )
        figures[f"{stem}-{component}-pca-layer{view.layer}"] = scatter(
            f"{view.pair.pair_id}: PCA of {component} outputs at layer {view.layer}",
            [tuple(row) for row in view.pca[component].tolist()],
            view.tokens_a[skip:] + view.tokens_b[skip:],
            [f"a: {view.pair.group_a}"] * (len(view.tokens_a) - skip)
            + [f"b: {view.pair.group_b}"] * (len(view.tokens_b) - skip),
            view.substituted_a[skip:] + view.substituted_b[skip:],
            x_label=f"PC1 ({shares[0]:.0%} of variance)",
            y_label=f"PC2 ({shares[1]:.0%})",
            caption=f"The token that moves most between the two prompts: '{view.most_moved[component]}'. Substituted words ringed.{left_out}",
        )
    return figures


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


TOP_UNITS = 5


def causal_view(
    axis: str, layer_rows: list[dict[str, Any]], neuron_rows: list[dict[str, Any]], head_rows: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """Where an axis' output-level bias is carried (the output_attribution and ablation scorers),
    from rows of the layer_scores, neuron_scores and head_scores tables: the layer profile of
    attribution beside the activation-divergence profile, each as a share of its total over
    layers, their rank correlation, and the top neurons and heads by verified effect (by
    estimated effect where no ablation was stored). None without attribution. The report reads
    the rows from the store; `fairaudit diagnose --attribution` builds them from its own scores."""
    layers = sorted(layer_rows, key=lambda r: r["layer"])
    if not layers or "output_attribution_by_layer" not in layers[0]:
        return None
    profiles = {
        "MLP activation divergence": [r.get("mlp_divergence") for r in layers],
        "MLP neurons' output attribution": [r["output_attribution_by_layer"] for r in layers],
        "attention heads' output attribution": [r.get("head_attribution_by_layer") for r in layers],
    }
    shares = {}
    for name, values in profiles.items():
        finite = [v for v in values if _is_number(v)]
        if len(finite) == len(values) and sum(finite) > 0:
            shares[name] = [v / sum(finite) for v in values]
    from fairaudit.measurement.metrics import spearman
    from fairaudit.svg import bar_chart

    divergence, attributed = shares.get("MLP activation divergence"), shares.get("MLP neurons' output attribution")
    agreement = spearman(divergence, attributed) if divergence and attributed and len(layers) >= 3 else math.nan
    top = {}
    for kind, table_rows, index in (("neurons", neuron_rows, "neuron"), ("heads", head_rows, "head")):
        rows = [r for r in table_rows if _is_number(r.get("output_attribution"))]
        verified = [r for r in rows if _is_number(r.get("ablation_effect"))]
        key = "ablation_effect" if verified else "output_attribution"
        chosen = sorted(verified or rows, key=lambda r: -abs(r[key]))[:TOP_UNITS]
        top[kind] = {
            "ranked_by": "measured effect of ablating it alone"
            if verified
            else "estimated effect (no ablation stored)",
            "rows": [
                {
                    "layer": r["layer"],
                    "unit": r[index],
                    "estimate": r["output_attribution"],
                    "measured": r.get("ablation_effect"),
                }
                for r in chosen
            ],
        }
    svg = (
        bar_chart(
            f"{axis}: where the bias is carried, and where activations differ (share of each total per layer)",
            [str(r["layer"]) for r in layers],
            shares,
            "layer",
            "share of the total over layers",
        )
        if shares
        else None
    )
    return {
        "svg": svg,
        "shares": shares,
        "agreement": agreement,
        "top": top,
        "peaks": {name: max(range(len(values)), key=values.__getitem__) for name, values in shares.items()},
    }


@dataclass
class Diagnosis:
    """What `run` found and wrote: the emergence summary, the pairs drawn, the files written, and
    (with `verify`) where the bias is carried (`causal_view`; None without attribution)."""

    axis: str
    summary: Emergence
    pairs: list[Pair]
    files: list[Path]
    report: dict[str, Any]  # what emergence.json holds
    attribution: dict[str, Any] | None = None


def run(
    model: Any,
    suite_name: str,
    pair_ids: tuple[str, ...] | list[str],
    top: int,
    layer: int | None,
    out: Path,
    png: bool = False,
    verify: int | None = None,
) -> Diagnosis:
    """`fairaudit diagnose`: probe one suite, then draw the `top` most divergent pairs (or the
    named ones) into `out` with the axis' emergence summary (emergence.json); with `verify`, also
    attribute the output bias to layers, neurons and heads (`verify` > 0: the K largest estimates
    checked by ablating each alone). Pair ids are checked before the model loads."""
    from fairaudit.inputs.model import load_model
    from fairaudit.inputs.suite import resolve_suite
    from fairaudit.measurement.metrics import pair_bias_index
    from fairaudit.plugins import registry
    from fairaudit.store import atomic_write_text
    from fairaudit.yamlio import strict_json

    suite = resolve_suite(suite_name)
    if out.exists() and not out.is_dir():
        raise FairauditError(f"--out {out} is a file; name a folder for the figures.")
    by_id = {pair.pair_id: pair for pair in suite.pairs(None)}
    missing = [pair_id for pair_id in pair_ids if pair_id not in by_id]
    if missing:  # checked before the model loads: a typo costs a second, not a model load
        raise FairauditError(
            f"suite '{suite.suite}' has no pair {missing}; pair ids look like "
            f"'{next(iter(by_id))}' (see 'fairaudit suites show {suite_name}')."
        )
    loaded = load_model(model)
    probe = registry().get("probe", "activations")
    stats = probe.run(
        loaded,
        suite.pairs("probe"),
        suite.control_pairs(),
        probe.Params(components=["attention", "mlp"], optipfair_index=False, progress=False),
        suite.axis,
    )
    summary = emergence(stats)
    if pair_ids:
        chosen = [by_id[pair_id] for pair_id in pair_ids]
    else:
        chosen = [
            suite.pairs("probe")[index] for index in pair_bias_index(stats).argsort(descending=True)[:top].tolist()
        ]
    layer = summary.mlp_peak if layer is None else layer
    if not 0 <= layer < len(loaded.layers):
        raise FairauditError(f"--layer {layer} is out of range: the model has layers 0..{len(loaded.layers) - 1}.")
    out.mkdir(parents=True, exist_ok=True)
    written = _draw(loaded, chosen, layer, out, png)
    report: dict[str, Any] = {
        "axis": suite.axis,
        "attention_onset_layer": summary.attention_onset,
        "mlp_peak_layer": summary.mlp_peak,
        "amplification": summary.amplification,
        "amplification_95ci": [summary.amplification_low, summary.amplification_high],
        "attention_by_layer": summary.attention_by_layer,
        "attention_noise_floor": summary.attention_floor,
        "mlp_by_layer": summary.mlp_by_layer,
        "pairs": [pair.pair_id for pair in chosen],
        "files": [str(p) for p in written],
    }
    atomic_write_text(out / "emergence.json", strict_json(report))
    found = Diagnosis(axis=suite.axis, summary=summary, pairs=chosen, files=written, report=report)
    causal = _attribution(loaded, stats, verify) if verify is not None else None
    if causal is not None:
        if causal["svg"] is not None:
            atomic_write_text(out / "attribution-by-layer.svg", str(causal["svg"]))
            report["files"].append(str(out / "attribution-by-layer.svg"))
        found.attribution = report["attribution"] = {key: value for key, value in causal.items() if key != "svg"}
        atomic_write_text(out / "attribution.json", strict_json(report["attribution"]))
    return found


def _draw(loaded: LoadedModel, pairs: list[Pair], layer: int, out: Path, png: bool) -> list[Path]:
    """Each pair's figures into `out` (SVG, and PNG with `png`); the paths written."""
    from fairaudit.store import atomic_write_text

    written: list[Path] = []
    for pair in pairs:
        for stem, svg in render_view(diagnose_pair(loaded, pair, layer)).items():
            path = out / f"{stem}.svg"
            for number in range(2, 10_000):  # two pairs whose names sanitise alike get distinct files
                if path not in written and path.with_suffix(".png") not in written:
                    break
                path = out / f"{stem}-{number}.svg"
            atomic_write_text(path, str(svg))  # replaces a symlink in the way, never writes through it
            written.append(path)
            if png:
                written.append(svg_to_png(path))
    return written


def _attribution(loaded: LoadedModel, stats: ActivationStats, verify: int) -> dict[str, Any] | None:
    """`causal_view` of one axis from the output_attribution (and, with verify > 0, ablation) scorers."""
    from fairaudit.measurement.scoring import AxisScores
    from fairaudit.plugins import registry
    from fairaudit.store import head_table, layer_table, neuron_table

    scores = AxisScores(axis=stats.axis, component="neuron")
    for name in ["layer_index", "output_attribution"] + (["ablation"] if verify else []):
        scorer = registry().get("scorer", name)
        params = scorer.Params(top=verify) if name == "ablation" else scorer.Params()
        scorer.compute(stats, loaded, scores, params)
    if not scores.head:
        return None
    return causal_view(
        stats.axis, layer_table(scores).to_pylist(), neuron_table(scores).to_pylist(), head_table(scores).to_pylist()
    )


def svg_to_png(path: Path) -> Path:
    """Render an SVG file to PNG beside it with a headless chromium (Debian's)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise FairauditError(
            "--png renders the SVG figures with a headless chromium, which is not installed "
            "(Debian: apt-get install chromium); the SVG files were written."
        )
    target = path.with_suffix(".png")
    if target.is_symlink():
        target.unlink()  # chromium would write through it
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--screenshot={target}",
            "--window-size=1000,700",
            path.resolve().as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    if not target.exists():
        raise FairauditError(f"chromium could not render {path} to PNG; the SVG file was written.")
    return target
