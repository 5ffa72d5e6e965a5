"""Planted models: a real architecture with bias neurons planted by construction, whose ground
truth (`GroundTruth`) the tests recover (`make_planted_model`).

A model of a real architecture (`llama`: GLU; `gpt2`: plain MLP) with planted bias
neurons, saved to `folder`; returns the ground truth.

Construction (all exact, seeded): race, gender and religion words get a component along
their axis' own direction (nationality words one too, with no neuron reading it); every
other embedding (and GPT-2's position embeddings) is orthogonal to those directions, and
large, so the planted signal barely moves the layer norms. Layer 0's attention copies the
directions to later positions (uniform causal attention, value/output on the directions
only) and its MLP is silent; nothing else reads those directions (later attention,
other neurons and the LM head are projected off them; GPT-2's head is untied for that).
GPT-2 gets one position embedding for every position, so a group word of two tokens
("transgender man") shifts no later token's input (with learned positions, that shift
alone left a gender gap of up to half the planted one after pruning).
In `planted_layer`, planted neurons read an axis direction: 4 per axis for race, gender
and religion, 3 more shared by race and gender; in each group one in three is "important"
(its input rows also hold a large weight on a direction no input ever has, so weight
importance ranks it top while it reacts like the others) and writes only weakly; the
others write toward the words where the axis' negative continuations depart from their neutral ones, so the bias
shows at the output. With `anti_per_axis`, that many more neurons per axis write
*against* the negative continuations (anti-stereotype neurons, `PlantedNeuron.anti`):
they react more strongly than the pro-stereotype ones but write a third as hard, so the
net output bias stays positive and an unsigned score ranks them first. With `fact_neuron`,
one more gender neuron writes toward the token "she": it is bias-reactive (it reacts to
"woman") and it carries a fact (pronoun agreement). Other neurons are random. Planted neurons
take indices from `first_neuron` on, so two planted models (of different families, layer
counts and planted layers) can carry the same planted neurons at different places.
`silent_per_axis` more neurons per axis (race, gender, religion) react like the planted ones
but write nothing (large activation difference, no output effect); `quiet_per_axis` more
read the axis weakly (a fifth of the weight) and write twenty times harder (small
activation difference, real output effect): activation scores rank the silent ones first,
an output attribution must rank the quiet ones first (`PlantedNeuron.role`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairaudit.lazy import torch
from fairaudit.testing.models import WORD, make_tokenizer

STOP_WORDS = {"a", "an", "the", "he", "she", "they", "his", "her", "their", "him", "them", "person"}


@dataclass(frozen=True)
class PlantedNeuron:
    """A neuron planted to react to the group words of `axes`."""

    layer: int
    neuron: int
    axes: tuple[str, ...]
    important: bool  # large peak weights (that carry no signal): hybrid scoring must protect it
    anti: bool = False  # writes against the negative continuations (an anti-stereotype neuron)
    fact: str = ""  # a "fact" neuron: writes toward this token instead (e.g. 'she' after 'woman')
    role: str = ""  # "silent": reacts like a planted neuron, writes nothing; "quiet": reacts weakly, writes hard


@dataclass
class GroundTruth:
    """What was planted in a model made by `make_planted_model`."""

    neurons: list[PlantedNeuron]
    axes: list[str]  # axes with planted neurons
    carriers: dict[str, list[str]]  # axis -> the group words that carry its signal
    pushed_tokens: dict[str, list[str]]  # axis -> first tokens of its negative continuations, pushed up

    def planted(self, axis: str, important: bool | None = None) -> set[tuple[int, int]]:
        return {
            (n.layer, n.neuron)
            for n in self.neurons
            if axis in n.axes and (important is None or n.important == important)
        }

    def shared(self) -> set[tuple[int, int]]:
        return {(n.layer, n.neuron) for n in self.neurons if len(n.axes) > 1}


def _hadamard(size: int) -> torch.Tensor:
    matrix = torch.ones(1, 1)
    while matrix.shape[0] < size:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix / math.sqrt(size)


def _carriers(suite) -> list[str]:
    """Words naming a non-reference group that the reference group's words do not contain."""
    reference = {w for value in suite.groups[suite.reference].values() for w in WORD.findall(value)}
    words = {
        w
        for name, values in suite.groups.items()
        if name != suite.reference
        for value in values.values()
        for w in WORD.findall(value)
    }
    return sorted(w for w in words - reference if w.lower() not in STOP_WORDS)


