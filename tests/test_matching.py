"""Neuron matching across architectures: a planted Llama and a planted GPT-2 with the same
planted neurons at different indices, layers and layer counts are matched neuron to neuron;
the matched overlap finds the planted shared set; unrelated axes and unrelated models stay at
chance; a rotated copy of a model matches itself."""

from __future__ import annotations

import numpy as np
import pytest

from fairaudit.analysis.corpus import corpus_chunks
from fairaudit.analysis.matching import (
    align_depth,
    match_neurons,
    matched_overlap,
    overlaps_through_matching,
    self_match_recovery,
    word_activations,
)
from fairaudit.analysis.overlap import load_scores, top_k
from fairaudit.config import RunConfig
from fairaudit.inputs.model import load_model
from fairaudit.inputs.suite import resolve_suite
from fairaudit.pipeline.audit import audit
from fairaudit.store import Store
from fairaudit.testing import make_model, make_planted_model, rotate_residual_stream

AXES = ["race", "gender", "religion", "nationality"]
TOP = 7  # the 7 planted neurons of race (and of gender): 4 of its own, 3 shared with the other


def _corpus(words: int = 3000) -> str:
    """Text in which the planted neurons' words occur: the suites' own prompts."""
    per_axis = [
        [text for pair in resolve_suite(axis).pairs(None) for text in (pair.text_a, pair.text_b)] for axis in AXES
    ]
    texts = [text for group in zip(*per_axis) for text in group]  # axes interleaved, so a short corpus covers all four
    return " ".join(" ".join(texts).split()[:words])


def _audit(folder, store, axes=AXES):
    return audit(
        RunConfig.model_validate(
            {
                "model": str(folder),
                "suites": axes,
                "store": str(store),
                "pruning": None,
                "evaluators": [],
                "report": False,
                "diagnose_top": 0,
                "probe": {"plugin": "activations", "params": {"progress": False}},
            }
        )
    )


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("matching")
    truth_a = make_planted_model(root / "llama", family="llama", layers=4, planted_layer=1, seed=0)
    truth_b = make_planted_model(root / "gpt2", family="gpt2", layers=6, planted_layer=3, seed=1, first_neuron=40)
    store = Store(root / "store")
    runs = [_audit(root / name, store.root) for name in ("llama", "gpt2")]
    chunks = corpus_chunks(_corpus())
    activations = [word_activations(load_model(str(root / name)), chunks) for name in ("llama", "gpt2")]
    return root, store, runs, (truth_a, truth_b), activations, match_neurons(*activations)


def test_depth_alignment_by_hand():
    scores = np.array(
        [[0.9, 0.1, 0.0], [0.1, 0.2, 0.8], [0.7, 0.1, 0.3]]
    )  # layer 2 would like layer 0, but order holds
    assert align_depth(scores) == [0, 2, 2]


def test_planted_neurons_are_matched_across_families(planted):
    _, _, _, (truth_a, truth_b), _, matching = planted
    assert matching.alignment[1] == 3  # the planted layers are aligned
    axes_b = {(n.layer, n.neuron): n.axes for n in truth_b.neurons}
    hits = [
        axes_b.get((matching.alignment[n.layer], int(matching.assignment[n.layer][n.neuron]))) == n.axes
        for n in truth_a.neurons
    ]
    assert sum(hits) / len(hits) >= 0.9, hits
    assert {n.neuron for n in truth_a.neurons} & {n.neuron for n in truth_b.neurons} == set()  # truly different indices


def test_matched_overlap_finds_the_planted_sets_and_unrelated_axes_stay_at_chance(planted):
    _, store, runs, _, _, matching = planted
    scores = [load_scores(store, run.model_id, "bias", run.run_id) for run in runs]
    results = {
        o.name: o
        for o in overlaps_through_matching(scores[0].by_axis, scores[1].by_axis, matching, TOP, permutations=999)
    }
    for name in ("race", "gender", "shared"):
        assert results[name].p_value < 0.002 and results[name].overlap > results[name].null_high, results[name]
    assert results["shared"].overlap >= 3  # the three race-and-gender neurons
    assert results["nationality"].p_value > 0.01  # no neuron was planted for it: noise in both models
    unrelated = matched_overlap(
        "race-vs-religion",
        top_k(scores[0].by_axis["race"], TOP),
        top_k(scores[1].by_axis["religion"], TOP),
        matching,
        permutations=999,
    )
    assert unrelated.overlap == 0 and unrelated.p_value == 1.0


