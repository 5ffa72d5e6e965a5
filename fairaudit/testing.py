"""Small models of real architectures, for tests and for plugin authors.

`make_model(family, folder)` writes a randomly initialised model of a real transformers
architecture, and a word-level tokenizer that knows every word of the built-in suites,
with `save_pretrained`, so it loads through the same code path as a user's model.
Everything is offline and seeded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from fairaudit.resources import suites_dir

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>"]
WORD = re.compile(r"\w+|[^\w\s]")


def suite_words() -> list[str]:
    """Every word and punctuation mark of the built-in suites, sorted."""
    words: set[str] = set()
    for path in suites_dir().glob("*.yaml"):
        words.update(WORD.findall(path.read_text(encoding="utf-8")))
    return sorted(words)


def make_tokenizer(extra_words: list[str] = (), bos: bool = True):
    """A word-level fast tokenizer over the suites' words (+ `extra_words`); unknown words map to <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocabulary = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in [*suite_words(), *extra_words]:
        vocabulary.setdefault(word, len(vocabulary))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocabulary, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def _config(family: str, vocab_size: int, layers: int, hidden: int, intermediate: int):
    import transformers as t

    heads = max(hidden // 16, 2)
    decoder = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                   num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=256,
                   pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    configs = {
        "llama": lambda: t.LlamaConfig(**decoder),
        "mistral": lambda: t.MistralConfig(**decoder),
        "qwen2": lambda: t.Qwen2Config(**decoder),
        "qwen3": lambda: t.Qwen3Config(**decoder, head_dim=16),
        "gemma": lambda: t.GemmaConfig(**decoder, head_dim=16),
        "gemma2": lambda: t.Gemma2Config(**decoder, head_dim=16),
        "gemma3": lambda: t.Gemma3TextConfig(**decoder, head_dim=16),
        "phi3": lambda: t.Phi3Config(**decoder),
        "gpt2": lambda: t.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_inner=intermediate,
                                     n_positions=256, bos_token_id=2, eos_token_id=3, pad_token_id=0),
        "opt": lambda: t.OPTConfig(vocab_size=vocab_size, hidden_size=hidden, ffn_dim=intermediate, num_hidden_layers=layers,
                                   num_attention_heads=heads, max_position_embeddings=256, word_embed_proj_dim=hidden,
                                   pad_token_id=0, bos_token_id=2, eos_token_id=3),
        "bert": lambda: t.BertConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                                     num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=256, pad_token_id=0),
    }
    if family not in configs:
        raise ValueError(f"unknown family {family!r}; known: {sorted(configs)}")
    return configs[family]()


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2", "opt", "bert")


def make_model(family: str, folder: str | Path, layers: int = 2, hidden: int = 32, intermediate: int = 64, seed: int = 0) -> Path:
    """Write a random `family` model and its tokenizer to `folder`; return the folder."""
    import transformers as t

    folder = Path(folder)
    tokenizer = make_tokenizer(bos=family != "bert")
    config = _config(family, len(tokenizer), layers, hidden, intermediate)
    torch.manual_seed(seed)
    if family == "bert":
        model = t.BertModel(config)
    elif family == "gemma3":
        model = t.Gemma3ForCausalLM(config)
    else:
        model = t.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # transformers initialises some norms to exactly 1/0; perturb so every unit differs
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- planted bias: models whose biased neurons are known ----------------------------------------

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
        return {(n.layer, n.neuron) for n in self.neurons if axis in n.axes and (important is None or n.important == important)}

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
    words = {w for name, values in suite.groups.items() if name != suite.reference for value in values.values() for w in WORD.findall(value)}
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
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                               layer.mlp.gate_proj, layer.mlp.up_proj):
                off_inputs(projection.weight, False)
            layer.self_attn.o_proj.weight -= span.T @ (span @ layer.self_attn.o_proj.weight)

    def scale_inputs(self, layer, factor: float) -> None:
        for weight in ([layer.mlp.c_fc.weight] if self.gpt2 else [layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]):
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


