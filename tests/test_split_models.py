"""A model split by a device map (here: CPU and disk offload, the split a CPU-only machine can
make) is probed, scored, hashed and pruned exactly like the whole model."""

from __future__ import annotations

import math

import pytest
import torch

from fairaudit.config import RunConfig
from fairaudit.inputs.model import ModelSpec, is_offloaded, load_model
from fairaudit.pipeline.audit import audit
from fairaudit.store import Store

SPLIT = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


def test_split_model_loads_with_the_whole_models_hash(llama_folder, tmp_path):
    whole = load_model(str(llama_folder))
    split = load_model(ModelSpec(id=str(llama_folder), device_map=SPLIT, offload_folder=str(tmp_path / "offload")))
    assert is_offloaded(split.model) and not is_offloaded(whole.model)
    assert split.provenance["weights_hash"] == whole.provenance["weights_hash"]
    assert split.device == torch.device("cpu")
    ids = torch.tensor([[1, 5, 9, 13]])
    torch.testing.assert_close(split.model(input_ids=ids).logits, whole.model(input_ids=ids).logits)
    for layer_whole, layer_split in zip(whole.layers, split.layers):
        torch.testing.assert_close(split.mlp_weights(layer_split).down, whole.mlp_weights(layer_whole).down)
    offload = next((tmp_path / "offload").iterdir())  # a private folder per loaded model, removed with it
    del split
    import gc

    gc.collect()
    assert not offload.exists()


def _audit(folder, store, model: dict):
    return audit(
        RunConfig.model_validate(
            {
                "model": model,
                "suites": ["race"],
                "store": str(store),
                "diagnose_top": 0,
                "probe": {"plugin": "activations", "params": {"progress": False}},
                "pruning": {"out": str(store.parent / "pruned"), "selection": {"fraction": 0.05}},
                "evaluators": ["output_bias"],
                "report": False,
            }
        )
    )


def test_probe_scores_and_pruning_of_a_split_model_equal_the_whole_models(llama_folder, tmp_path):
    whole = _audit(llama_folder, tmp_path / "whole" / "store", {"id": str(llama_folder)})
    split = _audit(
        llama_folder,
        tmp_path / "split" / "store",
        {"id": str(llama_folder), "device_map": SPLIT, "offload_folder": str(tmp_path / "offload")},
    )
    for table in ("neuron_scores", "axis_summary", "evaluations"):
        a = Store(tmp_path / "whole" / "store").read(table, run_id=whole.run_id).to_pylist()
        b = Store(tmp_path / "split" / "store").read(table, run_id=split.run_id).to_pylist()
        assert len(a) == len(b) > 0
        for row_a, row_b in zip(a, b):
            for key, value in row_a.items():
                if isinstance(value, float) and not math.isnan(value) and key not in ("run_id",):
                    assert value == pytest.approx(row_b[key], rel=1e-5, abs=1e-6), (table, key)
    assert whole.pruned["removed"] == split.pruned["removed"] > 0
    pruned_whole = load_model(whole.pruned["out"]).provenance["weights_hash"]
    pruned_split = load_model(split.pruned["out"]).provenance["weights_hash"]
    assert pruned_whole == pruned_split
