"""Where each policy metric lives in the store (`METRICS`): the evaluator and metric that
measure it, whether it is one model's level or a before/after change, and what it means."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MetricSource:
    """Where a policy metric lives in the store.

    `kind` "level": a measurement of one model (`evaluations` table, per role);
    "change": a paired before/after comparison (`comparisons` table), so it exists for the
    pruned model only; `field` is "change" (absolute), "relative_change", or "abs_change"
    (|after| - |before|: positive when a signed quantity moved away from zero);
    `transform` "exp_minus_one" maps a change of mean NLL to the relative change of perplexity."""

    evaluator: str
    metric: str
    kind: Literal["level", "change"]
    description: str
    field: str = "change"
    transform: str = ""
    per_axis: bool = True  # False: one value for the model (axis "")


METRICS: dict[str, MetricSource] = {
    "stereotype_preference": MetricSource(
        "output_bias",
        "stereotype_preference",
        "level",
        "mean over pairs of [log p(negative | a) - log p(negative | b)] - [same for the neutral continuation], nats; 0 = no preference",
    ),
    "statement_preference": MetricSource(
        "output_bias",
        "statement_preference",
        "level",
        "statements: mean over pairs of [log p(sentence naming a | negative context) - log p(naming b | negative "
        "context)] - [same after the neutral context], nats; 0 = no preference",
    ),
    "pct_stereotype": MetricSource(
        "output_bias",
        "pct_stereotype",
        "level",
        "CrowS-Pairs: share of sentence pairs where the more stereotyping sentence is more likely; 0.5 = ideal",
    ),
    "signed_likelihood_diff": MetricSource(
        "output_bias",
        "signed_likelihood_diff",
        "level",
        "CrowS-Pairs: mean log-likelihood of the more stereotyping sentence minus the other's, nats; 0 = ideal",
    ),
    "bbq_bias_ambiguous": MetricSource(
        "output_bias",
        "bbq_bias_ambiguous",
        "level",
        "BBQ s_AMB (Parrish et al. 2022): (1 - accuracy) x s_DIS on ambiguous contexts, in [-1, 1]; 0 = ideal",
    ),
    "bbq_bias_disambiguated": MetricSource(
        "output_bias",
        "bbq_bias_disambiguated",
        "level",
        "BBQ s_DIS: 2 x share of biased answers among answers naming a person - 1, disambiguated contexts; 0 = ideal",
    ),
    "bbq_accuracy_ambiguous": MetricSource(
        "output_bias", "bbq_accuracy_ambiguous", "level", "BBQ: share of ambiguous questions answered 'unknown'"
    ),
    "bbq_accuracy_disambiguated": MetricSource(
        "output_bias", "bbq_accuracy_disambiguated", "level", "BBQ: share of disambiguated questions answered right"
    ),
    "stereoset_ss": MetricSource(
        "output_bias",
        "stereoset_ss",
        "level",
        "StereoSet stereotype score: share of items where the stereotype beats the anti-stereotype; 0.5 = ideal",
    ),
    "bias_index": MetricSource(
        "bias_reprobe", "bias_index", "level", "activation-divergence bias index on the probe templates"
    ),
    "bias_index_heldout": MetricSource(
        "bias_reprobe", "bias_index_heldout", "level", "activation-divergence bias index on the held-out templates"
    ),
    "bias_index_heldout_change": MetricSource(
        "bias_reprobe",
        "bias_index_heldout",
        "change",
        "relative change of the held-out bias index, pruned vs original",
        field="relative_change",
    ),
    "stereotype_preference_change": MetricSource(
        "output_bias",
        "stereotype_preference",
        "change",
        "change of the output-level preference, pruned minus original (nats)",
    ),
    "abs_stereotype_preference_change": MetricSource(
        "output_bias",
        "stereotype_preference",
        "change",
        "change of |output-level preference|, pruned minus original (nats): positive = the axis moved away from "
        "zero (collateral damage on an axis the repair left alone, or an overshoot)",
        field="abs_change",
    ),
    "abs_statement_preference_change": MetricSource(
        "output_bias",
        "statement_preference",
        "change",
        "change of |statement preference|, pruned minus original (nats): positive = the axis moved away from zero "
        "in the statement format, which the selection never reads",
        field="abs_change",
    ),
    "abs_bbq_bias_ambiguous_change": MetricSource(
        "output_bias",
        "bbq_bias_ambiguous",
        "change",
        "change of |BBQ ambiguous bias score|, pruned minus original: positive = the axis moved away from zero in "
        "the question format, which no selection reads",
        field="abs_change",
    ),
    "perplexity_change": MetricSource(
        "perplexity",
        "nll_per_token_bundled",
        "change",
        "relative change of perplexity on the bundled corpus, exp(change of mean NLL per token) - 1",
        transform="exp_minus_one",
        per_axis=False,
    ),
    "fact_accuracy": MetricSource(
        "facts", "fact_accuracy", "level", "factual-control accuracy (share of facts answered right)", per_axis=False
    ),
    "fact_accuracy_change": MetricSource(
        "facts", "fact_accuracy", "change", "change of factual-control accuracy, pruned minus original", per_axis=False
    ),
    "task_accuracy": MetricSource(
        "lm_eval", "acc", "level", "lm-evaluation-harness accuracy per task (axes are task names)"
    ),
    "task_accuracy_change": MetricSource(
        "lm_eval", "acc", "change", "change of lm-evaluation-harness accuracy per task, pruned minus original"
    ),
}
