"""The forwards that score continuations: summed log-probabilities of (context, continuation)
token ids, either each request forwarded whole, or each distinct context forwarded once and kept
as keys and values (a KV cache) from which its continuations are scored in one more forward of
their own tokens (the first continuation token is predicted by the context's last position):
the same log-probabilities up to float rounding, for fewer positions.
`evaluate.loglikelihoods` chooses between the two ways.
"""

from __future__ import annotations

import copy
from typing import Any

from fairaudit.inputs.model import LoadedModel
from fairaudit.lazy import torch

Encoded = list[tuple[list[int], list[int]]]  # (context ids, continuation ids) per request
CONTINUATION_POSITIONS = 32  # a continuation forward's padded positions per context of the batch


def forward_parameters(loaded: LoadedModel) -> Any:
    import inspect

    return inspect.signature(loaded.model.forward).parameters


def cache_argument(loaded: LoadedModel) -> str | None:
    """The forward's KV-cache argument: `cache` (transformers 5.x), `past_key_values` (earlier)."""
    parameters = forward_parameters(loaded)
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def keep_logits(loaded: LoadedModel, positions: torch.Tensor) -> dict[str, Any]:
    """The forward argument that restricts the language-model head to `positions`, where the
    model's forward takes one (transformers' causal LMs: `logits_to_keep`)."""
    if "logits_to_keep" in forward_parameters(loaded):
        return {"logits_to_keep": positions.to(loaded.device)}
    return {}


def padded_rows(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded `[rows, width]` token ids and their attention mask."""
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return input_ids, mask


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """float32 (as lm-eval) or wider, on the CPU."""
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1).cpu()


def pad_id(loaded: LoadedModel) -> int:
    """The token id padded positions get (masked out; 0 when the tokenizer has no pad token)."""
    return loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0


def whole_loglikelihoods(loaded: LoadedModel, encoded: Encoded, batch_size: int) -> list[float]:
    """Each request forwarded whole, context and continuation together."""
    results: list[float] = [0.0] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]) - len(encoded[i][1]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        sequences = [(encoded[i][0] + encoded[i][1])[:-1] for i in chunk]
        input_ids, mask = padded_rows(sequences, pad_id(loaded))
        width = input_ids.shape[1]
        # the language-model head only where a continuation token is predicted (the batch's
        # rows have similar lengths: one span of positions covers them all)
        first = min(len(sequences[row]) - len(encoded[i][1]) for row, i in enumerate(chunk))
        with torch.inference_mode():
            logits = loaded.model(
                input_ids=input_ids.to(loaded.device),
                attention_mask=mask.to(loaded.device),
                **keep_logits(loaded, torch.arange(first, width)),
            ).logits
        if logits.shape[1] == width:  # a model whose forward cannot skip positions (or nothing to skip)
            logits = logits[:, first:]
        log_probs = log_softmax(logits)
        for row, index in enumerate(chunk):
            continuation_ids = encoded[index][1]
            end = len(sequences[row])
            positions = torch.arange(end - len(continuation_ids), end) - first
            results[index] = float(
                log_probs[row, positions, torch.tensor(continuation_ids, dtype=torch.long)].double().sum()
            )
    return results


def prefix_loglikelihoods(loaded: LoadedModel, encoded: Encoded, batch_size: int) -> list[float]:
    """Each distinct context forwarded once, `batch_size` contexts at a time, keeping its keys and
    values; every continuation asked of it then scored from that cache (the module docstring)."""
    asked: dict[tuple[int, ...], list[int]] = {}
    for index, (context_ids, _) in enumerate(encoded):
        asked.setdefault(tuple(context_ids), []).append(index)
    contexts = sorted(asked, key=len, reverse=True)  # similar lengths share a batch
    results: list[float] = [0.0] * len(encoded)
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start : start + batch_size]
        input_ids, mask = padded_rows([list(context) for context in chunk], pad_id(loaded))
        lengths = mask.sum(dim=1)
        first, width = int(lengths.min()) - 1, input_ids.shape[1]
        with torch.inference_mode():
            output = loaded.model(
                input_ids=input_ids.to(loaded.device),
                attention_mask=mask.to(loaded.device),
                use_cache=True,
                **keep_logits(loaded, torch.arange(first, width)),
            )
        logits = output.logits if output.logits.shape[1] < width else output.logits[:, first:]
        last = log_softmax(logits[torch.arange(len(chunk)), (lengths - 1 - first).to(logits.device)])
        rows = [(slot, index) for slot, context in enumerate(chunk) for index in asked[context]]
        for slot, index in rows:
            results[index] = float(last[slot, encoded[index][1][0]].double())
        longer = [(slot, index) for slot, index in rows if len(encoded[index][1]) > 1]
        if not longer:
            continue
        cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        if cache is None:  # a model that returns no cache: those requests forwarded whole
            values = whole_loglikelihoods(loaded, [encoded[index] for _, index in longer], batch_size)
        else:  # every continuation of the batch's contexts in one forward, up to `batch_size` times
            # CONTINUATION_POSITIONS positions a forward (a context may have many long continuations),
            # each part from its own copy of the cache, which `_continued` reorders in place
            parts = _parts(longer, [len(encoded[index][1]) - 1 for _, index in longer], batch_size)
            values = []
            for part in parts:
                own = cache if len(parts) == 1 else copy.deepcopy(cache)
                values += [
                    results[index] + value
                    for (_, index), value in zip(part, _continued(loaded, own, mask, part, encoded))
                ]
        for (_, index), value in zip(longer, values):
            results[index] = value
    return results


def _parts(rows: list[tuple[int, int]], lengths: list[int], batch_size: int) -> list[list[tuple[int, int]]]:
    """`rows` (in order) cut into parts whose padded positions (rows times the longest of `lengths`)
    stay within `batch_size` * CONTINUATION_POSITIONS: short continuations (answers, one-word
    labels) share one forward, whose cost on a CPU is mostly reading the weights once."""
    limit, longest = batch_size * CONTINUATION_POSITIONS, 0
    parts: list[list[tuple[int, int]]] = [[]]
    for row, length in zip(rows, lengths):
        longest = max(longest, length)
        if parts[-1] and (len(parts[-1]) + 1) * longest > limit:
            parts.append([])
            longest = length
        parts[-1].append(row)
    return parts


def _continued(
    loaded: LoadedModel, cache: Any, context_mask: torch.Tensor, rows: list[tuple[int, int]], encoded: Encoded
) -> list[float]:
    """Summed log-probability of continuation tokens 2.. of each (context slot, request) row, from
    the contexts' cache (rows reordered and repeated to match, in place)."""
    slots = torch.tensor([slot for slot, _ in rows])
    cache.reorder_cache(slots.to(loaded.device))
    inputs = [encoded[index][1][:-1] for _, index in rows]
    input_ids, mask = padded_rows(inputs, pad_id(loaded))
    lengths = context_mask.sum(dim=1)[slots]
    with torch.inference_mode():
        logits = loaded.model(
            input_ids=input_ids.to(loaded.device),
            attention_mask=torch.cat([context_mask[slots], mask], dim=1).to(loaded.device),
            position_ids=(lengths[:, None] + torch.arange(input_ids.shape[1])).to(loaded.device),
            use_cache=True,
            **{str(cache_argument(loaded)): cache},
        ).logits
    log_probs = log_softmax(logits)
    return [
        float(
            log_probs[row, torch.arange(len(tokens)), torch.tensor(encoded[index][1][1:], dtype=torch.long)]
            .double()
            .sum()
        )
        for row, ((_, index), tokens) in enumerate(zip(rows, inputs))
    ]
