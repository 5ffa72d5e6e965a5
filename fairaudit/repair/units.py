"""Units (MLP neurons and attention heads) as a selection to prune."""

from __future__ import annotations

from fairaudit.lazy import torch


def selection_of(units: list, widths: list[int], ranking: str = ""):
    """A `fairaudit.repair.prune.Selection` of `fairaudit.measurement.attribution.Unit`s (neurons and heads)."""
    from fairaudit.repair.prune import Selection

    per_layer = [
        sorted({unit.index for unit in units if unit.kind == "neuron" and unit.layer == index})
        for index in range(len(widths))
    ]
    heads = sorted({(unit.layer, unit.index) for unit in units if unit.kind == "head"})
    return Selection([torch.tensor(chosen, dtype=torch.long) for chosen in per_layer], list(widths), ranking, heads)
