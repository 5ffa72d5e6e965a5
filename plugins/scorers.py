"""Built-in scorers. Each only applies a definition from `fairaudit.measurement.metrics`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fairaudit.errors import ConfigError
from fairaudit.hookspecs import hookimpl
from fairaudit.inputs.model import LoadedModel, materialized
from fairaudit.lazy import torch
from fairaudit.measurement import metrics
from fairaudit.measurement.probe import ActivationStats
from fairaudit.measurement.scoring import AxisScores


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

    def outputs(self, params):
        return ["bias", "signed_bias"]  # neuron columns it writes

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: NoParams) -> None:
        component = _component(stats, scores)
        scores.neuron["bias"] = metrics.bias(component, stats.n_pairs)
        scores.neuron["signed_bias"] = metrics.signed_bias(component, stats.n_pairs)


class ScaledBiasScorer:
    name = "scaled_bias"
    description = "bias divided by the unit's activation spread over all prompts (scale-free)"
    Params = NoParams

    def outputs(self, params):
        return ["scaled_bias"]  # neuron columns it writes

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: NoParams) -> None:
        scores.neuron["scaled_bias"] = metrics.scaled_bias(_component(stats, scores), stats.n_pairs)


class NoiseFloorScorer:
    name = "noise_floor"
    description = "mean |h(a) - h(b)| over control pairs, and bias above it"
    Params = NoParams

    def outputs(self, params):
        return ["noise_floor", "bias_above_floor"]  # neuron columns it writes

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: NoParams) -> None:
        component = _component(stats, scores)
        floor = metrics.noise_floor(component, stats.n_controls)
        scores.neuron["noise_floor"] = floor
        scores.neuron["bias_above_floor"] = metrics.bias(component, stats.n_pairs) - floor


class SignificanceScorer:
    name = "significance"
    description = "one-sided Welch t-test of pair |d| against control |d|, Benjamini-Hochberg q-values"
    Params = NoParams

    def outputs(self, params):
        return ["p_value", "q_value"]  # neuron columns it writes

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: NoParams) -> None:
        p = metrics.p_values(_component(stats, scores), stats.n_pairs, stats.n_controls)
        scores.neuron["p_value"] = p
        q = metrics.benjamini_hochberg(p)
        scores.neuron["q_value"] = q
        scores.summary["significant_neurons"] = int((q < 0.05).sum())


class ImportanceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    methods: list[Literal["ppm", "maw", "vow", "pon", "l2"]] = Field(
        default_factory=lambda: ["ppm", "maw", "vow", "pon", "l2"]
    )


class ImportanceScorer:
    name = "importance"
    description = "weight-only neuron importance: ppm (optiPfair), maw (write-up), vow, pon, l2"
    Params = ImportanceParams

    def outputs(self, params):
        return [f"importance_{method}" for method in params.methods]  # neuron columns it writes

    def compute(
        self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: ImportanceParams
    ) -> None:
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

    def outputs(self, params):
        return [params.column]  # neuron columns it writes

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: HybridParams) -> None:
        missing = [column for column in (params.bias, params.importance) if column not in scores.neuron]
        if missing:
            raise ConfigError(
                f"hybrid scorer needs columns {missing}, which no earlier scorer produced; list 'bias' and "
                f"'importance' before 'hybrid' in the run config (columns so far: {sorted(scores.neuron)})."
            )
        scores.neuron[params.column] = metrics.hybrid(
            scores.neuron[params.bias], scores.neuron[params.importance], params.weight
        )


class StereotypePushScorer:
    name = "stereotype_push"
    description = (
        "signed direct effect on the output: signed_bias x (down_proj column . (unembedding of the tokens where "
        "negative continuations depart from their neutral ones - that of the neutral ones)); > 0 pushes group a "
        "toward the negative"
    )
    Params = NoParams

    def outputs(self, params):
        return ["stereotype_push"]  # neuron columns it writes

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: NoParams) -> None:
        head = loaded.model.get_output_embeddings() if loaded.has_lm_head else None
        if head is None or scores.component != "neuron" or not {"negative", "neutral"} <= set(stats.continuations):
            return  # needs an LM head and templates with negative and neutral continuations
        encode = lambda text: loaded.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        continuations = sorted(
            {
                (p.continuations["negative"], p.continuations["neutral"])
                for p in stats.pairs
                if {"negative", "neutral"} <= set(p.continuations)
            }
        )
        if not continuations:  # a probe that does not hand on its pairs: the first tokens, unpaired
            continuations = list(zip(stats.continuations["negative"], stats.continuations["neutral"]))
        departures = [
            metrics.first_difference(encode(negative), encode(neutral)) for negative, neutral in continuations
        ]
        departures = [(a, b) for a, b in departures if a is not None and b is not None]
        if not departures:
            return
        with materialized(head):  # a no-op unless a device map offloaded the head
            weights = head.weight.detach().float()
            direction = (
                (weights[[a for a, _ in departures]] - weights[[b for _, b in departures]]).mean(dim=0).cpu()
            )  # [hidden]
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

    def outputs(self, params):
        return []  # neuron columns it writes

    def compute(
        self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: LayerIndexParams
    ) -> None:
        for name in metrics.INDEX_COMPONENTS:
            if name in stats.components:
                scores.layer[f"{name}_divergence"] = metrics.layer_divergence(stats, name)
                if stats.n_controls:
                    scores.layer[f"{name}_control_divergence"] = (
                        stats.components[name].control_divergence.double().mean(dim=0)
                    )
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


# --- output attribution (causal: effect on what the model says) ------------------------------


class AttributionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ablation: Literal["zero", "mean"] = Field(
        default="zero",
        description="what an ablated unit is replaced by: 0, or its mean activation over the bundled corpus",
    )
    pairs_per_batch: int = Field(default=8, ge=1, le=512)
    corpus_sentences: int = Field(default=200, ge=1, description="bundled-corpus sentences averaged for mean-ablation")


def _attribution(stats: ActivationStats, loaded: LoadedModel, params: AttributionParams):
    from fairaudit.measurement.attribution import shared_attribution, shared_means

    means = shared_means(stats, loaded, params.corpus_sentences) if params.ablation == "mean" else None
    return shared_attribution(stats, loaded, params.pairs_per_batch), means


class OutputAttributionScorer:
    name = "output_attribution"
    description = (
        "causal: each MLP neuron's and attention head's first-order share of the output-level bias m "
        "(attribution patching, one backward pass per batch); heads in head_scores"
    )
    Params = AttributionParams
    outputs = lambda self, params: ["output_attribution", "output_attribution_abs", "output_bias_reduction"]  # noqa: E731

    def compute(
        self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: AttributionParams
    ) -> None:
        if (
            scores.component != "neuron"
            or not loaded.has_lm_head
            or not any(metrics.output_bias_terms(p) for p in stats.pairs)
        ):
            return  # needs MLP neurons, a language-model head and pairs with an output-level bias quantity
        found, means = _attribution(stats, loaded, params)
        values = found.output_bias
        low, high = metrics.bootstrap_interval(values)
        templates = {pair.pair_id: pair.template_id for pair in stats.pairs}
        template_low, template_high = metrics.cluster_bootstrap_interval(
            values, [templates[pair_id] for pair_id in found.pair_ids]
        )
        mean = float(values.mean())
        scores.summary.update(
            output_bias=mean,
            output_bias_low=low,
            output_bias_high=high,
            output_bias_pairs=len(values),
            output_bias_template_low=template_low,
            output_bias_template_high=template_high,
        )
        direction = 1.0 if mean >= 0 else -1.0
        for kind, table in (("neuron", scores.neuron), ("head", scores.head)):
            carried = -found.predicted_change(kind, None if means is None else means[kind])  # [pairs, layers, units]
            table["output_attribution"] = carried.mean(dim=0)
            table["output_attribution_abs"] = carried.abs().mean(dim=0)
            table["output_bias_reduction"] = direction * carried.mean(dim=0)
        scores.layer["output_attribution_by_layer"] = scores.neuron["output_attribution"].abs().sum(dim=1)
        scores.layer["head_attribution_by_layer"] = scores.head["output_attribution"].abs().sum(dim=1)


class AblationParams(AttributionParams):
    top: int = Field(default=64, ge=1, le=4096, description="candidates verified per kind (neurons, heads)")
    replicas: int = Field(
        default=4, ge=1, le=64, description="candidates ablated in one forward pass (the batch repeated)"
    )


class AblationScorer:
    name = "ablation"
    description = (
        "verification: the real change of the mean output bias when each of the top candidates by "
        "|output_attribution| is ablated alone; rank correlation with the estimate"
    )
    Params = AblationParams
    outputs = lambda self, params: ["ablation_effect"]  # noqa: E731

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params: AblationParams) -> None:
        from fairaudit.measurement import attribution

        if "output_attribution" not in scores.neuron:
            if (
                scores.component == "neuron"
                and loaded.has_lm_head
                and any(metrics.output_bias_terms(p) for p in stats.pairs)
            ):
                raise ConfigError(
                    "the ablation scorer verifies output_attribution: list 'output_attribution' before 'ablation'."
                )
            return
        _, means = _attribution(stats, loaded, params)
        for kind, table in (("neuron", scores.neuron), ("head", scores.head)):
            predicted = table["output_attribution"]
            order = torch.argsort(predicted.abs().flatten(), descending=True, stable=True)[: params.top]
            units = [attribution.Unit(kind, int(i) // predicted.shape[1], int(i) % predicted.shape[1]) for i in order]
            change = attribution.measured_change(
                loaded, stats.pairs, units, means, params.pairs_per_batch, params.replicas
            )
            effect = torch.full(predicted.shape, float("nan"), dtype=torch.float64)
            for unit, value in zip(units, change.tolist()):
                effect[
                    unit.layer, unit.index
                ] = -value  # what the unit carried: the sign convention of output_attribution
            table["ablation_effect"] = effect
            chosen = predicted.flatten()[order].double()
            measured = -change
            correlation = metrics.spearman(chosen, measured) if len(units) >= 3 else float("nan")
            scores.summary[f"{kind}_attribution_spearman"] = correlation
            scores.summary[f"{kind}_attribution_verified"] = len(units)


@hookimpl
def register_scorers(register):
    for scorer in (
        BiasScorer(),
        ScaledBiasScorer(),
        NoiseFloorScorer(),
        SignificanceScorer(),
        ImportanceScorer(),
        HybridScorer(),
        StereotypePushScorer(),
        LayerIndexScorer(),
        OutputAttributionScorer(),
        AblationScorer(),
    ):
        register(scorer)
