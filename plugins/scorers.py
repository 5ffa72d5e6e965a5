"""Built-in scorers. Each only applies a definition from `fairaudit.metrics`."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from fairaudit import metrics
from fairaudit.errors import ConfigError
from fairaudit.hookspecs import hookimpl
from fairaudit.model import LoadedModel, materialized
from fairaudit.probe import ActivationStats
from fairaudit.scoring import AxisScores


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _component(stats: ActivationStats, scores: AxisScores):
    try:
        return stats.components[scores.component]
    except KeyError:
        raise ConfigError(
            f"scores are asked for component '{scores.component}', which the probe did not capture "
            f"(captured: {sorted(stats.components)}); add it to the probe's 'components'."
        ) from None


class BiasScorer:
    name = "bias"
    description = "bias = mean |h(a) - h(b)| over pairs; signed_bias = mean h(a) - h(b)"
    Params = NoParams
    outputs = lambda self, params: ["bias", "signed_bias"]  # neuron columns it writes

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: NoParams) -> None:
        component = _component(stats, scores)
        scores.neuron["bias"] = metrics.bias(component, stats.n_pairs)
        scores.neuron["signed_bias"] = metrics.signed_bias(component, stats.n_pairs)


class ScaledBiasScorer:
    name = "scaled_bias"
    description = "bias divided by the unit's activation spread over all prompts (scale-free)"
    Params = NoParams
    outputs = lambda self, params: ["scaled_bias"]  # neuron columns it writes

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: NoParams) -> None:
        scores.neuron["scaled_bias"] = metrics.scaled_bias(_component(stats, scores), stats.n_pairs)


class NoiseFloorScorer:
    name = "noise_floor"
    description = "mean |h(a) - h(b)| over control pairs, and bias above it"
    Params = NoParams
    outputs = lambda self, params: ["noise_floor", "bias_above_floor"]  # neuron columns it writes

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: NoParams) -> None:
        component = _component(stats, scores)
        floor = metrics.noise_floor(component, stats.n_controls)
        scores.neuron["noise_floor"] = floor
        scores.neuron["bias_above_floor"] = metrics.bias(component, stats.n_pairs) - floor


class SignificanceScorer:
    name = "significance"
    description = "one-sided Welch t-test of pair |d| against control |d|, Benjamini-Hochberg q-values"
    Params = NoParams
    outputs = lambda self, params: ["p_value", "q_value"]  # neuron columns it writes

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: NoParams) -> None:
        p = metrics.p_values(_component(stats, scores), stats.n_pairs, stats.n_controls)
        scores.neuron["p_value"] = p
        q = metrics.benjamini_hochberg(p)
        scores.neuron["q_value"] = q
        scores.summary["significant_neurons"] = int((q < 0.05).sum())


class ImportanceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    methods: list[Literal["ppm", "maw", "vow", "pon", "l2"]] = Field(default_factory=lambda: ["ppm", "maw", "vow", "pon", "l2"])


class ImportanceScorer:
    name = "importance"
    description = "weight-only neuron importance: ppm (optiPfair), maw (write-up), vow, pon, l2"
    Params = ImportanceParams
    outputs = lambda self, params: [f"importance_{method}" for method in params.methods]  # neuron columns it writes

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: ImportanceParams) -> None:
        if scores.component != "neuron":
            return  # importance is defined for MLP expansion neurons only
        weights = [loaded.mlp_weights(layer) for layer in loaded.layers]
        for method in params.methods:
            function = metrics.IMPORTANCE[method]
            scores.neuron[f"importance_{method}"] = torch.stack([function(w).double().cpu() for w in weights])


class HybridParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(default=0.8, ge=0.0, le=1.0, description="w: weight of bias against (1 - importance)")
    bias: str = "bias"
    importance: str = "importance_ppm"
    column: str = Field(default="hybrid", description="name of the column written")


class HybridScorer:
    name = "hybrid"
    description = "w * norm(bias) + (1 - w) * (1 - norm(importance)), min-max within a layer"
    Params = HybridParams
    outputs = lambda self, params: [params.column]  # neuron columns it writes

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: HybridParams) -> None:
        missing = [column for column in (params.bias, params.importance) if column not in scores.neuron]
        if missing:
            raise ConfigError(
                f"hybrid scorer needs columns {missing}, which no earlier scorer produced; list 'bias' and "
                f"'importance' before 'hybrid' in the run config (columns so far: {sorted(scores.neuron)})."
            )
        scores.neuron[params.column] = metrics.hybrid(scores.neuron[params.bias], scores.neuron[params.importance], params.weight)


class StereotypePushScorer:
    name = "stereotype_push"
    description = ("signed direct effect on the output: signed_bias x (down_proj column . (unembedding of the negative "
                   "continuations' first tokens - that of the neutral ones)); > 0 pushes group a toward the negative")
    Params = NoParams
    outputs = lambda self, params: ["stereotype_push"]  # neuron columns it writes

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: NoParams) -> None:
        head = loaded.model.get_output_embeddings() if loaded.is_causal else None
        if head is None or scores.component != "neuron" or not {"negative", "neutral"} <= set(stats.continuations):
            return  # needs an LM head and templates with negative and neutral continuations

        def first_tokens(label: str) -> torch.Tensor:
            ids = [loaded.tokenizer.encode(text, add_special_tokens=False)[0] for text in stats.continuations[label]]
            with materialized(head):  # a no-op unless a device map offloaded the head
                return head.weight.detach().float()[ids].mean(dim=0).cpu()

        direction = first_tokens("negative") - first_tokens("neutral")  # [hidden]
        effect = torch.stack([(loaded.mlp_weights(layer).down.cpu().T @ direction).double() for layer in loaded.layers])
        signed = scores.neuron.get("signed_bias", metrics.signed_bias(stats.components["neuron"], stats.n_pairs))
        scores.neuron["stereotype_push"] = signed * effect


class LayerIndexParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0)
    resamples: int = Field(default=2000, ge=100, le=100_000)
    seed: int = 0


class LayerIndexScorer:
    name = "layer_index"
    description = "per-layer mean |d| of attention and MLP outputs; bias index with bootstrap interval; optiPfair index"
    Params = LayerIndexParams
    outputs = lambda self, params: []  # neuron columns it writes

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: LayerIndexParams) -> None:
        for name in metrics.INDEX_COMPONENTS:
            if name in stats.components:
                scores.layer[f"{name}_divergence"] = metrics.layer_divergence(stats, name)
                if stats.n_controls:
                    scores.layer[f"{name}_control_divergence"] = stats.components[name].control_divergence.double().mean(dim=0)
        per_pair = metrics.pair_bias_index(stats)
        low, high = metrics.bootstrap_interval(per_pair, params.confidence, params.resamples, params.seed)
        compatible, used = metrics.optipfair_index(stats)
        scores.summary.update(
            bias_index=float(per_pair.mean()),
            bias_index_low=low,
            bias_index_high=high,
            optipfair_index=compatible,
            optipfair_index_pairs=used,
            pairs=stats.n_pairs,
            controls=stats.n_controls,
            unequal_length_pairs=stats.unequal_length_pairs,
        )


@hookimpl
def register_scorers(register):
    for scorer in (BiasScorer(), ScaledBiasScorer(), NoiseFloorScorer(), SignificanceScorer(),
                   ImportanceScorer(), HybridScorer(), StereotypePushScorer(), LayerIndexScorer()):
        register(scorer)
