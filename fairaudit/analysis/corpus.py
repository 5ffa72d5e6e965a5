"""The text two models' neurons are matched on: read (UTF-8, size-bounded), cut into chunks of
whole words, and refused when it is too small for the matching's permutation test to mean
anything or is not running text."""

from __future__ import annotations

import re
from pathlib import Path

from fairaudit.errors import FairauditError
from fairaudit.inputs.model import LoadedModel

WORDS_PER_CHUNK = 120  # words per forward pass: short enough for any model's context
MIN_MATCH_WORDS = 50  # fewer words give degenerate correlations: the permutation test would mean nothing
MAX_WORD_CHARACTERS = 64  # a longer "word" is not running text (and could outgrow a model's context)


def corpus_chunks(text: str, words_per_chunk: int = WORDS_PER_CHUNK, max_words: int | None = None) -> list[str]:
    """The corpus as chunks of whole words (a chunk keeps its original spacing within a line)."""
    words = re.findall(r"\S+", text)[:max_words]
    return [" ".join(words[start : start + words_per_chunk]) for start in range(0, len(words), words_per_chunk)]


def matching_chunks(corpus: str | Path | None, max_words: int) -> list[str]:
    """The chunks of words a matching runs on, refusing a corpus too small for its permutation
    test to mean anything (fewer than `MIN_MATCH_WORDS` words) or that is not running text."""
    name = "the bundled corpus" if corpus in (None, "bundled") else f"corpus {corpus}"
    words = re.findall(r"\S+", read_corpus(None if corpus in (None, "bundled") else corpus))[:max_words]
    if len(words) < MIN_MATCH_WORDS:
        raise FairauditError(
            f"{name} has {len(words)} word(s); matching neurons needs at least {MIN_MATCH_WORDS} for its "
            f"correlations and permutation test to mean anything. Use a longer text."
        )
    long = [word for word in words if len(word) > MAX_WORD_CHARACTERS]
    if long:
        raise FairauditError(
            f"{name}: {len(long)} word(s) longer than {MAX_WORD_CHARACTERS} characters (the first begins "
            f"'{long[0][:30]}'); a matching corpus is running text."
        )
    return corpus_chunks(" ".join(words), max_words=max_words)


def check_context(loaded: LoadedModel, chunks: list[str]) -> None:
    """Refuse, before any activation is computed, a chunk longer than the model's context."""
    context = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    if not context:
        return
    longest = max(len(loaded.tokenizer(chunk)["input_ids"]) for chunk in chunks)
    if longest > context:
        raise FairauditError(
            f"model {loaded.model_id}: a corpus chunk is {longest:,} tokens, longer than its context of "
            f"{context:,}; use a corpus of ordinary words."
        )


def read_corpus(path: str | Path | None) -> str:
    """The matching corpus: a UTF-8 text file, or the corpus bundled with fairaudit."""
    from fairaudit.resources import corpus_path
    from fairaudit.yamlio import read_capped

    path = Path(path) if path else corpus_path()
    raw = read_capped(path, 50 << 20, FairauditError, "corpus")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FairauditError(f"corpus file {path} is not UTF-8 (byte {exc.start}).") from None
