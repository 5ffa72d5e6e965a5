"""The scoring stage: scorer plugins fill an `AxisScores` from `ActivationStats`.

Scorers run in the order the run config lists them; a later one (hybrid) may read the
columns an earlier one (bias, importance) wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from fairaudit.inputs.model import LoadedModel
from fairaudit.lazy import torch
from fairaudit.measurement.probe import ActivationStats


@dataclass
class AxisScores:
    """Scores of one axis on one model.

    `neuron` columns are `[layers, units]` tensors describing the units of `component`
    (by default the MLP expansion neurons); `head` columns are `[layers, heads]` (attention
    heads, the `head_scores` table); `layer` columns are `[layers]`; `summary`
    holds single numbers (bias index, its interval, counts).
    """

    axis: str
    component: str
    neuron: dict[str, torch.Tensor] = field(default_factory=dict)
    head: dict[str, torch.Tensor] = field(default_factory=dict)  # [layers, heads]: attention heads
    layer: dict[str, torch.Tensor] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)


class Scorer(Protocol):
    """What a scorer plugin provides."""

    name: str
    description: str

    def compute(self, stats: ActivationStats, loaded: LoadedModel, scores: AxisScores, params) -> None:
        """Add columns to `scores` (in place). `params` is an instance of `Params`."""
