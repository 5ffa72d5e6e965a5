"""fairaudit-peak: a worked third-party plugin for fairaudit (see docs/plugins.md).

It adds two components through the same hooks fairaudit's built-ins use:

- the scorer `peak_signed`: per MLP neuron, |mean signed activation difference| over the
  pairs (group a minus group b) times `scale`; a neuron that reacts in the same direction to
  every pair scores high, one whose differences cancel scores low;
- the evaluator `neutral_gap`: per template pair with continuations, |log p(neutral | prompt a)
  - log p(neutral | prompt b)|, how much naming one group instead of the other moves the
  likelihood of a neutral continuation (0 for a model the group word leaves unmoved).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fairaudit.hookspecs import hookimpl


class PeakSigned:
    name = "peak_signed"
    description = "|mean signed activation difference| per MLP neuron, times scale"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        scale: float = Field(default=1.0, gt=0)

    def outputs(self, params):
        return ["peak_signed"]

    def compute(self, stats, loaded, scores, params) -> None:
        component = stats.components[scores.component]  # sums over pairs, shape [layers, neurons]
        scores.neuron["peak_signed"] = (component.diff_sum / stats.n_pairs).abs() * params.scale


class NeutralGap:
    name = "neutral_gap"
    description = "|log p(neutral continuation | a) - log p(neutral | b)| per template pair"
    requires_causal = True

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        batch_size: int = Field(default=16, ge=1)

    def evaluate(self, loaded, suites, params, reference=None):
        from fairaudit.measurement.evaluate import EvaluationResult, loglikelihoods

        result = EvaluationResult()
        for suite in suites:
            pairs = [pair for pair in suite.pairs(None) if "neutral" in pair.continuations]
            if not pairs:
                continue
            requests = [(text, pair.continuations["neutral"]) for pair in pairs for text in (pair.text_a, pair.text_b)]
            values = loglikelihoods(loaded, requests, params.batch_size)
            gaps = {pair.pair_id: abs(values[2 * index] - values[2 * index + 1]) for index, pair in enumerate(pairs)}
            result.add_items(self.name, suite.axis, "neutral_gap", gaps)
        return result


@hookimpl
def register_scorers(register):
    register(PeakSigned())


@hookimpl
def register_evaluators(register):
    register(NeutralGap())