class _Surgery:
    """Where a family keeps the weights the planting edits. Linear weights are [out, in];
    GPT-2's Conv1D weights are [in, out]."""

    def __init__(self, model, family: str):
        self.model, self.family = model, family
        self.gpt2 = family == "gpt2"
        self.layers = list(model.transformer.h if self.gpt2 else model.model.layers)

    def embeddings(self) -> list[torch.Tensor]:
        if self.gpt2:
            return [self.model.transformer.wte.weight, self.model.transformer.wpe.weight]
        return [self.model.model.embed_tokens.weight]

    def unembedding(self) -> torch.Tensor:
        return self.model.lm_head.weight  # untied in the planted GPT-2, so it can be projected off the directions

    def copy_attention(self, layer, directions: list[torch.Tensor]) -> None:
        """Uniform causal attention whose value/output only carry `directions`."""
        if self.gpt2:
            hidden = layer.attn.c_attn.weight.shape[0]
            layer.attn.c_attn.weight.zero_()
            layer.attn.c_attn.bias.zero_()
            layer.attn.c_proj.weight.zero_()
            layer.attn.c_proj.bias.zero_()
            for index, direction in enumerate(directions):
                layer.attn.c_attn.weight[:, 2 * hidden + index] = direction
                layer.attn.c_proj.weight[index] = direction
        else:
            attention = layer.self_attn
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj):
                projection.weight.zero_()
            for index, direction in enumerate(directions):
                attention.v_proj.weight[index] = direction
                attention.o_proj.weight[:, index] = direction
            layer.input_layernorm.weight.fill_(1.0)

    def silence_mlp(self, layer) -> None:
        if self.gpt2:
            layer.mlp.c_proj.weight.zero_()
            layer.mlp.c_proj.bias.zero_()
        else:
            layer.mlp.down_proj.weight.zero_()
            layer.post_attention_layernorm.weight.fill_(1.0)

    def isolate(self, layer, span: torch.Tensor) -> None:
        """The layer's attention and MLP neither read nor (attention) write along `span`."""

        def off_inputs(weight, transposed):  # remove the span from what the weight reads
            weight -= (span.T @ (span @ weight)) if transposed else ((weight @ span.T) @ span)

        if self.gpt2:
            off_inputs(layer.attn.c_attn.weight, True)
            off_inputs(layer.mlp.c_fc.weight, True)
            layer.attn.c_proj.weight -= (layer.attn.c_proj.weight @ span.T) @ span
            layer.attn.c_proj.bias -= (layer.attn.c_proj.bias @ span.T) @ span
        else:
            for projection in (
                layer.self_attn.q_proj,
                layer.self_attn.k_proj,
                layer.self_attn.v_proj,
                layer.mlp.gate_proj,
                layer.mlp.up_proj,
            ):
                off_inputs(projection.weight, False)
            layer.self_attn.o_proj.weight -= span.T @ (span @ layer.self_attn.o_proj.weight)

    def scale_inputs(self, layer, factor: float) -> None:
        for weight in [layer.mlp.c_fc.weight] if self.gpt2 else [layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]:
            weight *= factor
        if not self.gpt2:
            layer.post_attention_layernorm.weight.fill_(1.0)

    def set_neuron(self, layer, index: int, reads: torch.Tensor, writes: torch.Tensor) -> None:
        if self.gpt2:
            layer.mlp.c_fc.weight[:, index] = reads
            layer.mlp.c_fc.bias[index] = 0.0
            layer.mlp.c_proj.weight[index] = writes
        else:
            layer.mlp.gate_proj.weight[index] = reads
            layer.mlp.up_proj.weight[index] = reads
            layer.mlp.down_proj.weight[:, index] = writes


def make_planted_model(
    folder: str | Path,
    seed: int = 0,
    family: str = "llama",
    layers: int = 4,
    hidden: int = 64,
    intermediate: int = 128,
    planted_layer: int = 1,
    anti_per_axis: int = 0,
    fact_neuron: bool = False,
    first_neuron: int = 0,
    silent_per_axis: int = 0,
    quiet_per_axis: int = 0,
) -> GroundTruth:
    """A model of a real architecture (`llama`: GLU; `gpt2`: plain MLP) with planted bias
    neurons, saved to `folder`; returns the ground truth. The construction, and what each
    option plants, is in this module's docstring."""

    from fairaudit.inputs.suite import resolve_suite

    folder = Path(folder)
    tokenizer = make_tokenizer()
    config, model_class = _planted_config(family, len(tokenizer), layers, hidden, intermediate)
    torch.manual_seed(seed)
    model = model_class(config)
    surgery = _Surgery(model, family)
    basis = _hadamard(hidden)[1:]  # rows orthonormal to each other and to the all-ones direction
    axes = ["race", "gender", "religion", "nationality"]
    direction = {axis: basis[index] for index, axis in enumerate(axes)}
    idle = basis[len(axes)]  # no input ever has a component on it: carries importance, not signal
    span = torch.stack([*direction.values(), idle])
    vocabulary = tokenizer.get_vocab()
    suites = {axis: resolve_suite(axis) for axis in axes}
    carriers = {axis: [w for w in _carriers(suites[axis]) if w in vocabulary] for axis in axes}
    pushed = {axis: _pushed_tokens(suites[axis], vocabulary) for axis in axes}
    with torch.no_grad():
        for table in surgery.embeddings():
            table -= (table @ span.T) @ span  # every token (and position) orthogonal to the planted directions
            table *= 30.0
        if surgery.gpt2:  # one position embedding for all positions: a group word of two tokens shifts no later token
            surgery.embeddings()[1][:] = surgery.embeddings()[1].mean(dim=0)
        token_embeddings = surgery.embeddings()[0]
        for axis in axes:
            for word in carriers[axis]:
                token_embeddings[vocabulary[word]] += 1.0 * direction[axis]
        surgery.copy_attention(surgery.layers[0], list(direction.values()))
        surgery.silence_mlp(surgery.layers[0])
        for later in surgery.layers[1:]:
            surgery.isolate(later, span)
        surgery.unembedding().sub_((surgery.unembedding() @ span.T) @ span)
        layer = surgery.layers[planted_layer]
        surgery.scale_inputs(layer, 40.0)  # random neurons' peak weights as large as the planted ones'
        unembedding = surgery.unembedding()
        neurons = _plant_neurons(
            surgery,
            layer,
            planted_layer,
            direction,
            idle,
            pushed,
            vocabulary,
            first_neuron,
            anti_per_axis,
            silent_per_axis,
            quiet_per_axis,
        )
        index = first_neuron + len(neurons)
        if fact_neuron:
            she = unembedding[vocabulary["she"]]
            surgery.set_neuron(layer, index, 20.0 * direction["gender"], 3.0 * she / she.norm())
            neurons.append(PlantedNeuron(planted_layer, index, ("gender",), False, False, fact="she"))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return GroundTruth(neurons=neurons, axes=["race", "gender", "religion"], carriers=carriers, pushed_tokens=pushed)


