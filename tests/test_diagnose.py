"""Diagnosis views: per-token x per-layer divergence, PCA, emergence; checked by hand and on a
planted-bias model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fairaudit.analysis.diagnose import (
    PairView,
    counterpart,
    diagnose_pair,
    emergence,
    pca_2d,
    render_view,
    shared_ends,
)
from fairaudit.inputs.model import load_model
from fairaudit.inputs.suite import Pair, resolve_suite
from fairaudit.plugins import registry
from fairaudit.testing import make_planted_model


def test_pca_equals_a_hand_computed_svd():
    points = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 1.0], [0.0, 1.0, 1.0], [2.0, 1.0, 1.0], [1.0, 3.0, 1.0]])
    coordinates, shares = pca_2d(points)
    centred = points.numpy() - points.numpy().mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    expected = u[:, :2] * s[:2]
    for component in range(2):  # the sign of a principal axis is arbitrary
        sign = np.sign(expected[0, component] * coordinates[0, component].item()) or 1.0
        assert np.allclose(coordinates[:, component].numpy() * sign, expected[:, component], atol=1e-9)
    assert shares == pytest.approx(tuple(s[:2] ** 2 / (s**2).sum()))


def test_alignment_of_prompts_of_different_lengths():
    a, b = [1, 2, 7, 8, 5, 6], [1, 2, 9, 5, 6]
    assert shared_ends(a, b) == (2, 2)
    assert counterpart(0, 6, 5, 2, 2) == [0] and counterpart(5, 6, 5, 2, 2) == [4]
    assert counterpart(2, 6, 5, 2, 2) == [2] and counterpart(3, 6, 5, 2, 2) == [2]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diagnose") / "model"
    truth = make_planted_model(folder)
    return truth, load_model(str(folder))


def test_heat_map_peaks_at_the_substituted_word_in_the_planted_layer(planted):
    truth, loaded = planted
    pair = next(p for p in resolve_suite("race").pairs() if p.template_id == "night_walk" and p.group_a == "black")
    view = diagnose_pair(loaded, pair, layer=1)
    heat = view.heat["mlp"]
    layer, token = divmod(int(heat.argmax()), heat.shape[1])
    assert layer == truth.neurons[0].layer and view.tokens_a[token] == "Black" and view.substituted_a[token]
    assert view.most_moved["mlp"] == "Black"
    # the PCA leaves out the first token of each prompt (it can take most of the variance alone)
    assert view.pca_from == 1 and view.pca["mlp"].shape[0] == len(view.tokens_a) + len(view.tokens_b) - 2
    pca = str(next(svg for name, svg in render_view(view).items() if "mlp-pca" in name))
    assert "is left out (it alone can take most of the variance)" in pca and ">&lt;s&gt;<" not in pca


def test_tokens_are_shown_as_decoded_text_not_byte_level_markers():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from fairaudit.analysis.diagnose import token_text

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        ["When an Asian employee asked, her boss thought she\nwas late"] * 20,
        trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    ids = tokenizer("When an Asian employee asked, her boss thought she\nwas")["input_ids"]
    raw = tokenizer.convert_ids_to_tokens(ids)
    assert any(token.startswith("Ġ") for token in raw), "the byte-level tokenizer marks spaces with Ġ"
    shown = [token_text(tokenizer, token_id) for token_id in ids]
    assert not any("Ġ" in token or "Ċ" in token for token in shown)
    assert "Asian" in shown and "thought" in shown and "⏎" in shown


def test_emergence_names_the_planted_layers(planted):
    truth, loaded = planted
    suite = resolve_suite("race")
    probe = registry().get("probe", "activations")
    stats = probe.run(loaded, suite.pairs(), suite.control_pairs(), probe.Params(progress=False), "race")
    summary = emergence(stats)
    assert summary.attention_onset == 0, "layer 0's attention carries the planted directions"
    assert summary.mlp_peak == truth.neurons[0].layer
    assert summary.amplification_low <= summary.amplification <= summary.amplification_high


def test_figures_are_labelled_and_escape_hostile_tokens():
    hostile = "<script>alert(1)</script>"
    pair = Pair(
        pair_id="t:x:y", kind="template", template_id="t", group_a="x", group_b="y", text_a="a <b>", text_b="a c"
    )
    view = PairView(
        pair=pair,
        layer=0,
        tokens_a=["a", hostile],
        tokens_b=["a", '"q"'],
        substituted_a=[False, True],
        substituted_b=[False, True],
        heat={c: torch.tensor([[0.1, 0.9], [0.2, 0.3]]) for c in ("attention", "mlp")},
        pca={c: torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, 1.0]]) for c in ("attention", "mlp")},
        explained={c: (0.7, 0.2) for c in ("attention", "mlp")},
        most_moved={c: hostile for c in ("attention", "mlp")},
    )
    figures = render_view(view)
    assert len(figures) == 4
    for svg in figures.values():
        text = str(svg)
        assert "<script" not in text and "&lt;script&gt;" in text
    pca = str(next(svg for name, svg in figures.items() if "pca" in name))
    assert "PC1 (70% of variance)" in pca and "PC2 (20%)" in pca and "a: x" in pca and "b: y" in pca
    heat = str(next(svg for name, svg in figures.items() if "heatmap" in name))
    assert "layer 0" in heat and "token of prompt a" in heat and "Largest divergence" in heat


def test_diagnose_command(cli, planted, tmp_path):
    _, loaded = planted
    folder = loaded.provenance["source"]
    result = cli(
        "diagnose",
        "--model",
        folder,
        "--suite",
        "race",
        "--pair",
        "night_walk:black:white",
        "--out",
        tmp_path / "d",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mlp_peak_layer"] == 1 and len(report["files"]) == 4
    assert all((tmp_path / "d" / name.split("/")[-1]).exists() for name in report["files"])
    missing = cli("diagnose", "--model", folder, "--suite", "race", "--pair", "nope:a:b", "--out", tmp_path / "e")
    assert missing.exit_code == 2 and "has no pair" in missing.stderr
    never_loaded = cli(
        "diagnose",
        "--model",
        tmp_path / "no-such-model",
        "--suite",
        "race",
        "--pair",
        "nope:a:b",
        "--out",
        tmp_path / "e",
    )
    assert never_loaded.exit_code == 2 and "has no pair" in never_loaded.stderr  # the pair is checked before the model
    layer = cli("diagnose", "--model", folder, "--suite", "race", "--layer", "9", "--out", tmp_path / "f")
    assert layer.exit_code == 2 and "out of range" in layer.stderr


def test_diagnose_attribution_names_the_planted_neurons_by_measured_effect(cli, planted, tmp_path):
    import yaml

    from fairaudit.resources import suites_dir

    truth, loaded = planted
    folder = loaded.provenance["source"]
    race = yaml.safe_load((suites_dir() / "race.yaml").read_text())
    race["templates"] = race["templates"][:16]  # the planted words, fewer prompts: a quicker test
    (tmp_path / "race16.yaml").write_text(yaml.safe_dump(race))
    result = cli(
        "diagnose",
        "--model",
        folder,
        "--suite",
        tmp_path / "race16.yaml",
        "--top",
        "1",
        "--attribution",
        "4",
        "--out",
        tmp_path / "d",
    )
    assert result.exit_code == 0, result.output
    assert (
        "top neurons (measured effect of ablating it alone)" in result.output and "attribution peaks: " in result.output
    )
    causal = json.loads((tmp_path / "d" / "attribution.json").read_text())
    planted_race = {(n.layer, n.neuron) for n in truth.neurons if "race" in n.axes}
    top = causal["top"]["neurons"]
    assert top["ranked_by"].startswith("measured") and (top["rows"][0]["layer"], top["rows"][0]["unit"]) in planted_race
    assert causal["peaks"]["MLP neurons' output attribution"] == truth.neurons[0].layer
    assert (tmp_path / "d" / "attribution-by-layer.svg").exists()
