"""The probe stage: what a probe plugin returns, and the Protocol it implements.

A probe runs every prompt of an axis' pairs (and control pairs) through the model and
returns `ActivationStats`: running sums per (component, layer, unit) accumulated while
streaming, so memory is O(layers x units) whatever the number of pairs, plus small
per-pair summaries (O(pairs x layers)) used for bootstrap intervals.

Notation: for pair p with prompts a_p and b_p, h(.) is a unit's activation pooled over
token positions (`position`: mean / last / aligned), and d_p = h(a_p) - h(b_p).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from fairaudit.errors import SuiteError
from fairaudit.inputs.model import LoadedModel
from fairaudit.inputs.suite import Pair, Suite
from fairaudit.lazy import torch


@dataclass
class ComponentStats:
    """Running sums for one component; tensors are float64 `[layers, units]` unless noted."""

    abs_diff_sum: torch.Tensor  # sum_p |d_p|
    abs_diff_sq_sum: torch.Tensor  # sum_p d_p^2
    diff_sum: torch.Tensor  # sum_p d_p (signed)
    activation_sum: torch.Tensor  # sum over every prompt of both sides of h
    activation_sq_sum: torch.Tensor  # sum over every prompt of h^2
    control_abs_diff_sum: torch.Tensor  # the same as abs_diff_sum, over control pairs
    control_abs_diff_sq_sum: torch.Tensor
    pair_divergence: torch.Tensor  # float32 [pairs, layers]: mean over units of |d_p|
    control_divergence: torch.Tensor  # float32 [controls, layers]

    @property
    def layers(self) -> int:
        return self.abs_diff_sum.shape[0]

    @property
    def units(self) -> int:
        return self.abs_diff_sum.shape[1]


@dataclass
class ActivationStats:
    """Everything a scorer may use about one axis."""

    axis: str
    position: str
    pair_ids: list[str]
    control_ids: list[str]
    components: dict[str, ComponentStats]
    # optiPfair-compatible index terms: for each pair, for each hooked (component, layer),
    # the mean over token positions and units of |h_a(t) - h_b(t)|; NaN where the two
    # prompts tokenize to different lengths (optiPfair cannot compare those).
    optipfair_keys: list[str] = field(default_factory=list)
    optipfair_terms: torch.Tensor | None = None  # float64 [pairs, keys]
    unequal_length_pairs: int = 0
    aligned_fallbacks: int = 0  # pairs with no shared suffix, pooled at the last token instead
    continuations: dict[str, list[str]] = field(default_factory=dict)  # label -> the pairs' continuation texts
    pairs: list[Pair] = field(default_factory=list)  # the pairs probed (for scorers that run their own passes)
    # computed once per axis and shared between scorers (the output-attribution gradient pass)
    shared: dict = field(default_factory=dict, repr=False)

    @property
    def n_pairs(self) -> int:
        return len(self.pair_ids)

    @property
    def n_controls(self) -> int:
        return len(self.control_ids)


class Probe(Protocol):
    """What a probe plugin provides."""

    name: str
    description: str

    def run(self, loaded: LoadedModel, pairs: list[Pair], controls: list[Pair], params, axis: str) -> ActivationStats:
        """Run the pairs and controls through `loaded` and return streaming statistics.
        `params` is an instance of the probe's `Params` model."""


def screen_pairs(loaded: LoadedModel, suite: Suite) -> tuple[list[Pair], list[Pair], list[str]]:
    """The probe and control pairs worth probing, and a note for each kind left out: a pair
    whose two sides tokenize identically measures nothing (its bias would be 0, and identical
    controls would make every neuron look significant). A prompt longer than the model's
    context is an error: its activations would not mean what the suite says."""
    context = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    notes: list[str] = []
    kept: dict[str, list] = {}
    for kind, pairs in (("probe", suite.pairs("probe")), ("control", suite.control_pairs())):
        same: list[Pair] = []
        kept[kind] = []
        for pair in pairs:
            ids_a, ids_b = (loaded.tokenizer(text)["input_ids"] for text in (pair.text_a, pair.text_b))
            if context and max(len(ids_a), len(ids_b)) > context:
                raise SuiteError(
                    f"suite '{suite.suite}', pair {pair.pair_id}: a prompt is {max(len(ids_a), len(ids_b)):,} tokens, "
                    f"longer than the model's context of {context:,} tokens; shorten it."
                )
            (same if ids_a == ids_b else kept[kind]).append(pair)
        if same:
            notes.append(
                f"axis {suite.axis}: {len(same)} {kind} pair(s) whose two sides tokenize identically for this model "
                f"were left out (they measure nothing): {', '.join(p.pair_id for p in same[:5])}"
                f"{' ...' if len(same) > 5 else ''}"
            )
    if not kept["probe"]:
        raise SuiteError(
            f"suite '{suite.suite}': no probe pair is left once pairs whose sides tokenize identically are left "
            f"out; its group words are not distinguished by this model's tokenizer."
        )
    return kept["probe"], kept["control"], notes
