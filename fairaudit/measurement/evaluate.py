"""The evaluation stage: measure a model before and after pruning, and compare.

An evaluator plugin returns an `EvaluationResult`: summary `Measurement`s, and per-item
values (per pair, per window, per question) so that the change between two models can be
bootstrapped over the same items (`compare`). Shared helpers live here: continuation
log-likelihoods computed exactly as lm-evaluation-harness computes them, so that scores
built on them can be checked against lm-eval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from fairaudit.inputs.model import LoadedModel
from fairaudit.inputs.suite import Suite
from fairaudit.lazy import torch
from fairaudit.measurement.forwards import (
    cache_argument,
    keep_logits,
    prefix_loglikelihoods,
    whole_loglikelihoods,
)
from fairaudit.measurement.metrics import bootstrap_interval


@dataclass
class Measurement:
    """One number an evaluator reports; `low`/`high` a 95% bootstrap interval when known."""

    evaluator: str
    axis: str
    metric: str
    value: float
    low: float = math.nan
    high: float = math.nan
    n: int = 0
    error: str = ""
    of_items: bool = False  # the mean of its per-item values, with their bootstrap interval (`add_items`)


@dataclass
class EvaluationResult:
    """What one evaluator measured on one model."""

    measurements: list[Measurement] = field(default_factory=list)
    # (axis, metric) -> {item id: value}, for paired before/after comparisons
    items: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    generations: list[dict[str, Any]] = field(default_factory=list)

    def add_items(self, evaluator: str, axis: str, metric: str, values: dict[str, float]) -> None:
        """Record per-item values and their mean (with a bootstrap interval) as a measurement."""
        self.items[(axis, metric)] = values
        tensor = torch.tensor(list(values.values()), dtype=torch.float64)
        finite = tensor[
            torch.isfinite(tensor)
        ]  # a NaN or infinite item is left out of the mean, its interval and its count
        low, high = bootstrap_interval(finite)
        mean = float(finite.mean()) if finite.numel() else math.nan
        self.measurements.append(
            Measurement(evaluator, axis, metric, mean, low, high, int(finite.numel()), of_items=True)
        )


class Evaluator(Protocol):
    """What an evaluator plugin provides. `requires_causal`: skipped for encoders.
    `exclusive` (optional; True when absent): False lets the audit run it on the original and
    the pruned model at once, in two threads; say False only when `evaluate` reads no model but
    `loaded` (not `reference`) and no process-wide state (global random generators, settings).
    `planned_tokens(loaded, suites, params, reference) -> int` (optional): about how many token
    positions `evaluate` will forward; the audit divides it by the throughput it has measured so
    far and logs the estimate ("evaluating 3 of 16: perplexity on the original model, about 40 s");
    `planned_positions` counts them for log-likelihood requests."""

    name: str
    description: str
    requires_causal: bool

    def evaluate(
        self, loaded: LoadedModel, suites: list[Suite], params, reference: LoadedModel | None
    ) -> EvaluationResult:
        """Measure `loaded`. `reference` is the model before pruning when `loaded` is the
        pruned one (None otherwise); most evaluators ignore it."""


# --- what an earlier stage measured on the same model --------------------------------------


def has_hooks(model: torch.nn.Module) -> bool:
    """True when any module has a forward hook or pre-hook (a mask, a probe): what the model
    computes may then differ from what its weights say. fairaudit's token counter
    (`fairaudit.compute`) changes nothing and is not counted."""
    from fairaudit.compute import is_counting

    return any(
        module._forward_hooks or any(not is_counting(hook) for hook in module._forward_pre_hooks.values())
        for module in model.modules()
    )


def remember(loaded: LoadedModel, key: Any, value: Any, weights: str) -> None:
    """Keep `value`, measured on `loaded` while its weights hashed to `weights`, for `recall`."""
    loaded.measured[key] = (weights, value)


def recall(loaded: LoadedModel, key: Any) -> Any:
    """The value remembered under `key` if the model still computes what it computed then:
    no hook registered, and the weights hash (recomputed now) unchanged; else None (and a
    stale entry is forgotten). A model changed in place, or masked, is measured again."""
    from fairaudit.inputs.model import weights_hash

    entry = loaded.measured.get(key)
    if entry is None or has_hooks(loaded.model):
        return None
    if weights_hash(loaded.model) != entry[0]:
        del loaded.measured[key]
        return None
    return entry[1]


def divergence_rows(stats) -> dict[str, dict[str, torch.Tensor]]:
    """pair id -> component -> `[layers]` mean |d_p| over units: what the bias re-probe needs of
    an `ActivationStats` (attention and MLP outputs)."""
    from fairaudit.measurement.metrics import INDEX_COMPONENTS

    return {
        pair_id: {name: stats.components[name].pair_divergence[index] for name in INDEX_COMPONENTS}
        for index, pair_id in enumerate(stats.pair_ids)
    }


def probe_key(axis: str, position: str) -> tuple[str, str, str]:
    """Where the probe stage leaves per-pair divergences for the bias re-probe."""
    return ("probe_divergence", axis, position)


# --- log-likelihoods as lm-evaluation-harness computes them -------------------------------


def encode_request(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation), as lm-eval's HFLM encodes a loglikelihood request:
    trailing spaces of the context move to the continuation; the whole string is encoded and
    split at the context's length; an empty context becomes the BOS (else EOS) token."""
    if context == "":
        continuation_ids = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if continuation_ids and prefix == continuation_ids[0]:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix], continuation_ids
    context, continuation = _spaces_moved(context, continuation)
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids) :]


