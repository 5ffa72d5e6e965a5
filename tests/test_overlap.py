"""Overlap analysis: planted shared neurons are found; random scores give ~5% false positives;
each statistic by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fairaudit.analysis.overlap import axis_overlap, depth_profile, load_scores, model_overlap, set_overlap, top_k
from fairaudit.measurement.scoring import AxisScores
from fairaudit.store import Store


def store_scores(store: Store, model: str, by_axis: dict[str, np.ndarray], run_id: str = "r1") -> None:
    for axis, values in by_axis.items():
        scores = AxisScores(axis=axis, component="neuron")
        scores.neuron["scaled_bias"] = torch.from_numpy(values)
        scores.summary["pairs"] = 10
        store.write_axis(model, run_id, scores)
    store.write_run(run_id, {"model_id": model, "status": "complete", "started": run_id})


def test_planted_shared_neurons_are_reported_as_shared(tmp_path):
    rng = np.random.default_rng(0)
    layers, units = 4, 500
    planted_shared = [(1, 7), (1, 100), (2, 3), (2, 250), (3, 499), (0, 42), (3, 12), (2, 77), (1, 300), (0, 1)]
    by_axis = {axis: rng.random((layers, units)) for axis in ("race", "gender", "religion")}
    for layer, neuron in planted_shared:
        by_axis["race"][layer, neuron] = 5 + rng.random()
        by_axis["gender"][layer, neuron] = 5 + rng.random()
    store = Store(tmp_path / "store")
    store_scores(store, "planted", by_axis)
    result = axis_overlap(load_scores(store, "planted"), top=20)
    rows = {(r["axis_a"], r["axis_b"]): r for r in result.pairs.to_pylist()}
    assert rows[("gender", "race")]["overlap"] >= 10 and rows[("gender", "race")]["p_value"] < 1e-6
    assert rows[("race", "religion")]["p_value"] > 0.001 and rows[("gender", "religion")]["p_value"] > 0.001
    shared = {
        (r["layer"], r["neuron"]) for r in result.shared.to_pylist() if "race" in r["axes"] and "gender" in r["axes"]
    }
    assert set(planted_shared) <= shared
    per_layer = [r for r in result.per_layer.to_pylist() if (r["axis_a"], r["axis_b"]) == ("gender", "race")]
    assert sum(r["overlap"] for r in per_layer) == rows[("gender", "race")]["overlap"]


def test_false_positive_rate_on_independent_scores_is_near_alpha():
    rng = np.random.default_rng(1)
    population, k, draws = 10_000, 500, 2000
    rejections = 0
    for _ in range(draws):
        first = np.zeros(population, bool)
        second = np.zeros(population, bool)
        first[rng.choice(population, k, replace=False)] = True
        second[rng.choice(population, k, replace=False)] = True
        rejections += set_overlap(first, second)["p_value"] < 0.05
    assert 0.03 <= rejections / draws <= 0.07


def test_statistics_by_hand():
    first = np.array([True, True, True, False, False, False, False, False])
    second = np.array([False, True, True, True, False, False, False, False])
    result = set_overlap(first, second, np.arange(8.0), np.arange(8.0)[::-1].copy())
    n, ka, kb, overlap = 8, 3, 3, 2
    p = sum(math.comb(ka, x) * math.comb(n - ka, kb - x) for x in range(overlap, min(ka, kb) + 1)) / math.comb(n, kb)
    assert result["overlap"] == 2 and result["expected"] == pytest.approx(9 / 8)
    assert result["p_value"] == pytest.approx(p) and result["jaccard"] == pytest.approx(2 / 4)
    assert result["spearman"] == pytest.approx(-1.0)


def test_top_k_by_fraction_count_and_nan():
    values = np.array([[0.1, np.nan, 0.9], [0.5, 0.7, 0.2]])
    assert top_k(values, 2).tolist() == [[False, False, True], [False, True, False]]
    assert top_k(values, 0.5).sum() == 3 and not top_k(values, 5)[0, 1]


def test_cross_model_identity_and_depth_profiles(tmp_path):
    rng = np.random.default_rng(2)
    base = rng.random((4, 50))
    tuned = base + rng.normal(0, 0.01, base.shape)
    deep = np.repeat(np.linspace(0, 1, 8)[:, None], 50, axis=1) + rng.normal(0, 0.001, (8, 50))
    store = Store(tmp_path / "store")
    store_scores(store, "base", {"race": base + np.linspace(0, 1, 4)[:, None]}, "r1")
    store_scores(store, "tuned", {"race": tuned + np.linspace(0, 1, 4)[:, None]}, "r2")
    store_scores(store, "deep", {"race": deep}, "r3")
    same = model_overlap(load_scores(store, "base"), load_scores(store, "tuned"), top=10).to_pylist()[0]
    assert same["same_shape"] and same["overlap"] >= 8 and same["p_value"] < 1e-6
    other = model_overlap(load_scores(store, "base"), load_scores(store, "deep"), top=10).to_pylist()[0]
    assert not other["same_shape"] and other["profile_spearman"] > 0.95
    assert depth_profile(np.array([[1.0], [3.0]]), points=4).tolist() == [1.0, 1.5, 2.5, 3.0]


def test_overlap_command_on_a_probed_model(cli, llama_folder, tmp_path):
    store = tmp_path / "store"
    assert (
        cli(
            "probe", "--model", llama_folder, "--suite", "race", "--suite", "gender", "--store", store, "--quiet"
        ).exit_code
        == 0
    )
    result = cli("overlap", store, "--model", llama_folder.name, "--top", "0.1", "--out", tmp_path / "ov")
    assert result.exit_code == 0, result.output
    assert "gender" in result.output and "p (hypergeom.)" in result.output
    assert (tmp_path / "ov" / f"{llama_folder.name}.axis_pairs.csv").exists()
    payload = json.loads(
        cli("overlap", store, "--model", llama_folder.name, "--json", "--out", tmp_path / "ov2").stdout
    )
    assert payload[f"{llama_folder.name}.axis_pairs"][0]["k_a"] == round(0.01 * 2 * 64)
    missing = cli("overlap", store, "--model", "nope", "--out", tmp_path / "ov3")
    assert missing.exit_code == 2 and "no complete run of model 'nope'" in missing.stderr


def test_pruned_model_maps_back_to_its_base_through_the_neuron_map(cli, model_folder, tmp_path):
    """Probe a model, prune it, probe the pruned model: neuron identity is compared through
    the stored neuron map, so the unpruned neurons line up with their originals."""
    base = model_folder("llama", layers=2, hidden=32, intermediate=128)
    store = tmp_path / "store"
    assert (
        cli("probe", "--model", base, "--suite", "race", "--suite", "gender", "--store", store, "--quiet").exit_code
        == 0
    )
    pruned = tmp_path / "pruned"
    assert (
        cli(
            "prune", "--model", base, "--store", store, "--axis", "race", "--fraction", "0.05", "--out", pruned
        ).exit_code
        == 0
    )
    assert (
        cli("probe", "--model", pruned, "--suite", "race", "--suite", "gender", "--store", store, "--quiet").exit_code
        == 0
    )
    result = cli(
        "overlap", store, "--model", base.name, "--model", "pruned", "--top", "20", "--out", tmp_path / "ov", "--json"
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["models"]
    race = next(row for row in rows if row["axis"] == "race")
    assert race["same_shape"] and race["neurons"] == 2 * 128 - 12
    assert race["spearman"] > 0.9, "the same neurons keep similar scores after removing 5%"


def test_constant_scores_give_nan_correlations_without_a_library_warning():
    import warnings

    import numpy as np

    from fairaudit.measurement import metrics

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's ConstantInputWarning would raise here
        assert np.isnan(metrics.spearman(np.ones(10), np.arange(10.0)))
        assert metrics.spearman(np.arange(10.0), np.arange(10.0) ** 2) == pytest.approx(1.0)
