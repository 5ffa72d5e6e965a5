"""Matching MLP neurons between two models of different architectures, and the overlap of
their bias neurons through that matching.

Two models never share neuron indices, and rarely share tokenizers. Both read the same
corpus; every whitespace-separated word of it is a unit both models see, so each neuron's
activation is averaged over the tokens of each word (tokens are assigned to words by their
character offsets). Then:

- for every pair of layers (a of model A, b of model B), the Pearson correlation of every
  neuron of a with every neuron of b over the corpus words (standardised float32 blocks, so
  memory holds one `[neurons_a, neurons_b]` matrix at a time);
- a depth alignment: each layer of A is paired with one layer of B, monotonically (a later
  layer of A never pairs with an earlier layer of B), maximising the summed layer-pair score
  (the mean over A's neurons of their best correlation in B's layer), by dynamic programming;
- for each aligned layer pair, a one-to-one assignment of A's neurons to B's maximising the
  summed correlation (Hungarian, `scipy.optimize.linear_sum_assignment`), and each A
  neuron's single best match.

`matched_overlap` maps A's top-k bias neurons of an axis through the assignment and counts
how many land in B's top-k. The null is not hypergeometric (matched neurons are not a random
draw: both top-k sets concentrate in some layers): it permutes the assignment within each
aligned layer pair, keeping how many of A's top neurons each layer sends to which layer of B.
p = (1 + #{null >= observed}) / (1 + permutations).

What a match does not show: correlated activations on a corpus mean two neurons respond to
the same words, not that they compute the same function or carry bias the same way.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fairaudit.analysis.corpus import check_context, matching_chunks
from fairaudit.errors import FairauditError
from fairaudit.inputs.model import LoadedModel
from fairaudit.lazy import torch
from fairaudit.measurement.capture import token_states


@dataclass
class Matching:
    """A matching of model A's neurons to model B's."""

    alignment: list[int]  # layer of B paired with each layer of A
    layer_scores: np.ndarray  # [layers_a, layers_b]: mean over A's neurons of the best correlation
    assignment: list[np.ndarray]  # per layer of A: the B neuron (in the aligned layer) of each A neuron, -1 if none
    correlation: list[np.ndarray]  # per layer of A: correlation of each A neuron with its assigned B neuron
    best_neuron: list[np.ndarray]  # per layer of A: each A neuron's single best B neuron in the aligned layer
    best_correlation: list[np.ndarray]
    words: int = 0

    def rows(self) -> list[dict]:
        """One row per A neuron: (layer_a, neuron_a, layer_b, neuron_b, correlation, best match)."""
        out = []
        for layer_a, layer_b in enumerate(self.alignment):
            for neuron_a, neuron_b in enumerate(self.assignment[layer_a]):
                out.append(
                    {
                        "layer_a": layer_a,
                        "neuron_a": neuron_a,
                        "layer_b": layer_b,
                        "neuron_b": int(neuron_b),
                        "correlation": float(self.correlation[layer_a][neuron_a]),
                        "best_neuron_b": int(self.best_neuron[layer_a][neuron_a]),
                        "best_correlation": float(self.best_correlation[layer_a][neuron_a]),
                    }
                )
        return out


def word_activations(loaded: LoadedModel, chunks: list[str]) -> list[np.ndarray]:
    """Per layer, the mean MLP-neuron activation of every word of `chunks`: `[words, neurons]` float32."""
    if not getattr(loaded.tokenizer, "is_fast", False):
        raise FairauditError(f"model {loaded.model_id}: neuron matching needs a fast tokenizer (character offsets).")
    per_layer: list[list[np.ndarray]] = [[] for _ in loaded.layers]
    for chunk in chunks:
        spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", chunk)]
        starts = [start for start, _ in spans]
        offsets = loaded.tokenizer(chunk, return_offsets_mapping=True)["offset_mapping"]
        states = token_states(loaded, chunk, ["neuron"])["neuron"]  # [layers, tokens, units]
        owner = np.full(len(offsets), -1)
        for token, (start, end) in enumerate(offsets):
            if end > start:  # special tokens have empty offsets; a token belongs to the word holding its last character
                word = bisect.bisect_right(starts, end - 1) - 1
                if word >= 0 and spans[word][0] <= end - 1 < spans[word][1]:
                    owner[token] = word
        present = sorted(set(owner[owner >= 0].tolist()))
        if len(present) != len(spans):
            missing = len(spans) - len(present)
            raise FairauditError(
                f"model {loaded.model_id}: {missing} word(s) of a corpus chunk got no token (truncated?)."
            )
        weights = torch.zeros(len(spans), len(offsets))
        for token, word in enumerate(owner):
            if word >= 0:
                weights[word, token] = 1.0
        weights /= weights.sum(dim=1, keepdim=True)
        for layer in range(states.shape[0]):
            per_layer[layer].append((weights @ states[layer]).numpy().astype(np.float32))
    return [np.concatenate(blocks) for blocks in per_layer]


def _standardise(values: np.ndarray) -> np.ndarray:
    """Columns centred and scaled so that Z_a.T @ Z_b / words is the Pearson correlation; a
    constant neuron gets zeros (correlation 0 with everything)."""
    centred = values - values.mean(axis=0, keepdims=True)
    scale = np.sqrt((centred**2).mean(axis=0, keepdims=True))
    return np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 1e-8).astype(np.float32)


def align_depth(layer_scores: np.ndarray) -> list[int]:
    """The monotone (non-decreasing) pairing of A's layers with B's that maximises the summed score."""
    layers_a, layers_b = layer_scores.shape
    total = np.full((layers_a, layers_b), -np.inf)
    choice = np.zeros((layers_a, layers_b), dtype=np.int64)
    total[0] = layer_scores[0]
    for a in range(1, layers_a):
        best, where = -np.inf, 0
        for b in range(layers_b):
            if total[a - 1, b] > best:
                best, where = total[a - 1, b], b
            total[a, b] = layer_scores[a, b] + best
            choice[a, b] = where
    alignment = [int(np.argmax(total[-1]))]
    for a in range(layers_a - 1, 0, -1):
        alignment.append(int(choice[a, alignment[-1]]))
    return alignment[::-1]


def match_neurons(first: list[np.ndarray], second: list[np.ndarray]) -> Matching:
    """Match the neurons of two models from their word activations (see the module docstring)."""
    from scipy.optimize import linear_sum_assignment

    if first[0].shape[0] != second[0].shape[0]:
        raise FairauditError(
            f"the two models saw different numbers of words ({first[0].shape[0]} vs {second[0].shape[0]})."
        )
    words = first[0].shape[0]
    standard_a = [_standardise(values) for values in first]
    standard_b = [_standardise(values) for values in second]
    layer_scores = np.zeros((len(first), len(second)))
    for a, z_a in enumerate(standard_a):
        for b, z_b in enumerate(standard_b):
            layer_scores[a, b] = float((z_a.T @ z_b / words).max(axis=1).mean())
    alignment = align_depth(layer_scores)
    matching = Matching(
        alignment=alignment,
        layer_scores=layer_scores,
        assignment=[],
        correlation=[],
        best_neuron=[],
        best_correlation=[],
        words=words,
    )
    for a, b in enumerate(alignment):
        correlation = standard_a[a].T @ standard_b[b] / words  # [neurons_a, neurons_b]
        rows, columns = linear_sum_assignment(correlation, maximize=True)
        assigned = np.full(correlation.shape[0], -1)
        assigned[rows] = columns
        matching.assignment.append(assigned)
        matching.correlation.append(
            np.where(assigned >= 0, correlation[np.arange(len(assigned)), np.maximum(assigned, 0)], np.nan)
        )
        matching.best_neuron.append(correlation.argmax(axis=1))
        matching.best_correlation.append(correlation.max(axis=1))
    return matching


@dataclass
class MatchedOverlap:
    """Overlap of A's top neurons, mapped through the matching, with B's top neurons."""

    name: str  # an axis, or "shared" for the cross-axis shared sets
    k_a: int
    k_b: int
    overlap: int
    null_mean: float
    null_low: float  # 2.5% and 97.5% of the permutation null
    null_high: float
    p_value: float
    permutations: int
    mapped: list[tuple[int, int]] = field(default_factory=list)  # (layer_b, neuron_b) of A's top neurons


def _overlap(
    mask_a: np.ndarray, mask_b: np.ndarray, matching: Matching, assignment: list[np.ndarray]
) -> tuple[int, list]:
    mapped = []
    for layer_a, layer_b in enumerate(matching.alignment):
        for neuron_a in np.flatnonzero(mask_a[layer_a]):
            neuron_b = assignment[layer_a][neuron_a]
            if neuron_b >= 0:
                mapped.append((layer_b, int(neuron_b)))
    return sum(bool(mask_b[layer_b, neuron_b]) for layer_b, neuron_b in mapped), mapped


def matched_overlap(
    name: str, mask_a: np.ndarray, mask_b: np.ndarray, matching: Matching, permutations: int = 2000, seed: int = 0
) -> MatchedOverlap:
    """Overlap of two boolean top-k masks (`[layers_a, neurons_a]`, `[layers_b, neurons_b]`)
    through the matching, with its within-layer permutation null."""
    observed, mapped = _overlap(mask_a, mask_b, matching, matching.assignment)
    generator = np.random.default_rng(seed)
    null = np.empty(permutations)
    for index in range(permutations):
        shuffled = [generator.permutation(assigned) for assigned in matching.assignment]
        null[index] = _overlap(mask_a, mask_b, matching, shuffled)[0]
    return MatchedOverlap(
        name=name,
        k_a=int(mask_a.sum()),
        k_b=int(mask_b.sum()),
        overlap=observed,
        null_mean=float(null.mean()),
        null_low=float(np.quantile(null, 0.025)),
        null_high=float(np.quantile(null, 0.975)),
        p_value=(1 + int((null >= observed).sum())) / (1 + permutations),
        permutations=permutations,
        mapped=mapped,
    )


def _axes_masks(by_axis: dict[str, np.ndarray], top: float) -> dict[str, np.ndarray]:
    from fairaudit.analysis.overlap import top_k

    masks = {axis: top_k(values, top) for axis, values in by_axis.items()}
    if len(masks) >= 2:  # the cross-axis shared set: neurons in the top-k of two or more axes
        masks["shared"] = np.stack(list(masks.values())).sum(axis=0) >= 2
    return masks


def overlaps_through_matching(
    by_axis_a: dict[str, np.ndarray],
    by_axis_b: dict[str, np.ndarray],
    matching: Matching,
    top: float,
    permutations: int = 2000,
    seed: int = 0,
) -> list[MatchedOverlap]:
    """For every axis both models have (and their shared sets), the matched overlap of the top-k."""
    masks_a, masks_b = _axes_masks(by_axis_a, top), _axes_masks(by_axis_b, top)
    names = [name for name in masks_a if name in masks_b]
    return [matched_overlap(name, masks_a[name], masks_b[name], matching, permutations, seed) for name in names]


def self_match_recovery(activations: list[np.ndarray], seed: int = 0) -> float:
    """Sanity baseline: a model matched with a copy of itself whose neurons are relabelled at
    random in every layer (what a change of residual basis, or of neuron order, looks like to the
    matcher). The share of neurons matched back to themselves should be 1, up to neurons that
    are constant or duplicates on the corpus."""
    generator = np.random.default_rng(seed)
    orders = [generator.permutation(values.shape[1]) for values in activations]
    matching = match_neurons(activations, [values[:, order] for values, order in zip(activations, orders)])
    recovered = total = 0
    for layer_a, layer_b in enumerate(matching.alignment):
        found = (
            orders[layer_b][matching.assignment[layer_a]]
            if layer_b == layer_a
            else np.full(activations[layer_a].shape[1], -1)
        )
        live = activations[layer_a].std(axis=0) > 1e-8
        recovered += int((found[live] == np.arange(len(found))[live]).sum())
        total += int(live.sum())
    return recovered / max(total, 1)


@dataclass
class MatchedComparison:
    """What `fairaudit overlap --match` computed and stored."""

    run_id: str
    matching: Matching
    overlaps: list[MatchedOverlap]
    self_recovery: float
    corpus: str
    random_overlaps: list[MatchedOverlap] = field(default_factory=list)  # with --baselines


def _scores_in_memory(loaded: LoadedModel, config, score: str) -> dict[str, np.ndarray]:
    """A run config's probe and scorers applied to `loaded` without a store: axis -> `[layers, units]`."""
    from fairaudit.inputs.suite import resolve_suites
    from fairaudit.measurement.probe import screen_pairs
    from fairaudit.measurement.scoring import AxisScores
    from fairaudit.plugins import registry

    params = config.check_plugins()
    plugins = registry()
    probe = plugins.get("probe", config.probe.plugin)
    by_axis = {}
    for suite in resolve_suites(config.suites):
        pairs, controls, _ = screen_pairs(loaded, suite)
        stats = probe.run(loaded, pairs, controls, params["probe"], suite.axis)
        scores = AxisScores(axis=suite.axis, component=config.scoring.component)
        for path, kind, ref in config.plugin_refs():
            if kind == "scorer":
                plugins.get("scorer", ref.plugin).compute(stats, loaded, scores, params[path])
        if score not in scores.neuron:
            raise FairauditError(
                f"the random-model baseline needs the score '{score}', which the run's scorers do not write."
            )
        by_axis[suite.axis] = scores.neuron[score].double().numpy()
    return by_axis


