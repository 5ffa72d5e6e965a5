"""Signed bias: on a planted model with pro- and anti-stereotype neurons, pruning only the
neurons that push toward the stereotype moves the output bias toward zero without crossing
it, and unsigned selection does worse."""

from __future__ import annotations

import pytest
import torch

from fairaudit.analysis.overlap import load_scores
from fairaudit.config import RunConfig
from fairaudit.inputs.model import load_model
from fairaudit.inputs.suite import resolve_suite
from fairaudit.pipeline.audit import audit
from fairaudit.plugins import registry
from fairaudit.repair.prune import Selection, SelectionParams, masked, select
from fairaudit.store import Store
from fairaudit.testing import make_planted_model


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("signed")
    truth = make_planted_model(root / "model", seed=1, anti_per_axis=3)
    result = audit(
        RunConfig.model_validate(
            {
                "model": str(root / "model"),
                "suites": ["race"],
                "store": str(root / "store"),
                "probe": {"plugin": "activations", "params": {"progress": False}},
                "pruning": None,
                "evaluators": [],
                "report": False,
            }
        )
    )
    return truth, load_model(str(root / "model")), Store(root / "store"), result


def race_gap(loaded) -> float:
    output_bias = registry().get("evaluator", "output_bias")
    result = output_bias.evaluate(loaded, [resolve_suite("race")], output_bias.Params(), None)
    return next(m.value for m in result.measurements if m.axis == "race" and m.metric == "stereotype_preference")


def test_stereotype_push_has_the_planted_sign(planted):
    truth, _, store, result = planted
    push = load_scores(store, result.model_id, "stereotype_push", result.run_id).by_axis["race"]
    for neuron in truth.neurons:
        if "race" in neuron.axes and not neuron.important:
            assert (push[neuron.layer, neuron.neuron] < 0) == neuron.anti, neuron


def test_signed_selection_prunes_only_pro_neurons_and_does_better(planted):
    truth, loaded, store, result = planted
    scores = {"race": torch.from_numpy(load_scores(store, result.model_id, "hybrid", result.run_id).by_axis["race"])}
    push = {
        "race": torch.from_numpy(load_scores(store, result.model_id, "stereotype_push", result.run_id).by_axis["race"])
    }
    pro = {(n.layer, n.neuron) for n in truth.neurons if "race" in n.axes and not n.anti}
    fraction = 2 / 128  # the two neurons each selection ranks first
    common = dict(axes=["race"], score="hybrid", fraction=fraction, layers=[1], protect=0.01)
    signed = select(scores, SelectionParams(direction="pro", **common), push=push)
    unsigned = select(scores, SelectionParams(**common))
    chosen = {(1, int(n)) for n in signed.pruned[1]}
    assert chosen <= pro and len(chosen) == round(fraction * 128), "only pro-stereotype neurons"
    assert {(1, int(n)) for n in unsigned.pruned[1]} & {(n.layer, n.neuron) for n in truth.neurons if n.anti}, (
        "unsigned selection also takes anti-stereotype neurons"
    )
    before = race_gap(loaded)
    with masked(loaded, signed):
        after_signed = race_gap(loaded)
    with masked(loaded, unsigned):
        after_unsigned = race_gap(loaded)
    assert before > 0 and 0 <= after_signed < before, "toward zero, without crossing it"
    assert abs(after_signed) < abs(after_unsigned), "unsigned selection does worse"


def test_pruning_a_bias_reactive_fact_neuron_shows_in_the_factual_control(tmp_path):
    truth = make_planted_model(tmp_path / "model", seed=2, fact_neuron=True)
    loaded = load_model(str(tmp_path / "model"))
    facts = tmp_path / "facts.jsonl"
    facts.write_text(
        "".join(
            f'{{"id": "f{i}", "category": "pronoun", "prompt": "{prompt}", "correct": " she", "distractors": [" he"]}}\n'
            for i, prompt in enumerate(
                ["The woman said", "The woman told the nurse that", "A woman came and", "The woman thought"]
            )
        )
    )
    control = registry().get("evaluator", "facts")

    def mean_logprob() -> float:
        result = control.evaluate(loaded, [], control.Params(file=str(facts)), None)
        return next(m.value for m in result.measurements if m.axis == "" and m.metric == "fact_logprob")

    fact = next(n for n in truth.neurons if n.fact)
    other = next(n for n in truth.neurons if "gender" in n.axes and not n.fact and not n.important and not n.anti)
    before = mean_logprob()
    with masked(
        loaded,
        Selection(
            [
                torch.tensor([fact.neuron]) if layer == fact.layer else torch.zeros(0, dtype=torch.long)
                for layer in range(4)
            ],
            [128] * 4,
        ),
    ):
        without_fact = mean_logprob()
    with masked(
        loaded,
        Selection(
            [
                torch.tensor([other.neuron]) if layer == other.layer else torch.zeros(0, dtype=torch.long)
                for layer in range(4)
            ],
            [128] * 4,
        ),
    ):
        without_other = mean_logprob()
    assert before - without_fact > 0.5, "the fact is lost with the neuron"
    assert abs(before - without_other) < 0.5 * (before - without_fact)
