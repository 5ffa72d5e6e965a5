"""Fairness pruning: removal equals masking, selection by hand, saved models load with plain
transformers, bad input writes nothing, and optiPfair keeps the same neurons."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from fairaudit.config import RunConfig
from fairaudit.errors import FairauditError
from fairaudit.inputs.model import load_model
from fairaudit.pipeline.audit import audit
from fairaudit.plugins import registry
from fairaudit.repair.prune import NEURON_MAP_FILE, Selection, SelectionParams, masked, prune, save_pruned, select, zero
from fairaudit.testing import FAMILIES

INPUT = "A Black man walked at night . The police officer thought he"


def logits(loaded, text: str = INPUT) -> torch.Tensor:
    batch = loaded.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        output = loaded.model(**batch)
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


def random_selection(widths: list[int], counts: list[int], seed: int = 0) -> Selection:
    generator = torch.Generator().manual_seed(seed)
    return Selection(
        pruned=[torch.randperm(w, generator=generator)[:c].sort().values for w, c in zip(widths, counts)], widths=widths
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_equals_masking_for_every_family(model_folder, family):
    loaded = load_model(str(model_folder(family)))
    selection = random_selection([64, 64], [5, 5])
    with masked(loaded, selection):
        expected = logits(loaded)
    original = logits(loaded)
    assert not torch.allclose(expected, original), "the mask must change something"
    assert torch.allclose(logits(loaded), original), "the mask is undone on exit"
    report = prune(loaded, selection)
    assert report.widths_after == [59, 59] and getattr(loaded.model.config, loaded.adapter.width_key) == 59
    assert torch.allclose(logits(loaded), expected, atol=1e-5)


def test_pruning_nothing_changes_nothing_and_pruning_is_deterministic(model_folder):
    loaded = load_model(str(model_folder("llama")))
    before = logits(loaded)
    report = prune(loaded, Selection(pruned=[torch.zeros(0, dtype=torch.long)] * 2, widths=[64, 64]))
    assert report.removed == 0 and torch.equal(logits(loaded), before)
    scores = {"race": torch.rand(2, 64, generator=torch.Generator().manual_seed(1))}
    params = SelectionParams(axes=["race"], score="hybrid", fraction=0.1, protect=0)
    first, second = select(scores, params), select(scores, params)
    assert all(torch.equal(a, b) for a, b in zip(first.pruned, second.pruned))
    twins = [load_model(str(model_folder("llama"))) for _ in range(2)]
    for twin in twins:
        prune(twin, first)
    assert torch.equal(logits(twins[0]), logits(twins[1]))


def test_selection_rules_by_hand():
    race = torch.tensor(
        [[0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4, 0.5, 0.0], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]]
    )
    gender = race.flip(1)
    params = dict(score="hybrid", protect=0)
    per_layer = select({"race": race}, SelectionParams(axes=["race"], fraction=0.2, **params))
    assert [p.tolist() for p in per_layer.pruned] == [[0, 2], [8, 9]]
    union = select(
        {"race": race, "gender": gender},
        SelectionParams(axes=["race", "gender"], fraction=0.2, combine="union", **params),
    )
    assert [p.tolist() for p in union.pruned] == [[0, 2, 7, 9], [0, 1, 8, 9]]
    largest = select(
        {"race": race, "gender": gender},
        SelectionParams(axes=["race", "gender"], fraction=0.1, combine="max", **params),
    )
    assert [p.tolist() for p in largest.pruned] == [[0], [0]]  # max per neuron, ties to the lower index
    averaged = select(
        {"race": race, "gender": gender},
        SelectionParams(axes=["race", "gender"], fraction=0.1, combine="mean", **params),
    )
    assert averaged.pruned[0].tolist() == [2]  # layer 0 means: 0.6 at 2 (and 7), ties to the lower index
    similar = race.clone()
    similar[0, 0] = 0.0  # layer 0: race top-3 {0, 2, 4}, this one {2, 4, 6}
    both = select(
        {"race": race, "other": similar},
        SelectionParams(axes=["race", "other"], fraction=0.3, combine="intersection", **params),
    )
    assert [p.tolist() for p in both.pruned] == [[2, 4], [7, 8, 9]]
    overall = select(
        {"race": race * torch.tensor([[1.0], [0.5]])},
        SelectionParams(axes=["race"], fraction=0.2, scope="global", **params),
    )
    assert [p.tolist() for p in overall.pruned] == [[0, 2, 4, 6], []]
    only_second = select({"race": race}, SelectionParams(axes=["race"], fraction=0.2, layers=[1], **params))
    assert [p.tolist() for p in only_second.pruned] == [[], [8, 9]]
    rounded = select({"race": race}, SelectionParams(axes=["race"], fraction=0.1, round_to=4, **params))
    assert [10 - len(p) for p in rounded.pruned] == [8, 8]
    importance = torch.zeros(2, 10)
    importance[0, 0] = 5.0
    protected = select(
        {"race": race}, SelectionParams(axes=["race"], fraction=0.2, score="hybrid", protect=0.1), importance
    )
    assert 0 not in protected.pruned[0].tolist() and protected.pruned[0].tolist() == [2, 4]
    with pytest.raises(FairauditError, match="out of range"):
        select({"race": race}, SelectionParams(axes=["race"], layers=[2], **params))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        SelectionParams(axes=["race"], fraction=1.5)


def test_pooled_hybrid_by_hand():
    from fairaudit.repair.prune import pooled_hybrid

    # one layer, three neurons. race has real bias on neuron 0; nationality only noise, largest on neuron 2.
    bias = {"race": torch.tensor([[9.0, 1.0, 0.0]]), "nationality": torch.tensor([[0.0, 0.1, 0.3]])}
    importance = torch.tensor([[1.0, 2.0, 3.0]])
    pooled = pooled_hybrid(bias, importance, weight=0.8)
    # mean bias (4.5, 0.55, 0.15) -> min-max (1, 0.4/4.35, 0); 1 - min-max importance (1, 0.5, 0)
    expected = torch.tensor([[0.8 * 1 + 0.2 * 1, 0.8 * 0.4 / 4.35 + 0.2 * 0.5, 0.0]], dtype=torch.float64)
    assert torch.allclose(pooled, expected)
    # the mean of per-axis hybrids ranks the noise axis' top neuron level with the real one
    from fairaudit.measurement import metrics

    per_axis = torch.stack([metrics.hybrid(b, importance, 0.8) for b in bias.values()]).mean(dim=0)
    assert per_axis[0, 2] > per_axis[0, 1] and pooled[0, 2] < pooled[0, 1]
    params = SelectionParams(axes=["race", "nationality"], fraction=0.34, protect=0)
    assert select({"pooled": pooled}, params).pruned[0].tolist() == [0]


def test_uneven_pruning_saves_a_config_transformers_loads(model_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    from fairaudit.repair.prune import save_pruned

    loaded = load_model(str(model_folder("llama")))
    selection = random_selection([64, 64], [3, 9])
    with masked(loaded, selection):
        expected = logits(loaded)
    report = prune(loaded, selection)
    assert report.widths_after == [61, 61] and [len(z) for z in report.zeroed] == [0, 6] and report.removed == 12
    save_pruned(loaded, report, tmp_path / "pruned", "card")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")  # no fairaudit code involved
    with torch.no_grad():
        got = plain(**loaded.tokenizer([INPUT], return_tensors="pt")).logits
    assert torch.allclose(got, expected, atol=1e-5)
    neuron_map = json.loads((tmp_path / "pruned" / NEURON_MAP_FILE).read_text())
    assert len(neuron_map["layers"][0]) == 61 and neuron_map["original_widths"] == [64, 64]


def test_zero_pruner_keeps_shapes_and_equals_masking(model_folder):
    loaded = load_model(str(model_folder("gpt2")))
    selection = random_selection([64, 64], [4, 2])
    with masked(loaded, selection):
        expected = logits(loaded)
    report = zero(loaded, selection)
    assert report.widths_after == [64, 64] and torch.allclose(logits(loaded), expected, atol=1e-5)


@pytest.fixture(scope="module")
def probed(model_folder, tmp_path_factory):
    folder = model_folder("llama", layers=2, hidden=32, intermediate=128)
    store = tmp_path_factory.mktemp("prune") / "store"
    audit(
        RunConfig.model_validate(
            {
                "model": str(folder),
                "suites": ["race", "gender"],
                "store": str(store),
                "probe": {"plugin": "activations", "params": {"progress": False}},
                "pruning": None,
                "evaluators": [],
                "report": False,
            }
        )
    )
    return folder, store


def test_prune_command_end_to_end(cli, probed, tmp_path):
    from transformers import AutoModelForCausalLM

    folder, store = probed
    out = tmp_path / "pruned"
    result = cli("prune", "--model", folder, "--store", store, "--axis", "race", "--fraction", "0.05", "--out", out)
    assert result.exit_code == 0, result.output
    assert "neurons pruned: 12 of 256" in result.output and "parameters:" in result.output
    assert "neurons ranked by `hybrid_scaled` on axis race" in result.output
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.intermediate_size == 122
    assert (out / "README.md").read_text().startswith("# model, fairness-pruned")
    import pyarrow.dataset as ds

    maps = ds.dataset(store / "neuron_maps", partitioning="hive").to_table()
    assert maps.num_rows == 2 * 122 and set(maps.column("model").to_pylist()) == {"pruned"}


def test_prune_says_what_it_writes_and_saves_in_the_dtype_asked(cli, probed, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    folder, store = probed
    out = tmp_path / "pruned-bf16"
    result = cli(
        "prune",
        "--model",
        folder,
        "--store",
        store,
        "--axis",
        "race",
        "--fraction",
        "0.05",
        "--out",
        out,
        "--save-dtype",
        "bfloat16",
    )
    assert result.exit_code == 0, result.output
    written = re.search(r"writing the pruned model to .*: about ([\d,.]+) MiB in bfloat16", result.stderr)
    assert written, result.stderr
    on_disk = sum(path.stat().st_size for path in out.glob("*.safetensors")) / 2**20
    assert abs(float(written[1].replace(",", "")) - on_disk) <= max(0.1 * on_disk, 1.0), (
        "the announced size is the size written"
    )
    with safe_open(str(next(out.glob("*.safetensors"))), "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.bfloat16}
    assert AutoModelForCausalLM.from_pretrained(out).config.intermediate_size == 122
    source = cli(
        "prune",
        "--model",
        folder,
        "--store",
        store,
        "--axis",
        "race",
        "--fraction",
        "0.05",
        "--out",
        tmp_path / "src",
        "--save-dtype",
        "source",
        "--quiet",
    )
    assert source.exit_code == 0 and source.stdout == "" and source.stderr == "", "--quiet prints nothing"
    with safe_open(str(next((tmp_path / "src").glob("*.safetensors"))), "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float32}, (
            "the test model is stored in float32"
        )


def test_pooled_pruning_recomputes_the_hybrid_on_the_pooled_bias(cli, probed, tmp_path):
    from fairaudit.analysis.overlap import latest_run, load_scores
    from fairaudit.repair.prune import pooled_hybrid
    from fairaudit.store import Store

    folder, store = probed
    result = cli(
        "prune",
        "--model",
        folder,
        "--store",
        store,
        "--axis",
        "race",
        "--axis",
        "gender",
        "--score",
        "hybrid",
        "--fraction",
        "0.05",
        "--protect",
        "0",
        "--out",
        tmp_path / "pooled",
    )
    assert result.exit_code == 0, result.output
    opened = Store(store)
    run = latest_run(opened, "model")
    bias = {
        axis: torch.from_numpy(load_scores(opened, "model", "bias", run).by_axis[axis]) for axis in ("race", "gender")
    }
    importance = torch.from_numpy(load_scores(opened, "model", "importance_ppm", run).by_axis["race"])
    stored_race = torch.from_numpy(load_scores(opened, "model", "hybrid", run).by_axis["race"]).double()
    assert torch.allclose(
        pooled_hybrid({"race": bias["race"]}, importance, 0.8), stored_race, atol=1e-6
    )  # one axis: the scorer's own
    expected = select(
        {"pooled": pooled_hybrid(bias, importance, 0.8)},
        SelectionParams(axes=["race", "gender"], fraction=0.05, protect=0),
    )
    kept = json.loads((tmp_path / "pooled" / NEURON_MAP_FILE).read_text())["layers"]
    assert [sorted(set(range(128)) - set(layer)) for layer in kept] == [p.tolist() for p in expected.pruned]
    hybrid = {axis: torch.from_numpy(load_scores(opened, "model", "hybrid", run).by_axis[axis]) for axis in bias}
    for fraction in (0.05, 0.1, 0.2):  # pooling is not the mean (they may agree on the very top of a small model)
        averaged = select(
            hybrid, SelectionParams(axes=["race", "gender"], fraction=fraction, protect=0, combine="mean")
        )
        pooled = select(
            {"pooled": pooled_hybrid(bias, importance, 0.8)},
            SelectionParams(axes=["race", "gender"], fraction=fraction, protect=0),
        )
        if [p.tolist() for p in averaged.pruned] != [p.tolist() for p in pooled.pruned]:
            break
    else:
        raise AssertionError("pooled and mean selections agree at every fraction")
    card = (tmp_path / "pooled" / "README.md").read_text()
    assert "ranked by hybrid (weight 0.8) of the mean over axes race, gender of `bias`" in card


@pytest.mark.parametrize(
    "args, message",
    [
        (["--axis", "race", "--fraction", "1.5"], "strictly between 0 and 1"),
        (["--axis", "race", "--fraction", "0"], "strictly between 0 and 1"),
        (["--axis", "caste"], "axis ['caste'] has no 'hybrid_scaled' in run"),
        (["--axis", "race", "--layers", "7"], "out of range"),
    ],
)
def test_prune_bad_input_writes_nothing(cli, probed, tmp_path, args, message):
    folder, store = probed
    out = tmp_path / "never"
    result = cli("prune", "--model", folder, "--store", store, "--out", out, *args)
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_prune_refuses_a_store_from_other_weights(cli, probed, model_folder, tmp_path):
    folder, store = probed
    import shutil

    impostor = tmp_path / "model"  # same name, other weights
    shutil.copytree(model_folder("llama", layers=2, hidden=32, intermediate=128, seed=5), impostor)
    result = cli("prune", "--model", impostor, "--store", store, "--axis", "race", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "other weights" in result.stderr
    assert not (tmp_path / "x").exists()


def test_same_kept_neurons_as_optipfair(model_folder):
    mlp_glu = pytest.importorskip("optipfair.pruning.mlp_glu")
    loaded = load_model(str(model_folder("llama", layers=2, hidden=32, intermediate=128)))
    twin = copy.deepcopy(loaded.model)
    generator = torch.Generator().manual_seed(4)
    hybrid = {layer: torch.rand(128, generator=generator) for layer in range(2)}
    mlp_glu.prune_model_mlp_glu(twin, pruning_percentage=5.0, fairness_scores=hybrid, show_progress=False)
    selection = select(
        {"race": torch.stack([hybrid[0], hybrid[1]])}, SelectionParams(axes=["race"], fraction=0.05, protect=0)
    )
    prune(loaded, selection)
    for layer in range(2):
        assert torch.equal(
            loaded.model.model.layers[layer].mlp.gate_proj.weight, twin.model.layers[layer].mlp.gate_proj.weight
        )
        assert torch.equal(
            loaded.model.model.layers[layer].mlp.down_proj.weight, twin.model.layers[layer].mlp.down_proj.weight
        )


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_mean_ablation_is_exported_exactly_and_loads_with_plain_transformers(family, model_folder, tmp_path):
    """Structured pruning with ablation 'mean': the saved model (Llama gains mlp_bias: true)
    computes what the original computes with the removed neurons held at their means."""
    from transformers import AutoModelForCausalLM

    from fairaudit.measurement.attribution import unit_means
    from fairaudit.resources import corpus_sentences

    folder = model_folder(family)
    loaded = load_model(str(folder))
    selection = Selection([torch.tensor([1, 5, 9]), torch.tensor([0, 2])], [64, 64])
    means = unit_means(loaded, corpus_sentences(200))["neuron"]
    ids = torch.tensor([loaded.tokenizer("The baker arrives at the shop at four in the morning .")["input_ids"]])

    handles = []
    for layer, pruned in zip(loaded.layers, selection.pruned):

        def hold(module, args, pruned=pruned, mean=means[loaded.layers.index(layer)]):
            hidden = args[0].clone()
            hidden[..., pruned] = mean[pruned].to(hidden.dtype)
            return (hidden, *args[1:])

        handles.append(loaded.adapter.sites(layer)["neuron"].module.register_forward_pre_hook(hold))
    with torch.no_grad():
        expected = loaded.model(input_ids=ids).logits
    for handle in handles:
        handle.remove()

    plugin = registry().get("pruner", "structured")
    report = plugin.apply(loaded, selection, plugin.Params(ablation="mean"))
    save_pruned(loaded, report, tmp_path / "pruned", "card")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-5)
    if family == "llama":
        assert (
            plain.config.mlp_bias is True
            and float(plain.model.layers[0].mlp.gate_proj.bias.detach().abs().max()) == 0.0
        )


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_removing_heads_computes_what_zeroing_them_computes_and_loads_with_plain_transformers(
    model_folder, family, tmp_path
):
    """Uniform head removal shrinks q/k/v/o and the config's head counts; the model computes what
    the same heads zeroed compute, and the saved folder loads with plain transformers."""
    import transformers

    from fairaudit.repair.prune import remove_heads, zero_heads

    folder = model_folder(family, layers=2, hidden=64, intermediate=64)  # 4 heads of 16, as many key/value heads
    zeroed, removed = load_model(str(folder)), load_model(str(folder))
    zero_heads(zeroed, [[1, 2], [0, 3]])
    remove_heads(removed, [[1, 2], [0, 3]])
    assert torch.allclose(logits(zeroed), logits(removed), atol=1e-5)
    attention = removed.layers[0].self_attn
    assert attention.q_proj.weight.shape[0] == attention.o_proj.weight.shape[1] == 2 * 16
    removed.model.save_pretrained(tmp_path / "saved")
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    config = getattr(plain.config, "text_config", None) or plain.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 2, 16)
    batch = zeroed.tokenizer([INPUT], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(plain(**batch).logits, logits(zeroed), atol=1e-5)


def test_removing_heads_is_refused_where_the_config_cannot_say_it(model_folder, tmp_path):
    """Uneven counts per layer, part of a key/value group, or GPT-2's fused attention: refused with
    the reason, the model untouched (zeroing stays possible)."""
    import transformers

    from fairaudit.repair.prune import remove_heads

    loaded = load_model(str(model_folder("llama", layers=2, hidden=64, intermediate=64)))
    before = {name: value.clone() for name, value in loaded.model.state_dict().items()}
    with pytest.raises(FairauditError, match="same number"):
        remove_heads(loaded, [[1], [1, 2]])
    with pytest.raises(FairauditError, match="config transformers refuses.*not a multiple"):
        remove_heads(loaded, [[1], [1]])  # 3 heads left: Llama's config wants them to divide hidden_size (64)
    assert all(torch.equal(before[name], value) for name, value in loaded.model.state_dict().items())
    config = transformers.LlamaConfig(
        vocab_size=len(loaded.tokenizer),
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "gqa")
    loaded.tokenizer.save_pretrained(tmp_path / "gqa")
    grouped = load_model(str(tmp_path / "gqa"))
    with pytest.raises(FairauditError, match="whole groups of 2"):
        remove_heads(grouped, [[1, 2], [1, 2]])
    remove_heads(grouped, [[2, 3], [0, 1]])  # one whole group in each layer
    assert (grouped.model.config.num_attention_heads, grouped.model.config.num_key_value_heads) == (2, 1)
    with pytest.raises(FairauditError, match="no separate q/k/v/o"):
        remove_heads(load_model(str(model_folder("gpt2"))), [[0], [0]])