def random_twin(loaded: LoadedModel, seed: int) -> LoadedModel:
    """A model of the same architecture and size with freshly initialised (untrained) weights."""
    torch.manual_seed(seed)
    model = type(loaded.model)(loaded.model.config).eval()
    return LoadedModel(
        model=model,
        tokenizer=loaded.tokenizer,
        adapter=loaded.adapter,
        model_id=f"random-{loaded.model_id}",
        has_lm_head=loaded.has_lm_head,
        provenance={},
    )


def random_baseline(
    loaded: list[LoadedModel], config, score: str, chunks: list[str], top: float, permutations: int
) -> list[MatchedOverlap]:
    """Sanity baseline: two independently initialised random models of the two architectures,
    probed and scored like the audited ones and matched on the same words; their matched
    overlaps should be at chance."""
    twins = [random_twin(model, seed) for model, seed in zip(loaded, (11, 12))]
    scores = [_scores_in_memory(twin, config, score) for twin in twins]
    matching = match_neurons(*(word_activations(twin, chunks) for twin in twins))
    return overlaps_through_matching(scores[0], scores[1], matching, top, permutations)


def compare_models(
    store,
    scores_a,
    scores_b,
    corpus: str | Path | None,
    top: float,
    permutations: int = 2000,
    max_words: int = 5000,
    granted: frozenset[str] = frozenset(),
    baselines: bool = False,
) -> MatchedComparison:
    """Load the two audited models (as their runs recorded them), match their neurons on the
    corpus, store the matching (table `neuron_matching`) and the matched overlaps (table
    `matched_overlap`) under a new run of kind "match", and return them."""
    import hashlib

    import pyarrow as pa

    chunks = matching_chunks(corpus, max_words)  # checked before any model loads
    loaded = [_audited_model(store, scores, granted) for scores in (scores_a, scores_b)]
    for model in loaded:
        check_context(model, chunks)
    with store.recording(
        "match",
        model_id=scores_a.model,
        model_b=scores_b.model,
        run_a=scores_a.run_id,
        run_b=scores_b.run_id,
        score=scores_a.score,
        top=top,
        permutations=permutations,
        corpus=str(corpus or "bundled"),
        corpus_sha256=hashlib.sha256(" ".join(chunks).encode()).hexdigest(),
        weights_hash_a=loaded[0].provenance["weights_hash"],
        weights_hash_b=loaded[1].provenance["weights_hash"],
    ) as record:
        first, second = (word_activations(model, chunks) for model in loaded)
        matching = match_neurons(first, second)
        overlaps = overlaps_through_matching(scores_a.by_axis, scores_b.by_axis, matching, top, permutations)
        recovery = self_match_recovery(first)
        random_overlaps = []
        if baselines:
            random_overlaps = _random_model_overlaps(store, scores_a, loaded, chunks, top, permutations)
        run_id = record.run_id
        store.write_part(
            "neuron_matching", scores_a.model, scores_b.model, run_id, pa.Table.from_pylist(matching.rows())
        )
        store.write_part(
            "matched_overlap",
            scores_a.model,
            scores_b.model,
            run_id,
            pa.Table.from_pylist(
                [
                    {key: value for key, value in overlap.__dict__.items() if key != "mapped"} | {"top": top}
                    for overlap in overlaps
                ]
            ),
        )
        extras = {
            "words": matching.words,
            "alignment": matching.alignment,
            "self_match_recovery": recovery,
            "random_baseline": [
                {key: value for key, value in overlap.__dict__.items() if key != "mapped"}
                for overlap in random_overlaps
            ],
        }
        record.add(**extras)
    return MatchedComparison(
        run_id=run_id,
        matching=matching,
        overlaps=overlaps,
        self_recovery=recovery,
        corpus=str(corpus or "bundled"),
        random_overlaps=random_overlaps,
    )