def make_planted_model(folder: str | Path, seed: int = 0, family: str = "llama", layers: int = 4, hidden: int = 64,
                       intermediate: int = 128, planted_layer: int = 1, anti_per_axis: int = 0,
                       fact_neuron: bool = False, first_neuron: int = 0, silent_per_axis: int = 0,
                       quiet_per_axis: int = 0) -> GroundTruth:
    """A model of a real architecture (`llama`: GLU; `gpt2`: plain MLP) with planted bias
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
    an output attribution must rank the quiet ones first (`PlantedNeuron.role`)."""
    import transformers as t

    from fairaudit.inputs.suite import resolve_suite
    from fairaudit.measurement.metrics import first_difference

    folder = Path(folder)
    tokenizer = make_tokenizer()
    if family == "gpt2":
        config = t.GPT2Config(vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=4, n_inner=intermediate,
                              n_positions=256, bos_token_id=2, eos_token_id=3, pad_token_id=0, tie_word_embeddings=False)
        model_class = t.GPT2LMHeadModel
    elif family == "llama":
        config = t.LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                               num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, pad_token_id=0,
                               bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
        model_class = t.LlamaForCausalLM
    else:
        raise ValueError(f"planted models are built for 'llama' and 'gpt2', not {family!r}")
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
    pushed = {}
    for axis in axes:  # where each negative continuation departs from its neutral one, unless a neutral one departs there too
        departures = [first_difference(WORD.findall(t.continuations["negative"]), WORD.findall(t.continuations["neutral"]))
                      for t in suites[axis].templates if {"negative", "neutral"} <= set(t.continuations)]
        negative = {a for a, _ in departures if a} - {b for _, b in departures if b}
        pushed[axis] = sorted(w for w in negative if w in vocabulary)
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
        plan = [(("race",), 4, False), (("gender",), 4, False), (("religion",), 4, False), (("race", "gender"), 3, False)]
        plan += [((axis,), anti_per_axis, True) for axis in ("race", "gender", "religion") if anti_per_axis]
        neurons, index = [], first_neuron
        for plan_axes, count, anti in plan:
            for position in range(count):
                important = position % 3 == 2 and not anti
                reads = sum(direction[axis] for axis in plan_axes) / math.sqrt(len(plan_axes))
                row = (24.0 if anti else 20.0) * reads + (80.0 * idle if important else 0.0)
                target = sum(unembedding[vocabulary[w]] for axis in plan_axes for w in pushed[axis])
                target = target / target.norm()
                surgery.set_neuron(layer, index, row, (0.02 if important else -0.15 if anti else 0.5) * target)
                neurons.append(PlantedNeuron(planted_layer, index, plan_axes, important, anti))
                index += 1
        for role, count in (("silent", silent_per_axis), ("quiet", quiet_per_axis)):
            for axis in ("race", "gender", "religion"):
                for _ in range(count):
                    target = sum(unembedding[vocabulary[w]] for w in pushed[axis])
                    target = target / target.norm()
                    reads, writes = (20.0, 0.0) if role == "silent" else (4.0, 10.0)
                    surgery.set_neuron(layer, index, reads * direction[axis], writes * target)
                    neurons.append(PlantedNeuron(planted_layer, index, (axis,), False, False, role=role))
                    index += 1
        if fact_neuron:
            she = unembedding[vocabulary["she"]]
            surgery.set_neuron(layer, index, 20.0 * direction["gender"], 3.0 * she / she.norm())
            neurons.append(PlantedNeuron(planted_layer, index, ("gender",), False, False, fact="she"))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return GroundTruth(neurons=neurons, axes=["race", "gender", "religion"], carriers=carriers, pushed_tokens=pushed)


def rotate_residual_stream(model, seed: int = 0):
    """Rotate a Llama model's residual stream by a random orthogonal matrix, in place, without
    changing what it computes: each RMSNorm's weight is folded into the layers that read its
    output (so the norm commutes with the rotation), embeddings and every weight that reads the
    residual stream are multiplied by Q^T on the input side, every weight that writes to it by
    Q on the output side. MLP neurons see exactly the activations they saw before, so a neuron
    matcher must pair each neuron with itself (the sanity baseline of `fairaudit.analysis.matching`)."""
    hidden = model.config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=generator, dtype=torch.float64))
    rotation = rotation.float()
    with torch.no_grad():
        def fold(norm, readers):
            for reader in readers:
                reader.weight.mul_(norm.weight[None, :])
            norm.weight.fill_(1.0)

        for layer in model.model.layers:
            fold(layer.input_layernorm, [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj])
            fold(layer.post_attention_layernorm, [layer.mlp.gate_proj, layer.mlp.up_proj])
        fold(model.model.norm, [model.lm_head])
        model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight @ rotation.T)
        readers = [model.lm_head] + [m for layer in model.model.layers for m in
                                     (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.gate_proj, layer.mlp.up_proj)]
        for reader in readers:
            reader.weight.copy_(reader.weight @ rotation.T)
        for layer in model.model.layers:
            for writer in (layer.self_attn.o_proj, layer.mlp.down_proj):
                writer.weight.copy_(rotation @ writer.weight)
    return model
