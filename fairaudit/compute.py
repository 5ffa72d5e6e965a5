"""Compute accounting: the token positions each model forwards, so that a stage's wall time can
be set against the floor its tokens impose (tokens / the machine's forward throughput).

A forward pre-hook on the model's input embeddings counts the token positions they embed,
padding included (padded positions are computed too), and, separately, those embedded with
gradients on (attribution: each such forward is followed by a backward). Every path through the
model starts there: the whole model, its body without the language-model head (the probe), or a
generation step with a KV cache (its new positions only). A caller that passes `inputs_embeds`
is not counted. Counts are kept per model (`TokenCount`) and for the
whole process (`TOTAL`), under one lock, so two evaluator lanes may count at once.

The counting hook is marked (`COUNTING`): `fairaudit.measurement.evaluate.has_hooks` ignores
it, since it changes nothing the model computes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

COUNTING = "_fairaudit_counts_tokens"
_lock = threading.Lock()


@dataclass
class TokenCount:
    """Token positions forwarded, and of those, forwarded with gradients on."""

    forward: int = 0
    with_grad: int = 0

    def snapshot(self) -> tuple[int, int]:
        with _lock:
            return self.forward, self.with_grad


TOTAL = TokenCount()  # every counted model in this process


def count_tokens(model: Any) -> TokenCount:
    """Count what `model` forwards from now on; its `TokenCount`. Counting twice is counted once."""
    existing = getattr(model, "_fairaudit_tokens", None)
    if existing is not None:
        return existing
    import torch

    count = TokenCount()
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None

    def hook(module, args, kwargs):
        ids = args[0] if args else kwargs.get("input", kwargs.get("input_ids"))
        if not isinstance(ids, torch.Tensor):
            return None
        positions = ids.numel()
        grad = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        with _lock:
            for target in (count, TOTAL):
                target.forward += positions
                target.with_grad += positions if grad else 0
        return None

    setattr(hook, COUNTING, True)
    (embeddings if isinstance(embeddings, torch.nn.Module) else model).register_forward_pre_hook(hook, with_kwargs=True)
    model._fairaudit_tokens = count
    return count


def is_counting(hook: Any) -> bool:
    """Whether a registered hook is this module's counter (it changes nothing computed)."""
    return getattr(hook, COUNTING, False)


@contextmanager
def accounted(into: dict[str, dict[str, float]], key: str) -> Iterator[None]:
    """Add the wall seconds and the token positions (every model's) spent inside the block to
    into[key] = {wall_s, tokens, grad_tokens}; repeated blocks with one key add up."""
    started, (forward, with_grad) = time.time(), TOTAL.snapshot()
    try:
        yield
    finally:
        now_forward, now_with_grad = TOTAL.snapshot()
        entry = into.setdefault(key, {"wall_s": 0.0, "tokens": 0, "grad_tokens": 0})
        entry["wall_s"] = round(entry["wall_s"] + time.time() - started, 3)
        entry["tokens"] += now_forward - forward
        entry["grad_tokens"] += now_with_grad - with_grad