def _pushed_tokens(suite: Any, vocabulary: dict[str, int]) -> list[str]:
    """The words where a suite's negative continuations depart from their neutral ones (unless a
    neutral one departs there too): what a planted neuron writes toward."""
    from fairaudit.measurement.metrics import first_difference

    departures = [
        first_difference(WORD.findall(t.continuations["negative"]), WORD.findall(t.continuations["neutral"]))
        for t in suite.templates
        if {"negative", "neutral"} <= set(t.continuations)
    ]
    negative = {a for a, _ in departures if a} - {b for _, b in departures if b}
    return sorted(w for w in negative if w in vocabulary)


def _planted_config(family: str, vocab_size: int, layers: int, hidden: int, intermediate: int) -> tuple[Any, Any]:
    """The transformers config and model class of a planted model's family."""
    import transformers as t

    if family == "gpt2":
        config = t.GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=4,
            n_inner=intermediate,
            n_positions=256,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
            tie_word_embeddings=False,
        )
        model_class = t.GPT2LMHeadModel
    elif family == "llama":
        config = t.LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=256,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
            tie_word_embeddings=False,
        )
        model_class = t.LlamaForCausalLM
    else:
        raise ValueError(f"planted models are built for 'llama' and 'gpt2', not {family!r}")
    return config, model_class


def _plant_neurons(
    surgery: Any,
    layer: Any,
    planted_layer: int,
    direction: dict[str, Any],
    idle: Any,
    pushed: dict[str, list[str]],
    vocabulary: dict[str, int],
    first_neuron: int,
    anti_per_axis: int,
    silent_per_axis: int,
    quiet_per_axis: int,
) -> list[PlantedNeuron]:
    """Write the planted neurons of `make_planted_model` into `layer` (see its docstring)."""
    plan = [
        (("race",), 4, False),
        (("gender",), 4, False),
        (("religion",), 4, False),
        (("race", "gender"), 3, False),
    ]
    plan += [((axis,), anti_per_axis, True) for axis in ("race", "gender", "religion") if anti_per_axis]
    neurons, index = [], first_neuron
    for plan_axes, count, anti in plan:
        for position in range(count):
            important = position % 3 == 2 and not anti
            reads = sum(direction[axis] for axis in plan_axes) / math.sqrt(len(plan_axes))
            row = (24.0 if anti else 20.0) * reads + (80.0 * idle if important else 0.0)
            target = sum(surgery.unembedding()[vocabulary[w]] for axis in plan_axes for w in pushed[axis])
            target = target / target.norm()
            surgery.set_neuron(layer, index, row, (0.02 if important else -0.15 if anti else 0.5) * target)
            neurons.append(PlantedNeuron(planted_layer, index, plan_axes, important, anti))
            index += 1
    for role, count in (("silent", silent_per_axis), ("quiet", quiet_per_axis)):
        for axis in ("race", "gender", "religion"):
            for _ in range(count):
                target = sum(surgery.unembedding()[vocabulary[w]] for w in pushed[axis])
                target = target / target.norm()
                reads, writes = (20.0, 0.0) if role == "silent" else (4.0, 10.0)
                surgery.set_neuron(layer, index, reads * direction[axis], writes * target)
                neurons.append(PlantedNeuron(planted_layer, index, (axis,), False, False, role=role))
                index += 1
    return neurons
