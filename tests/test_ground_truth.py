"""Ground truth: the real pipeline on a model with planted bias neurons finds them, sees the
shared ones as shared, protects the important ones, and removes the bias they cause."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ground_truth import ground_truth_figures  # noqa: E402

from fairaudit.testing import make_planted_model  # noqa: E402


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_pipeline_finds_shares_protects_and_removes_the_planted_bias(family, tmp_path):
    """One test per family (the figures are one pipeline run: test workers would each run it again)."""
    figures = ground_truth_figures(tmp_path / "planted", seed=0, score="hybrid", family=family)
    # the planted neurons are recovered
    for axis, row in figures["recovery"].items():
        assert row["precision"] >= 0.9 and row["recall"] >= 0.9, axis
    # only the planted pair of axes is shared
    for pair, row in figures["sharing"].items():
        if set(pair) == {"race", "gender"}:
            assert row["p_value"] < 0.001 and row["overlap"] == 3
        else:
            assert row["p_value"] >= 0.001, pair
    assert figures["shared_recovered"] == 1.0
    # the hybrid score protects the important neurons
    assert figures["pruned_planted_important"] == []
    assert abs(figures["perplexity"][2]) < 0.05
    # pruning removes the bias it planted
    assert figures["pruned_planted_unimportant"] >= 0.9
    for axis, row in figures["effect"].items():
        assert row["gap_drop"] >= 0.8 and row["index_drop"] >= 0.5, axis


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_planting_is_deterministic_and_described(tmp_path, family):
    first = make_planted_model(tmp_path / "a", seed=3, family=family)
    second = make_planted_model(tmp_path / "b", seed=3, family=family)
    assert first == second
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert first.planted("race", important=True) and first.planted("race", important=False)
    assert first.shared() == first.planted("race") & first.planted("gender")
    assert "Black" in first.carriers["race"] and "white" not in first.carriers["race"]
