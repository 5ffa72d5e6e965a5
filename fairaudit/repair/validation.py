"""Measuring a candidate edit on validation data: the unedited model's figures once, then each
candidate's (a budget's neurons for `fairaudit.repair.causal`, an erasure's strength for
`fairaudit.repair.erasure`), and whether it is acceptable."""

from __future__ import annotations

import copy
import math
from typing import Any

from fairaudit.lazy import torch
from fairaudit.measurement.facts import VALIDATION_FACTS, read_facts, scored_facts


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


def guard_facts(params) -> list[dict]:
    """The fact guard's facts (the bundled validation facts; none when `max_fact_drop` is 1): the
    `facts` evaluator measures others (`fairaudit.measurement.facts`)."""
    return read_facts(bundled=VALIDATION_FACTS) if params.max_fact_drop < 1 else []


class Before:
    """The unedited model's validation output bias (every watched axis: its validation templates and,
    with `statements`, its probe statements, a format the selection never reads), corpus-slice
    perplexity and (unless `max_fact_drop` is 1) validation facts, against which a candidate edit (a
    budget's neurons, an erasure's strength) is measured."""

    def __init__(
        self,
        loaded,
        validation: dict[str, list[Any]],
        active: list[str],
        slice_ids: list[int],
        params,
        statements: dict[str, list[Any]] | None = None,
    ):
        from fairaudit.measurement.attribution import output_bias_values

        self.loaded, self.active, self.slice_ids, self.params = loaded, active, slice_ids, params
        watched = [axis for axis in validation if axis in active or params.collateral]
        # format -> axis -> pairs: what each candidate is measured on
        self.formats = {"templates": {axis: validation[axis] for axis in watched}}
        found = {axis: (statements or {}).get(axis, []) for axis in watched}
        if any(len(pairs) > 1 for pairs in found.values()):  # suites without statements: templates alone
            self.formats["statements"] = {axis: pairs for axis, pairs in found.items() if len(pairs) > 1}
        self.perplexity = corpus_perplexity(loaded, slice_ids)
        self.facts = guard_facts(params)
        self.fact_scores = scored_facts(loaded, self.facts)
        self.bias = {
            name: {axis: output_bias_values(loaded, pairs) for axis, pairs in chosen.items()}
            for name, chosen in self.formats.items()
        }

    def narrowed(self, active: list[str]) -> Before:
        """The same figures, with only `active` in the objective (the other watched axes stay checked for collateral)."""
        narrow = copy.copy(self)
        narrow.active = active
        return narrow

    def measure(self, edit) -> dict[str, Any]:
        """A candidate's row: `abs_bias_kept`, the objective: the active axes' |m| after over |m| before,
        each summed over the axes and formats (validation templates, and probe statements); each
        format's own share (`validation_abs_bias_kept`, `statements_abs_bias_kept`); the slice's
        perplexity rise; each active axis' validation m; and (with `collateral`) each left-alone
        axis' change of |m| per format and whether its interval lies above 0 (`made_worse`).
        The perplexity and the facts are measured first: a candidate over either limit is rejected
        whatever its bias, so its row has them alone and `over` names the limit (its bias is not measured)."""
        from fairaudit.measurement.attribution import output_bias_values

        with edit:
            row: dict[str, Any] = {
                "slice_perplexity_rise": corpus_perplexity(self.loaded, self.slice_ids) / self.perplexity - 1
            }
            if self.facts:
                row.update(fact_changes(self.fact_scores, scored_facts(self.loaded, self.facts)))
            over = self._over(row)
            if over:
                return {**row, "over": over}
            after = {
                name: {axis: output_bias_values(self.loaded, pairs) for axis, pairs in chosen.items()}
                for name, chosen in self.formats.items()
            }
        magnitudes = {
            name: [
                sum(abs(float(values[axis].mean())) for axis in self.active if axis in values)
                for values in (self.bias[name], after[name])
            ]
            for name in self.formats
        }
        row["abs_bias_kept"] = sum(a for _, a in magnitudes.values()) / max(
            sum(b for b, _ in magnitudes.values()), 1e-12
        )
        for name, (before, kept) in magnitudes.items():
            if name == "templates" or before > 0:  # a format none of the active axes has is not a share
                row[f"{'validation' if name == 'templates' else name}_abs_bias_kept"] = kept / max(before, 1e-12)
        row.update({f"validation_bias_{axis}": float(after["templates"][axis].mean()) for axis in self.active})
        row.update(self._collateral(after))
        return row

    def _over(self, row: dict[str, Any]) -> str | None:
        """The limit a candidate's perplexity rise or fact change is over ('perplexity', 'facts'), or None."""
        if row["slice_perplexity_rise"] > self.params.max_perplexity_rise:
            return "perplexity"
        return "facts" if row.get("fact_accuracy_change", 0.0) < -self.params.max_fact_drop else None

    def _collateral(self, after: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Each left-alone axis' change of |m| per format (`left_alone_abs_change_AXIS`, and
        `..._statements_AXIS`) and, with `collateral`, the axes (and formats) it moved away from zero."""
        from fairaudit.measurement.metrics import magnitude_change_interval

        worse, moved = [], {}
        for name, values in self.bias.items():
            suffix = "" if name == "templates" else f"{name}_"
            for axis in values:
                if axis in self.active:
                    continue
                clusters = [pair.template_id for pair in self.formats[name][axis]]
                change, low, _ = magnitude_change_interval(values[axis], after[name][axis], clusters)
                moved[f"left_alone_abs_change_{suffix}{axis}"] = change
                worse += [axis if name == "templates" else f"{axis} ({name})"] if low > 0 else []
        return {**moved, **({"made_worse": worse} if self.params.collateral else {})}

    def acceptable(self, row: dict[str, Any]) -> bool:
        """Within the perplexity and fact limits, some bias removed, no axis left alone made worse."""
        return not self._over(row) and row["abs_bias_kept"] < 1 and not row.get("made_worse")


def fact_changes(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> dict[str, float]:
    """The validation facts' change, edited minus unedited: the share answered right
    (`fact_accuracy_change`) and the mean log-probability of the correct answers (`fact_logprob_change`),
    from each fact's (correct log-probability, margin) as `scored_facts` gives them."""
    pairs, count = list(zip(before, after)), max(len(before), 1)
    return {
        "fact_accuracy_change": sum((margin > 0) - (was > 0) for (_, was), (_, margin) in pairs) / count,
        "fact_logprob_change": sum(logprob - had for (had, _), (logprob, _) in pairs) / count,
    }


def said(row: dict[str, Any]) -> str:
    worse = row.get("made_worse")
    statements = row.get("statements_abs_bias_kept")
    over = row.get("over")
    return (
        (
            f"over the {over} limit, bias not measured"
            if over
            else f"validation |m| kept {row['validation_abs_bias_kept']:.2f}"
        )
        + (
            f" (templates; statements {statements:.2f}, both {row['abs_bias_kept']:.2f})"
            if statements is not None
            else ""
        )
        + f", corpus-slice perplexity "
        f"{row['slice_perplexity_rise']:+.2%}"
        + (f", validation facts {row['fact_accuracy_change']:+.3f}" if "fact_accuracy_change" in row else "")
        + (f"; moves {', '.join(worse)} away from zero: rejected" if worse else "")
    )
