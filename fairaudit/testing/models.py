"""Small models of real architectures, for tests and for plugin authors.

`make_model(family, folder)` writes a randomly initialised model of a real transformers
architecture, and a word-level tokenizer that knows every word of the built-in suites,
with `save_pretrained`, so it loads through the same code path as a user's model.
Everything is offline and seeded.
"""

from __future__ import annotations

import re
from pathlib import Path

from fairaudit.lazy import torch
from fairaudit.resources import suites_dir

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>"]
WORD = re.compile(r"\w+|[^\w\s]")


def suite_words() -> list[str]:
    """Every word and punctuation mark of the built-in suites but their scenarios' block, sorted.
    The scenarios (questions, which only evaluators read) are left out so that writing more of
    them changes no test model: their words are <unk> to the test tokenizer."""
    words: set[str] = set()
    for path in suites_dir().glob("*.yaml"):
        words.update(WORD.findall(_without_scenarios(path.read_text(encoding="utf-8"))))
    return sorted(words)


def _without_scenarios(text: str) -> str:
    """A suite file's text without its top-level `scenarios:` block and the comment lines just above it."""
    kept: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("scenarios:"):
            inside = True
            while kept and kept[-1].startswith("#"):
                kept.pop()
            continue
        if inside and line and not line[0].isspace() and not line.startswith("#"):
            inside = False
        if not inside:
            kept.append(line)
    return "\n".join(kept)


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
    decoder = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        tie_word_embeddings=False,
    )
    configs = {
        "llama": lambda: t.LlamaConfig(**decoder),
        "mistral": lambda: t.MistralConfig(**decoder),
        "qwen2": lambda: t.Qwen2Config(**decoder),
        "qwen3": lambda: t.Qwen3Config(**decoder, head_dim=16),
        "gemma": lambda: t.GemmaConfig(**decoder, head_dim=16),
        "gemma2": lambda: t.Gemma2Config(**decoder, head_dim=16),
        "gemma3": lambda: t.Gemma3TextConfig(**decoder, head_dim=16),
        "phi3": lambda: t.Phi3Config(**decoder),
        "gpt2": lambda: t.GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_inner=intermediate,
            n_positions=256,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
        ),
        "opt": lambda: t.OPTConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            ffn_dim=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=256,
            word_embed_proj_dim=hidden,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        ),
        "bert": lambda: t.BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=256,
            pad_token_id=0,
        ),
    }
    if family not in configs:
        raise ValueError(f"unknown family {family!r}; known: {sorted(configs)}")
    return configs[family]()


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2", "opt", "bert")


def make_model(
    family: str, folder: str | Path, layers: int = 2, hidden: int = 32, intermediate: int = 64, seed: int = 0
) -> Path:
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
        readers = [model.lm_head] + [
            m
            for layer in model.model.layers
            for m in (
                layer.self_attn.q_proj,
                layer.self_attn.k_proj,
                layer.self_attn.v_proj,
                layer.mlp.gate_proj,
                layer.mlp.up_proj,
            )
        ]
        for reader in readers:
            reader.weight.copy_(reader.weight @ rotation.T)
        for layer in model.model.layers:
            for writer in (layer.self_attn.o_proj, layer.mlp.down_proj):
                writer.weight.copy_(rotation @ writer.weight)
    return model