def _random_model_overlaps(
    store: Any, scores: Any, loaded: list[LoadedModel], chunks: list[str], top: float, permutations: int
) -> list[MatchedOverlap]:
    """`random_baseline` with the probe and scorers of the run that audited the first model."""
    from fairaudit.config import RunConfig

    config = RunConfig.model_validate(store.read_run(scores.run_id)["config"])
    config = config.model_copy(
        update={
            "pruning": None,
            "evaluators": [],
            "probe": config.probe.model_copy(update={"params": {**config.probe.params, "progress": False}}),
        }
    )
    return random_baseline(loaded, config, scores.score, chunks, top, permutations)


def _audited_model(store: Any, scores: Any, granted: frozenset[str]) -> LoadedModel:
    """The model a run audited, loaded as its run recorded it, refused when its weights changed."""
    from fairaudit.inputs.model import ModelSpec, load_model

    record = store.read_run(scores.run_id)
    provenance = record.get("model", {})
    spec = ModelSpec.model_validate(
        {
            **record.get("config", {}).get("model", {"id": provenance.get("source")}),
            **{name: True for name in ("trust_remote_code", "allow_pickle") if name in granted},
        }
    )
    model = load_model(spec)
    if model.provenance["weights_hash"] != provenance.get("weights_hash"):
        raise FairauditError(
            f"model {scores.model} loads with other weights than run {scores.run_id} audited "
            f"(weights hash differs); its neurons cannot be matched to those scores."
        )
    return model
