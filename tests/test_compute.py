"""Compute accounting: the token positions each model forwards, per stage of a run."""

from __future__ import annotations

import torch
from test_run_records import small_audit

from fairaudit.compute import TOTAL
from fairaudit.inputs.model import load_model
from fairaudit.measurement.evaluate import has_hooks
from fairaudit.store import Store


def test_forwards_are_counted_by_position_and_the_counter_is_no_mask(llama_folder):
    loaded = load_model(str(llama_folder))
    assert not has_hooks(loaded.model), "the counter changes nothing the model computes"
    ids = torch.ones((3, 5), dtype=torch.long)
    before, total = loaded.tokens.snapshot(), TOTAL.snapshot()
    with torch.inference_mode():
        loaded.model(input_ids=ids)
    assert loaded.tokens.snapshot() == (before[0] + 15, before[1])
    loaded.model(ids).logits.sum().backward()  # positional input, gradients on
    assert loaded.tokens.snapshot() == (before[0] + 30, before[1] + 15)
    assert TOTAL.snapshot()[0] - total[0] >= 30
    with torch.inference_mode():  # greedy generation with a KV cache: the prompt, then one new position per step
        loaded.model.generate(ids[:1], max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert loaded.tokens.snapshot()[0] == before[0] + 30 + 5 + 2
    handle = loaded.layers[0].register_forward_hook(lambda module, args, output: None)
    assert has_hooks(loaded.model)
    handle.remove()


def test_a_run_records_the_tokens_of_every_stage(llama_folder, tmp_path):
    causal = {"gate": "none", "budgets": [0.01], "rounds": 1, "method": "neurons"}
    run_id = small_audit(llama_folder, tmp_path / "a", pruning={"out": str(tmp_path / "p"), "causal": causal})
    record = Store(tmp_path / "a" / "store").read_run(run_id)
    assert record["timings"]["axis:race:tokens"] > 0 and "axis:race:grad_tokens" not in record["timings"]
    # what the planner measured is recorded whether or not it found something worth pruning
    compute = (record.get("prune") or record["prune_skipped"])["causal"]["compute"]
    assert compute["attribution"]["grad_tokens"] == compute["attribution"]["tokens"] > 0
    assert compute["guard"]["tokens"] > 0 and compute["gate"]["tokens"] > 0 and compute["budget"]["tokens"] > 0
    assert record["timings"]["prune:tokens"] == sum(step["tokens"] for step in compute.values())

    pruning = {"out": str(tmp_path / "q"), "selection": {"fraction": 0.05}}
    run_id = small_audit(llama_folder, tmp_path / "b", pruning=pruning, evaluators=["output_bias", "random_baseline"])
    timings = Store(tmp_path / "b" / "store").read_run(run_id)["timings"]
    # the two models ran in two lanes at once; each lane counts its own model's tokens
    assert timings["evaluate:output_bias:before:tokens"] == timings["evaluate:output_bias:after:tokens"] > 0
    assert timings["evaluate:random_baseline:after:tokens"] > 0
    stages = [key for key in timings if key.startswith("evaluate:") and key.count(":") == 3 and key.endswith("tokens")]
    assert timings["evaluate:tokens"] == sum(timings[key] for key in stages)
