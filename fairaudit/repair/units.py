"""Units (MLP neurons and attention heads) as a selection to prune: chosen, or at random."""

from __future__ import annotations

from fairaudit.lazy import torch
from fairaudit.repair.prune import Selection


def selection_of(units: list, widths: list[int], ranking: str = ""):
    """A `fairaudit.repair.prune.Selection` of `fairaudit.measurement.attribution.Unit`s (neurons and heads)."""
    per_layer = [
        sorted({unit.index for unit in units if unit.kind == "neuron" and unit.layer == index})
        for index in range(len(widths))
    ]
    heads = sorted({(unit.layer, unit.index) for unit in units if unit.kind == "head"})
    return Selection([torch.tensor(chosen, dtype=torch.long) for chosen in per_layer], list(widths), ranking, heads)


def random_selection(
    counts: list[int], widths: list[int], seed: int, head_counts: list[int] | None = None, heads: int = 0
) -> Selection:
    """`counts[l]` neurons of layer l chosen uniformly at random, and `head_counts[l]` of its
    `heads` attention heads (the baseline a chosen selection of the same size per layer and
    per kind must beat)."""
    generator = torch.Generator().manual_seed(seed)
    pruned = [
        torch.sort(torch.randperm(width, generator=generator)[:count]).values for count, width in zip(counts, widths)
    ]
    chosen_heads = [
        (layer, int(head))
        for layer, count in enumerate(head_counts or [])
        if count
        for head in torch.randperm(heads, generator=generator)[:count].sort().values
    ]
    return Selection(pruned=pruned, widths=list(widths), ranking=f"random (seed {seed})", heads=chosen_heads)