def _spaces_moved(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's rule: the context's trailing spaces belong to the continuation."""
    spaces = len(context) - len(context.rstrip())
    return (context[:-spaces], context[-spaces:] + continuation) if spaces else (context, continuation)


def encode_requests(tokenizer: Any, requests: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """`encode_request` of every request, the strings encoded in two batched calls (every whole
    string, then every distinct context) instead of two calls per request: the same ids."""
    moved = [_spaces_moved(context, continuation) for context, continuation in requests]
    texts = [context + continuation for context, continuation in moved if context]
    contexts = list(dict.fromkeys(context for context, _ in moved if context))
    wholes = iter(tokenizer(texts, add_special_tokens=True)["input_ids"] if texts else [])
    context_ids = dict(zip(contexts, tokenizer(contexts, add_special_tokens=True)["input_ids"] if contexts else []))
    encoded = []
    for (context, _), request in zip(moved, requests):
        if not context:  # an empty context (or one of spaces only): BOS, or EOS, as `encode_request`
            encoded.append(encode_request(tokenizer, *request))
            continue
        whole, prefix = next(wholes), context_ids[context]
        encoded.append((list(prefix), list(whole[len(prefix) :])))
    return encoded


def planned_positions(tokenizer: Any, requests: list[tuple[str, str]]) -> int:
    """About how many token positions `loglikelihoods` forwards for `requests` (padding not
    counted): each distinct context once and every continuation's tokens but its last with shared
    prefixes, each request whole without. For a time estimate, not a measurement."""
    encoded = encode_requests(tokenizer, list(dict.fromkeys(requests)))
    if not SHARE_PREFIXES:
        return sum(len(context) + len(continuation) for context, continuation in encoded)
    contexts = {tuple(context) for context, _ in encoded}  # the last continuation token is never fed
    return sum(map(len, contexts)) + sum(max(len(continuation) - 1, 0) for _, continuation in encoded)


def loglikelihoods(
    loaded: LoadedModel,
    requests: list[tuple[str, str]],
    batch_size: int = 16,
    known: dict[tuple[str, str], float] | None = None,
) -> list[float]:
    """Summed log-probability of each continuation given its context (natural log). A request
    asked several times (the reference group's side of every pair of a template) is computed once;
    one in `known` (what `recall(loaded, LOGLIKELIHOODS)` gives) is not computed at all."""
    known = known or {}
    unique = [request for request in dict.fromkeys(requests) if request not in known]
    values = {**known, **dict(zip(unique, _loglikelihoods(loaded, unique, batch_size)))} if unique else known
    return [values[request] for request in requests]


LOGLIKELIHOODS = "loglikelihoods"  # `remember` key: {(context, continuation): value} the output_bias evaluator computed


def _loglikelihoods(loaded: LoadedModel, requests: list[tuple[str, str]], batch_size: int) -> list[float]:
    encoded = encode_requests(loaded.tokenizer, requests)
    scored = [index for index, (_, continuation_ids) in enumerate(encoded) if continuation_ids]  # no tokens: 0
    compute = prefix_loglikelihoods if SHARE_PREFIXES and cache_argument(loaded) else whole_loglikelihoods
    results = [0.0] * len(encoded)
    for index, value in zip(
        scored, compute(loaded, [encoded[index] for index in scored], batch_size) if scored else []
    ):
        results[index] = value
    return results


SHARE_PREFIXES = True  # False: every request forwards its context again (the slower reference path)


# --- before/after comparison ---------------------------------------------------------------


def compare(
    before: dict[str, float], after: dict[str, float], resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Paired change of a per-item metric between two models, over the items both have:
    means before and after, the absolute and the relative change of the mean, and the change of
    its magnitude (`abs_change` = |mean after| - |mean before|: positive when a signed bias moved
    away from zero), each with a 95% percentile bootstrap interval (items resampled together).
    The relative change is meaningless for signed metrics near zero (log-probability gaps; its
    interval is NaN when a resample's mean before is 0, as it can be for answer shares): read
    the absolute one."""
    keys = [key for key in before if key in after and not (math.isnan(before[key]) or math.isnan(after[key]))]
    if not keys:
        return {"items": 0}
    first = torch.tensor([before[k] for k in keys], dtype=torch.float64)
    second = torch.tensor([after[k] for k in keys], dtype=torch.float64)
    mean_before, mean_after = float(first.mean()), float(second.mean())
    result = {
        "items": len(keys),
        "before": mean_before,
        "after": mean_after,
        "change": mean_after - mean_before,
        "change_low": math.nan,
        "change_high": math.nan,
        "relative_change": (mean_after - mean_before) / abs(mean_before) if mean_before else math.nan,
        "relative_low": math.nan,
        "relative_high": math.nan,
        "abs_change": abs(mean_after) - abs(mean_before),
        "abs_low": math.nan,
        "abs_high": math.nan,
    }
    if len(keys) >= 2:
        generator = torch.Generator().manual_seed(seed)
        draws = torch.randint(0, len(keys), (resamples, len(keys)), generator=generator)
        means_before, means_after = first[draws].mean(dim=1), second[draws].mean(dim=1)
        result["change_low"] = float(torch.quantile(means_after - means_before, 0.025))
        result["change_high"] = float(torch.quantile(means_after - means_before, 0.975))
        magnitude = means_after.abs() - means_before.abs()
        result["abs_low"], result["abs_high"] = (
            float(torch.quantile(magnitude, 0.025)),
            float(torch.quantile(magnitude, 0.975)),
        )
        if mean_before and bool((means_before != 0).all()):  # a resample whose mean is 0 has no relative change
            relative = (means_after - means_before) / means_before.abs()
            result["relative_low"] = float(torch.quantile(relative, 0.025))
            result["relative_high"] = float(torch.quantile(relative, 0.975))
    return result


def window_nll(
    loaded: LoadedModel, ids: list[int], max_length: int, stride: int | None, batch_size: int = 1
) -> list[tuple[float, int]]:
    """Sliding-window negative log-likelihood: each window of up to `max_length` tokens scores
    only its tokens not scored before (at most `stride`), conditioned on the rest; the first
    token is never scored. Returns (summed NLL, tokens scored) per window. Windows of equal
    length and equal scored span run `batch_size` at a time (no padding). The step is at most
    max_length - 1: a window's first token has no context inside it, so consecutive windows
    overlap by at least one token (a larger step would score tokens without context, or skip them)."""
    spans, previous_end = [], 0
    stride = min(stride or max_length - 1, max_length - 1)
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        first_target = max(previous_end, 1)
        if end <= first_target:
            break
        spans.append((begin, end, first_target))
        previous_end = end
        if end == len(ids):
            break
    windows: list[tuple[float, int]] = []
    index = 0
    while index < len(spans):
        shape = lambda span: (span[1] - span[0], span[2] - span[0])  # noqa: E731
        group = [spans[index]]
        while (
            len(group) < batch_size
            and index + len(group) < len(spans)
            and shape(spans[index + len(group)]) == shape(group[0])
        ):
            group.append(spans[index + len(group)])
        index += len(group)
        begin, end, first_target = group[0]
        batch = torch.tensor([ids[b:e] for b, e, _ in group]).to(loaded.device)
        predicting = torch.arange(first_target - begin - 1, end - begin - 1)  # positions whose next token is scored
        keep = keep_logits(loaded, predicting)
        with torch.inference_mode():
            logits = loaded.model(input_ids=batch, **keep).logits
        if not keep:  # a forward that computes every position
            logits = logits[:, predicting]
        for row, (_b, e, f) in enumerate(group):
            targets = torch.tensor(ids[f:e], device=logits.device)
            nll = float(torch.nn.functional.cross_entropy(logits[row].float(), targets, reduction="sum"))
            windows.append((nll, len(targets)))
    return windows
