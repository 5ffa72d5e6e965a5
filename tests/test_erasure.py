"""Erasure folded into the weights (`fairaudit.repair.erasure`): the fold is the projection it
claims, the directions are the singular vectors they are defined as, the planner removes a
planted bias where random directions do not, and the saved model is a plain `transformers` model."""

from __future__ import annotations

import json

import pytest
import torch

from fairaudit.config import CausalParams
from fairaudit.errors import ModelError
from fairaudit.inputs.model import load_model
from fairaudit.inputs.suite import resolve_suite
from fairaudit.measurement import metrics
from fairaudit.measurement.attribution import output_bias_values
from fairaudit.repair import erasure
from fairaudit.repair.causal import plan
from fairaudit.repair.prune import masked
from fairaudit.repair.units import selection_of
from fairaudit.resources import corpus_path
from fairaudit.testing import make_model, make_planted_model


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted model (a folder, loaded, and the bundled corpus' ids); planning leaves its weights as they were."""
    folder = tmp_path_factory.mktemp("erasure") / "planted"
    make_planted_model(folder)
    loaded = load_model(str(folder))
    return folder, loaded, loaded.tokenizer(corpus_path().read_text(encoding="utf-8"))["input_ids"]


def _random_erasure(d: int, rank: int, strength: float) -> erasure.Erasure:
    q, _ = torch.linalg.qr(torch.randn(d, rank, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    return erasure.Erasure(q, [strength] * rank, ["race"] * rank)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_fold_is_the_projection_of_every_write_and_the_weights_come_back(family, tmp_path):
    loaded = load_model(str(make_model(family, tmp_path / family)))
    d = loaded.model.config.hidden_size
    chosen = _random_erasure(d, 2, 0.7)
    modules = erasure.writes(loaded)
    assert len(modules) == 2 * len(loaded.layers)
    original = [(m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone()) for m in modules]
    inputs = [torch.randn(3, m.in_features if isinstance(m, torch.nn.Linear) else m.weight.shape[0]) for m in modules]
    with torch.no_grad():
        outputs = [m(x).double() for m, x in zip(modules, inputs)]
        with erasure.folded(loaded, chosen):
            u = chosen.directions
            for module, x, y in zip(modules, inputs, outputs):  # by hand: (I - s U U^T) y
                expected = y - 0.7 * (y @ u) @ u.T
                torch.testing.assert_close(module(x).double(), expected, atol=1e-5, rtol=1e-5)
            erasure.check_writes(loaded, chosen)  # at strength 1, no layer adds anything along U
    for module, (weight, bias) in zip(modules, original):
        assert torch.equal(module.weight, weight)
        assert bias is None or torch.equal(module.bias, bias)


def test_a_direction_s_first_layer_leaves_the_layers_before_it_as_they_were(tmp_path):
    loaded = load_model(str(make_model("llama", tmp_path / "llama", layers=3)))
    d = loaded.model.config.hidden_size
    two = _random_erasure(d, 2, 1.0)
    late = erasure.Erasure(two.directions, [1.0, 0.5], ["race", "gender"], [1, 2])
    modules = erasure.writes(loaded)
    inputs = [torch.randn(3, m.in_features) for m in modules]
    with torch.no_grad():
        outputs = [m(x).double() for m, x in zip(modules, inputs)]
        with erasure.folded(loaded, late):
            u = late.directions
            for position, (module, x, y) in enumerate(zip(modules, inputs, outputs)):
                layer = position // 2  # by hand: layer 0 as it was, layer 1 loses race's, layer 2 both (gender's half)
                expected = (
                    y - (layer >= 1) * (y @ u[:, :1]) @ u[:, :1].T - 0.5 * (layer >= 2) * (y @ u[:, 1:]) @ u[:, 1:].T
                )
                torch.testing.assert_close(module(x).double(), expected, atol=1e-5, rtol=1e-5)
    assert late.at({"gender": (0.25, 1)}).first_layers == [1] and late.at({"gender": (0.25, 1)}).strengths == [0.25]
    back = erasure.Erasure.from_dict(late.as_dict())
    assert back.first_layers == [1, 2] and erasure.random_like(late, 0).first_layers == [1, 2]
    older = {
        key: value for key, value in late.as_dict().items() if key != "first_layers"
    }  # written before first layers
    assert erasure.Erasure.from_dict(older).first_layers == [0, 0]


def test_erase_from_must_be_shares_of_the_depth_below_one():
    assert CausalParams(erase_from=[0.5, 0, 0.5]).erase_from == [0, 0.5]
    assert CausalParams(strengths=[1.0]).strengths == [1.0]
    with pytest.raises(ValueError, match="erase_from are shares of the depth"):
        CausalParams(erase_from=[1.0])
    with pytest.raises(ValueError, match="strengths are shares"):
        CausalParams(strengths=[0.0])


def test_the_directions_are_the_top_singular_vectors_of_the_pair_differences(tmp_path):
    loaded = load_model(str(make_model("llama", tmp_path / "llama", layers=3)))
    pairs = resolve_suite("race").pairs("probe")[:6]
    stream = {}
    for side in ("a", "b"):  # by hand: each text alone, HF's hidden states after every layer but the last (normed)
        rows = []
        for pair in pairs:
            ids = loaded.tokenizer(getattr(pair, f"text_{side}"), return_tensors="pt")
            with torch.no_grad():
                hidden = loaded.model(**ids, output_hidden_states=True).hidden_states
            rows.append(torch.stack([h[0, -1].double() for h in hidden[1:-1]]))
        stream[side] = torch.stack(rows)
    computed = erasure.residuals(loaded, [p.text_a for p in pairs])
    torch.testing.assert_close(computed[:, :-1], stream["a"], atol=1e-5, rtol=1e-5)
    other = erasure.residuals(loaded, [p.text_b for p in pairs])
    scale = torch.sqrt((computed.pow(2).sum(-1) + other.pow(2).sum(-1)) / (2 * computed.shape[-1]))
    gram = ((computed - other) / scale[..., None]).reshape(-1, computed.shape[-1])
    top = torch.linalg.eigh(gram.T @ gram).eigenvectors[:, -1]  # the top right singular vector, another way
    found = erasure.axis_directions(loaded, pairs, 1)[:, 0]
    assert abs(float(found @ top)) == pytest.approx(1.0, abs=1e-6)
    fitted = erasure.fit(loaded, {"race": pairs, "gender": resolve_suite("gender").pairs("probe")[:6]}, 1)
    torch.testing.assert_close(fitted.directions.T @ fitted.directions, torch.eye(2, dtype=torch.float64))


def test_erasure_is_refused_where_a_norm_follows_the_writes(tmp_path):
    loaded = load_model(str(make_model("gemma3", tmp_path / "gemma3")))
    with pytest.raises(ModelError, match="norm sits after"):
        erasure.check_writes(loaded, _random_erasure(loaded.model.config.hidden_size, 1, 1.0))


def test_the_planner_erases_a_planted_bias_that_random_directions_leave(planted):
    _, loaded, ids = planted
    suites = [resolve_suite("race"), resolve_suite("nationality")]
    found = plan(loaded, suites, CausalParams(method="erase", strengths=[0.5, 1.0], erase_from=[0]), ids)
    assert [gate.active for gate in found.gates] == [True, False]  # nationality carries no planted bias
    assert [(row["axis"], row["budget"]) for row in found.budgets] == [("race", 0.5), ("race", 1.0), ("together", None)]
    assert found.budgets[1]["validation_abs_bias_kept"] < found.budgets[0]["validation_abs_bias_kept"] < 1
    assert found.budgets[2]["validation_abs_bias_kept"] == found.budgets[1]["validation_abs_bias_kept"]  # one axis
    chosen = found.selection.erasure
    assert (chosen.rank, chosen.strengths, chosen.axes) == (1, [1.0], ["race"])
    assert found.as_dict()["erasure"]["directions"] == chosen.directions.T.tolist()
    assert found.as_dict()["chosen_strengths"] == {"race": 1.0}
    heldout = [p for p in suites[0].pairs("heldout") if metrics.output_bias_terms(p)]
    before = abs(float(output_bias_values(loaded, heldout).mean()))
    with masked(loaded, found.selection):
        after = abs(float(output_bias_values(loaded, heldout).mean()))
    random = selection_of([], found.selection.widths)
    random.erasure = erasure.random_like(chosen, seed=0)
    with masked(loaded, random):
        after_random = abs(float(output_bias_values(loaded, heldout).mean()))
    assert after < 0.3 * before  # held-out templates, never read by the plan
    assert after_random > 0.7 * before


def test_a_compare_audit_saves_a_plain_erased_model_and_compares_random_directions(planted, tmp_path):
    import transformers

    from fairaudit.config import RunConfig
    from fairaudit.pipeline.audit import audit

    folder, original, _ = planted
    config = {
        "model": str(folder),
        "suites": ["race"],
        "store": str(tmp_path / "store"),
        "probe": {"plugin": "activations", "params": {"progress": False}},
        "pruning": {
            "out": str(tmp_path / "pruned"),
            "causal": {"method": "compare", "strengths": [1.0], "budgets": [0.002], "rounds": 1},
        },
        "evaluators": [{"plugin": "random_baseline", "params": {"seeds": 2, "permutations": 200}}],
        "diagnose_top": 0,
    }
    result = audit(RunConfig.model_validate(config))
    compared = result.pruned["causal"]["compared"]  # planted: one neuron keeps 78% of race, erasure 1%
    assert compared["chosen"] == "erase" and compared["erase"]["validation_abs_bias_kept"] < 0.1
    assert result.pruned["causal"]["method"] == "erase" and result.pruned["removed"] == 0
    saved = erasure.saved(result.pruned["out"])
    assert saved is not None and (saved.rank, saved.strengths, saved.axes) == (1, [1.0], ["race"])
    found = {
        row["metric"]: row["value"]
        for row in result.measurements
        if row["evaluator"] == "random_baseline" and row["role"] == "after"
    }
    assert found["reduction"] > 0.7 and found["random_reduction"] < 0.3, found  # random directions: the baseline
    plain = transformers.AutoModelForCausalLM.from_pretrained(result.pruned["out"])  # no fairaudit code needed
    ids = original.tokenizer("The nurse said that", return_tensors="pt")["input_ids"]
    with torch.no_grad(), erasure.folded(original, saved):
        expected = original.model(ids).logits
        torch.testing.assert_close(plain(ids).logits, expected, atol=1e-4, rtol=1e-4)
    html = result.report.read_text(encoding="utf-8")
    assert "Erasure (the documentation" in html and "<th>axis erased</th><th>strength</th>" in html
    assert "<th>validation facts: accuracy change</th>" in html and "validation-fact accuracy" in html
    assert (
        "Both repairs were planned from these gates" in html and "The one that keeps less, erasure, was applied" in html
    )
    assert "race: against random directions of the same number and strength, |output-level bias| on held-out" in html


def _acceptable(rows: list[dict], kept: str = "abs_bias_kept") -> list[dict]:
    """By hand, the planner's rule: within perplexity +2% and 2% of the facts lost (checked first:
    a row over either has no bias figures), some bias removed, no axis left alone made worse."""
    return [
        row
        for row in rows
        if row["slice_perplexity_rise"] <= 0.02
        and row["fact_accuracy_change"] >= -0.02
        and row[kept] < 1
        and not row["made_worse"]
    ]


def test_with_several_axes_the_plan_keeps_the_best_acceptable_combination(planted):
    _, loaded, ids = planted
    suites = [resolve_suite(axis) for axis in ("race", "gender", "religion")]  # each carries a planted bias
    found = plan(loaded, suites, CausalParams(method="erase", strengths=[1.0], erase_from=[0]), ids)
    labels = [row["axis"] for row in found.budgets]
    assert labels == ["race", "gender", "religion", "together", "race only", "gender only", "religion only"]
    combinations = found.budgets[3:]
    kept = [row for row in combinations if row.get("chosen")]
    assert len(kept) == 1
    acceptable = _acceptable(combinations, "validation_abs_bias_kept")
    assert kept[0]["validation_abs_bias_kept"] == min(row["validation_abs_bias_kept"] for row in acceptable)
    erased = found.selection.erasure.axes
    assert erased == (["race", "gender", "religion"] if kept[0]["axis"] == "together" else [kept[0]["axis"][:-5]])


def test_each_axis_strength_and_first_layer_are_chosen_together_on_validation(planted):
    _, loaded, ids = planted
    params = CausalParams(method="erase", strengths=[0.5, 1.0], erase_from=[0, 0.5])
    found = plan(loaded, [resolve_suite("race")], params, ids)
    half = round(0.5 * len(loaded.layers))
    rows = found.budgets[:-1]
    assert [(row["budget"], row["first_layer"]) for row in rows] == [(0.5, 0), (1.0, 0), (0.5, half), (1.0, half)]
    acceptable = _acceptable(rows)
    best = min(acceptable, key=lambda row: row["abs_bias_kept"])  # by hand: the acceptable row that keeps least
    chosen = found.selection.erasure
    assert (chosen.strengths, chosen.first_layers) == ([best["budget"]], [best["first_layer"]])
    assert found.as_dict()["erased_from"] == {"race": best["first_layer"]}


def test_compare_plans_both_from_the_same_gates_and_keeps_the_one_that_keeps_less(planted):
    _, loaded, ids = planted
    suites = [resolve_suite("race"), resolve_suite("nationality")]
    params = {"budgets": [0.01], "rounds": 1, "strengths": [0.5, 1.0]}
    alone = {
        method: plan(loaded, suites, CausalParams(method=method, **params), ids) for method in ("neurons", "erase")
    }
    found = plan(loaded, suites, CausalParams(method="compare", **params), ids)
    chosen = {
        "neurons": alone["neurons"].budgets[0],
        "erase": next(row for row in alone["erase"].budgets if row.get("chosen")),
    }
    for key in ("abs_bias_kept", "validation_abs_bias_kept", "slice_perplexity_rise", "fact_accuracy_change"):
        assert {method: found.compared[method][key] for method in chosen} == {m: r[key] for m, r in chosen.items()}
    kept = {method: row["abs_bias_kept"] for method, row in chosen.items()}  # templates and statements together
    winner = min(kept, key=kept.get)
    assert found.method == found.compared["chosen"] == winner
    assert found.budgets == alone[winner].budgets  # the same plan as the method alone makes
    assert (found.selection.erasure is not None) == (winner == "erase")
    assert found.as_dict()["compared"]["chosen"] == winner


def test_compare_on_an_architecture_erasure_refuses_keeps_the_neurons_and_says_why(planted, monkeypatch):
    _, loaded, ids = planted

    def refuse(loaded, fitted):
        raise ModelError("a norm sits after its writes")

    monkeypatch.setattr(erasure, "check_writes", refuse)
    params = {"budgets": [0.01], "rounds": 1, "strengths": [1.0]}
    said = []
    found = plan(loaded, [resolve_suite("race")], CausalParams(method="compare", **params), ids, said.append)
    assert found.method == "neurons" and found.selection is not None and found.selection.erasure is None
    assert found.compared["erase"] is None and found.compared["erase_refused"] == "a norm sits after its writes"
    assert any("erase was refused" in line for line in said)
    with pytest.raises(ModelError, match="norm sits after"):  # asked for erasure alone, the refusal stands
        plan(loaded, [resolve_suite("race")], CausalParams(method="erase", **params), ids)


def test_an_erasure_file_that_is_not_one_is_refused_with_its_path(tmp_path):
    assert erasure.saved(tmp_path) is None  # a model without an erasure
    (tmp_path / erasure.ERASURE_FILE).write_text('{"directions": [[1, 0]], "axes": ["race"]}', encoding="utf-8")
    with pytest.raises(ModelError, match="is not an erasure fairaudit wrote"):
        erasure.saved(tmp_path)
    chosen = _random_erasure(4, 2, 0.5)
    (tmp_path / erasure.ERASURE_FILE).write_text(json.dumps(chosen.as_dict()), encoding="utf-8")
    back = erasure.saved(tmp_path)
    assert (
        torch.equal(back.directions, chosen.directions) and back.strengths == [0.5, 0.5] and back.axes == ["race"] * 2
    )


def test_the_printed_summary_says_an_erasure_was_applied_not_that_nothing_was_pruned():
    from fairaudit.cli.output import erasure_said, repaired

    assert erasure_said({"chosen_strengths": {"religion": 1.0, "race": 0.25}}) == (
        "erased the counterfactual direction of religion (strength 1), race (strength 0.25) from every layer's "
        "attention and MLP writes"
    )
    assert erasure_said({"chosen_strengths": {"religion": 0.75}, "erased_from": {"religion": 10}}) == (
        "erased the counterfactual direction of religion (strength 0.75, from layer 10) from those layers' "
        "attention and MLP writes"
    )
    assert erasure_said({"chosen_budget": 0.0005}) is None and erasure_said(None) is None
    pruned = {"removed": 23, "neurons": 46080, "parameters_before": 10, "parameters_after": 10, "out": "m"}
    assert repaired(pruned) == "pruned 23 of 46080 MLP neurons; parameters 10 -> 10; model in m"
    erased = {**pruned, "removed": 0, "causal": {"chosen_strengths": {"religion": 1.0}}}
    assert repaired(erased).startswith("erased the counterfactual direction of religion (strength 1)")