def test_independently_initialised_random_models_are_at_chance(tmp_path):
    store = Store(tmp_path / "store")
    runs = [
        _audit(
            make_model(family, tmp_path / family, layers=3, hidden=32, intermediate=64, seed=seed), store.root, AXES[:3]
        )
        for family, seed in (("llama", 3), ("gpt2", 4))
    ]
    chunks = corpus_chunks(_corpus(1500))
    matching = match_neurons(
        *[word_activations(load_model(str(tmp_path / family)), chunks) for family in ("llama", "gpt2")]
    )
    scores = [load_scores(store, run.model_id, "bias", run.run_id) for run in runs]
    results = overlaps_through_matching(scores[0].by_axis, scores[1].by_axis, matching, 5, permutations=499)
    assert all(result.p_value > 0.001 for result in results), [(r.name, r.overlap, r.p_value) for r in results]
    assert (
        len(results) == 4 and sum(result.p_value < 0.05 for result in results) <= 1
    )  # at chance: at most one of four below 5%


def test_a_rotated_copy_matches_itself(planted, tmp_path):
    root, _, _, _, activations, _ = planted
    model = load_model(str(root / "llama"))
    rotate_residual_stream(model.model, seed=5)
    rotated = word_activations(model, corpus_chunks(_corpus()))
    for before, after in zip(activations[0], rotated):
        np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-3)  # the MLP neurons see what they saw before
    matching = match_neurons(activations[0], rotated)
    assert matching.alignment == list(range(len(rotated)))
    same = [
        np.corrcoef(activations[0][layer][:, index], rotated[layer][:, matching.assignment[layer][index]])[0, 1] > 0.999
        for layer in range(len(rotated))
        for index in range(rotated[layer].shape[1])
        if activations[0][layer][:, index].std() > 1e-6
    ]
    assert sum(same) / len(same) >= 0.99
    assert self_match_recovery(activations[0]) >= 0.9


def test_overlap_command_with_match_stores_and_prints_the_comparison(planted, cli, tmp_path):
    root, store, runs, _, _, _ = planted
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(_corpus(1500))
    result = cli(
        "overlap",
        store.root,
        "--model",
        runs[0].model_id,
        "--run",
        runs[0].run_id,
        "--model",
        runs[1].model_id,
        "--run",
        runs[1].run_id,
        "--top",
        str(TOP),
        "--score",
        "bias",
        "--match",
        corpus,
        "--permutations",
        "199",
        "--baselines",
        "--out",
        tmp_path / "out",
    )
    assert result.exit_code == 0, result.output
    assert (
        "matched overlap" in result.output and "recovered" in result.output and "randomly initialised" in result.output
    )
    assert (tmp_path / "out" / "matched_overlap.svg").exists() and (tmp_path / "out" / "layer_alignment.svg").exists()
    match_runs = [run for run in store.runs() if run.get("kind") == "match"]
    assert match_runs and match_runs[-1]["alignment"][1] == 3 and match_runs[-1]["words"] == 1500
    random_models = match_runs[-1]["random_baseline"]  # untrained models: no planted structure to find
    assert len(random_models) == 5 and all(row["p_value"] > 0.001 for row in random_models)
    stored = store.rows("neuron_matching", run_id=match_runs[-1]["run_id"])
    assert (
        len(stored) == 4 * 128 and (tmp_path / "out" / "matched_overlap.csv").exists()
    )  # every neuron of the 4-layer Llama


def test_the_report_shows_the_matched_comparison(planted, cli, tmp_path):
    root, store, runs, _, _, _ = planted
    if not [run for run in store.runs() if run.get("kind") == "match"]:
        corpus = tmp_path / "corpus.txt"
        corpus.write_text(_corpus(1000))
        assert (
            cli(
                "overlap",
                store.root,
                "--model",
                runs[0].model_id,
                "--run",
                runs[0].run_id,
                "--model",
                runs[1].model_id,
                "--run",
                runs[1].run_id,
                "--top",
                str(TOP),
                "--score",
                "bias",
                "--match",
                corpus,
                "--permutations",
                "99",
                "--out",
                tmp_path / "o",
            ).exit_code
            == 0
        )
    match = [run for run in store.runs() if run.get("kind") == "match"][-1]
    assert cli("report", store.root, "--run", runs[0].run_id, "--out", tmp_path / "r.html").exit_code == 0
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert f"match run {match['run_id']}" in html
    for row in store.rows("matched_overlap", run_id=match["run_id"]):
        assert f'data-metric="matched_overlap" data-axis="{row["name"]}" data-value="{row["overlap"]}"' in html


def test_a_corpus_too_small_or_not_running_text_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    """A 3-word corpus, or one 'word' of a megabyte: refused with a clear error, no model loaded."""
    import fairaudit.analysis.matching as matching
    from fairaudit.errors import FairauditError

    monkeypatch.setattr(matching, "_audited_model", lambda *a: pytest.fail("a model was loaded"))
    store = Store(tmp_path / "store")
    (tmp_path / "short.txt").write_text("three words only")
    (tmp_path / "long.txt").write_text("x" * (1 << 20) + " and then" + " word" * 100)
    for corpus, message in (("short.txt", "has 3 word"), ("long.txt", "longer than 64 characters")):
        with pytest.raises(FairauditError, match=message):
            matching.compare_models(store, None, None, tmp_path / corpus, 0.05)
