"""Pruning speed on a random Llama-3.2-1B-shaped model (16 layers, hidden 2048,
intermediate 8192), CPU: fairaudit's selection + structured pruning vs optiPfair 0.4.2
`prune_model_mlp_glu` given the same `fairness_scores`, 0.2% of neurons per layer,
measured in one run; and whether both keep the same neurons.

Usage: python benchmarks/prune_speed.py [--layers 16 --hidden 2048 --intermediate 8192]
"""

from __future__ import annotations

import argparse
import copy
import logging
import time

import torch
from audit_stages import machine  # this folder: the CPU model and cores

from fairaudit.inputs.model import LoadedModel
from fairaudit.plugins import registry
from fairaudit.repair.prune import SelectionParams, prune, select


def random_llama(layers: int, hidden: int, intermediate: int, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=vocab,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    model.tie_weights()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02, generator=generator)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--fraction", type=float, default=0.002)
    args = parser.parse_args()
    logging.getLogger("optipfair").setLevel(logging.WARNING)
    from optipfair.pruning.mlp_glu import prune_model_mlp_glu

    started = time.perf_counter()
    model = random_llama(args.layers, args.hidden, args.intermediate, args.vocab)
    twin = copy.deepcopy(model)
    build_seconds = time.perf_counter() - started
    generator = torch.Generator().manual_seed(1)
    hybrid = {layer: torch.rand(args.intermediate, generator=generator) for layer in range(args.layers)}

    started = time.perf_counter()
    prune_model_mlp_glu(twin, pruning_percentage=args.fraction * 100, fairness_scores=hybrid, show_progress=False)
    optipfair_seconds = time.perf_counter() - started

    loaded = LoadedModel(
        model=model, tokenizer=None, adapter=registry().get("adapter", "glu"), model_id="bench", has_lm_head=True
    )
    started = time.perf_counter()
    selection = select(
        {"bench": torch.stack([hybrid[layer] for layer in range(args.layers)])},
        SelectionParams(axes=["bench"], fraction=args.fraction, protect=0),
    )
    report = prune(loaded, selection)
    ours_seconds = time.perf_counter() - started

    same = all(
        torch.equal(mine.mlp.gate_proj.weight, theirs.mlp.gate_proj.weight)
        and torch.equal(mine.mlp.up_proj.weight, theirs.mlp.up_proj.weight)
        and torch.equal(mine.mlp.down_proj.weight, theirs.mlp.down_proj.weight)
        for mine, theirs in zip(model.model.layers, twin.model.layers)
    )
    print("structured pruning: optiPfair's prune_model_mlp_glu against fairaudit's select + prune, same scores")
    print(f"machine: {machine()}, torch {torch.__version__}")
    print(
        f"model: Llama, {args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, "
        f"{report.parameters_before:,} parameters (built in {build_seconds:.1f} s); CPU threads {torch.get_num_threads()}"
    )
    print(
        f"pruned {report.removed} neurons ({report.removed / (args.layers * args.intermediate):.3%}), "
        f"{report.parameters_before - report.parameters_after:,} parameters ({report.parameters_removed_percent:.3f}%)"
    )
    print(
        f"optiPfair prune_model_mlp_glu: {optipfair_seconds:.2f} s; fairaudit select + prune: {ours_seconds:.2f} s; "
        f"ratio {ours_seconds / optipfair_seconds:.3f} (optiPfair is {optipfair_seconds / ours_seconds:.1f}x slower)"
    )
    print(f"same kept neurons and weights in every layer: {same}")


if __name__ == "__main__":
    main()
