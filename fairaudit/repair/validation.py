"""Measuring a candidate edit on validation data: the unedited model's figures once, then each
candidate's (a budget's neurons for `fairaudit.repair.causal`, an erasure's strength for
`fairaudit.repair.erasure`), and whether it is acceptable."""

from __future__ import annotations

import copy
import math
from typing import Any

from fairaudit.lazy import torch


def corpus_perplexity(loaded, ids: list[int], selection=None) -> float:
    """Perplexity of the token ids `ids` (512-token windows), with `selection` masked."""
    from fairaudit.measurement.evaluate import window_nll
    from fairaudit.repair.prune import masked

    context = masked(loaded, selection) if selection is not None else torch.no_grad()
    with context:
        windows = window_nll(loaded, ids, 512, None, 4)
    return math.exp(sum(n for n, _ in windows) / sum(t for _, t in windows))


def mean_output_bias(loaded, pairs: list, selection=None) -> float:
    """The mean output-level bias m of `pairs`, with `selection` masked."""
    from fairaudit.measurement.attribution import output_bias_values
    from fairaudit.repair.prune import masked

    if selection is None:
        return float(output_bias_values(loaded, pairs).mean())
    with masked(loaded, selection):
        return float(output_bias_values(loaded, pairs).mean())


class Before:
    """The unedited model's validation output bias (every watched axis) and corpus-slice
    perplexity, against which a candidate edit (a budget's neurons, an erasure's strength) is measured."""

    def __init__(self, loaded, validation: dict[str, list[Any]], active: list[str], slice_ids: list[int], params):
        from fairaudit.measurement.attribution import output_bias_values

        self.loaded, self.validation, self.active = loaded, validation, active
        self.slice_ids, self.params = slice_ids, params
        watched = [axis for axis in validation if axis in active or params.collateral]
        self.perplexity = corpus_perplexity(loaded, slice_ids)
        self.bias = {axis: output_bias_values(loaded, validation[axis]) for axis in watched}

    def narrowed(self, active: list[str]) -> Before:
        """The same figures, with only `active` in the objective (the other watched axes stay checked for collateral)."""
        narrow = copy.copy(self)
        narrow.active = active
        return narrow

    def measure(self, edit) -> dict[str, Any]:
        """A candidate's row: the share of the active axes' validation |m| kept, the slice's
        perplexity rise, each active axis' validation m, and (with `collateral`) each left-alone
        axis' change of |m| and whether its interval lies above 0 (`made_worse`)."""
        from fairaudit.measurement.attribution import output_bias_values
        from fairaudit.measurement.metrics import magnitude_change_interval

        with edit:
            rise = corpus_perplexity(self.loaded, self.slice_ids) / self.perplexity - 1
            after = {axis: output_bias_values(self.loaded, self.validation[axis]) for axis in self.bias}
        kept = sum(abs(float(after[axis].mean())) for axis in self.active) / max(
            sum(abs(float(self.bias[axis].mean())) for axis in self.active), 1e-12
        )
        worse, moved = [], {}
        for axis in self.bias:
            if axis not in self.active:
                templates = [pair.template_id for pair in self.validation[axis]]
                change, low, _ = magnitude_change_interval(self.bias[axis], after[axis], templates)
                moved[f"left_alone_abs_change_{axis}"] = change
                worse += [axis] if low > 0 else []
        return {
            "validation_abs_bias_kept": kept,
            "slice_perplexity_rise": rise,
            **{f"validation_bias_{axis}": float(after[axis].mean()) for axis in self.active},
            **moved,
            **({"made_worse": worse} if self.params.collateral else {}),
        }

    def acceptable(self, row: dict[str, Any]) -> bool:
        """Within the perplexity limit, some bias removed, no axis left alone made worse."""
        return (
            row["slice_perplexity_rise"] <= self.params.max_perplexity_rise
            and row["validation_abs_bias_kept"] < 1
            and not row.get("made_worse")
        )


def said(row: dict[str, Any]) -> str:
    worse = row.get("made_worse")
    return (
        f"validation |m| kept {row['validation_abs_bias_kept']:.2f}, corpus-slice perplexity "
        f"{row['slice_perplexity_rise']:+.2%}"
        + (f"; moves {', '.join(worse)} away from zero: rejected" if worse else "")
    )
