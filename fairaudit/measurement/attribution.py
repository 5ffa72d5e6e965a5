"""Output attribution: which MLP neurons and attention heads carry a pair's output-level bias.

For pair p, the output-level bias m_p (`metrics.output_bias_terms`) is a signed sum of
continuation log-likelihoods: positive = the model prefers the stereotype-consistent reading.
A unit u is an MLP neuron (one input of the MLP's output projection) or an attention head (its
block of the attention output projection's input). With x_u(r, t) its activation in run r of
the pair at token t and g_u(r, t) = dm_p / dx_u(r, t), one backward pass per batch gives

    contribution  c_p(u) = sum_r sum_t x_u(r, t) . g_u(r, t)
    gradient sum  G_p(u) = sum_r sum_t g_u(r, t)

The first-order estimate of how m_p changes when u is ablated (attribution patching) is
-c_p(u) for zero-ablation and mu_u . G_p(u) - c_p(u) for mean-ablation (mu_u: u's mean
activation over the bundled corpus). Because the two runs of a pair enter m_p with opposite
signs, c_p(u) is close to sum_t (x_u(a, t) - x_u(b, t)) . g_u(a, t) when the prompts align token
by token: the unit's share of the group difference that reaches the output. It is an
estimate; `verify` measures the real change by ablating each candidate alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fairaudit.errors import ConfigError
from fairaudit.inputs.model import LoadedModel
from fairaudit.inputs.suite import Pair
from fairaudit.lazy import torch
from fairaudit.measurement import metrics
from fairaudit.measurement.evaluate import encode_request, loglikelihoods
from fairaudit.measurement.forwards import keep_logits, pad_id, padded_rows

KINDS = ("neuron", "head")


def head_count(loaded: LoadedModel) -> int:
    config = loaded.model.config
    config = getattr(config, "text_config", None) or config
    return int(config.num_attention_heads)


def unit_modules(loaded: LoadedModel, kind: str) -> list:
    """The module per layer whose first input holds the units of `kind`."""
    name = "neuron" if kind == "neuron" else "heads"
    sites = [loaded.adapter.sites(layer).get(name) for layer in loaded.layers]
    if any(site is None or site.where != "input" for site in sites):
        raise ConfigError(
            f"the '{loaded.adapter.name}' adapter does not say where its {kind}s are "
            f"(a '{name}' site on the input of a projection); output attribution needs it."
        )
    return [site.module for site in sites]


@dataclass
class _Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: list[tuple[torch.Tensor, torch.Tensor]]  # per row: (positions, token ids) scored
    signs: torch.Tensor  # [rows]
    owners: torch.Tensor  # [rows] index of the pair within the batch


def _batches(loaded: LoadedModel, pairs: list[Pair], pairs_per_batch: int) -> Iterator[tuple[list[int], _Batch]]:
    for start in range(0, len(pairs), pairs_per_batch):
        chunk = list(range(start, min(start + pairs_per_batch, len(pairs))))
        rows = [
            (owner, context, continuation, sign)
            for owner, index in enumerate(chunk)
            for context, continuation, sign in metrics.output_bias_terms(pairs[index])
        ]
        yield (
            chunk,
            _padded(
                loaded,
                [encode_request(loaded.tokenizer, context, continuation) for _, context, continuation, _ in rows],
                [sign for *_, sign in rows],
                [owner for owner, *_ in rows],
            ),
        )


def _padded(
    loaded: LoadedModel, encoded: list[tuple[list[int], list[int]]], signs: list[float], owners: list[int]
) -> _Batch:
    """A right-padded batch of (context ids, continuation ids) rows, each scoring its continuation."""
    sequences = [(context + continuation)[:-1] for context, continuation in encoded]
    input_ids, mask = padded_rows(sequences, pad_id(loaded))
    targets = []
    for (_, continuation), sequence in zip(encoded, sequences):
        end = len(sequence)
        targets.append((torch.arange(end - len(continuation), end), torch.tensor(continuation)))
    return _Batch(input_ids, mask, targets, torch.tensor(signs, dtype=torch.float32), torch.tensor(owners))


def _as_3d(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """OPT's MLP sees `[batch * tokens, width]`; every other family `[batch, tokens, width]`."""
    return tensor.reshape(shape[0], shape[1], -1) if tensor.dim() == 2 else tensor


def _forward(loaded: LoadedModel, batch: _Batch) -> tuple[torch.Tensor, int]:
    """Logits at the scored positions only (from the first one any row scores), and that offset."""
    first = min(int(positions[0]) for positions, _ in batch.targets)
    width = batch.input_ids.shape[1]
    logits = loaded.model(
        input_ids=batch.input_ids.to(loaded.device),
        attention_mask=batch.attention_mask.to(loaded.device),
        use_cache=False,
        **keep_logits(loaded, torch.arange(first, width)),
    ).logits
    return (logits, first) if logits.shape[1] < width else (logits, 0)


def _row_scores(logits: torch.Tensor, batch: _Batch, offset: int = 0) -> torch.Tensor:
    """[rows]: signed summed log-probability of each row's continuation (float32 softmax);
    `logits` start at position `offset`."""
    values = []
    for row, (positions, tokens) in enumerate(batch.targets):
        selected = logits[row, (positions - offset).to(logits.device)]
        log_probs = torch.log_softmax(selected.to(torch.promote_types(selected.dtype, torch.float32)), dim=-1)
        values.append(log_probs.gather(1, tokens.to(logits.device)[:, None]).sum())
    return torch.stack(values) * batch.signs.to(logits.device, values[0].dtype)


def output_bias_values(
    loaded: LoadedModel, pairs: list[Pair], pairs_per_batch: int = 8, known: dict[tuple[str, str], float] | None = None
) -> torch.Tensor:
    """[pairs] float64: m_p for each pair (no gradient), from the log-likelihoods the evaluators
    use (`fairaudit.measurement.evaluate.loglikelihoods`: a context and continuation shared by several pairs,
    such as the reference group's side, is computed once; one in `known` is not computed)."""
    terms = [metrics.output_bias_terms(pair) for pair in pairs]
    scores = iter(
        loglikelihoods(
            loaded,
            [(context, continuation) for found in terms for context, continuation, _ in found],
            batch_size=4 * pairs_per_batch,
            known=known,
        )
    )
    return torch.tensor([sum(sign * next(scores) for _, _, sign in found) for found in terms], dtype=torch.float64)


def _batched_values(loaded: LoadedModel, pairs: list[Pair], pairs_per_batch: int) -> torch.Tensor:
    """m_p computed through the same batches as `measured_change`'s ablated copies."""
    values = torch.zeros(len(pairs), dtype=torch.float64)
    for chunk, batch in _batches(loaded, pairs, pairs_per_batch):
        with torch.inference_mode():
            logits, offset = _forward(loaded, batch)
        rows = _row_scores(logits, batch, offset).double().cpu()
        values[chunk] = torch.zeros(len(chunk), dtype=torch.float64).index_add_(0, batch.owners, rows)
    return values


@dataclass
class Attribution:
    """Per-pair attribution of one axis' output bias. Tensors `[pairs, layers, units]`,
    float32; heads' gradient sums keep every head dimension: `[pairs, layers, heads * dims]`."""

    pair_ids: list[str]
    output_bias: torch.Tensor  # float64 [pairs]: m_p
    contribution: dict[str, torch.Tensor]  # kind -> c_p(u)
    gradient_sum: dict[str, torch.Tensor]  # kind -> G_p(u) (heads: per dimension)
    heads: int

    def predicted_change(self, kind: str, means: torch.Tensor | None = None) -> torch.Tensor:
        """[pairs, layers, units]: first-order change of m_p when each unit alone is ablated:
        zero-ablation when `means` is None, else mean-ablation to `means` (`[layers, width]`)."""
        change = -self.contribution[kind].double()
        if means is None:
            return change
        shift = self.gradient_sum[kind].double() * means.double()[None]
        if kind == "head":
            pairs, layers, width = shift.shape
            shift = shift.reshape(pairs, layers, self.heads, width // self.heads).sum(dim=-1)
        return change + shift


def attribute(loaded: LoadedModel, pairs: list[Pair], pairs_per_batch: int = 8) -> Attribution:
    """One forward and one backward pass per batch; see the module's docstring. Each distinct
    (context, continuation) run is computed once however many pairs share it (the reference
    group's side of every pair of a template): its product x . g is its own, and a pair's
    contribution is the signed sum of its runs' products."""
    if not loaded.has_lm_head:
        raise ConfigError("output attribution needs a language-model head; this model is an encoder.")
    pairs = [pair for pair in pairs if metrics.output_bias_terms(pair)]
    modules = {kind: unit_modules(loaded, kind) for kind in KINDS}
    heads = head_count(loaded)
    layers = len(loaded.layers)
    terms = [metrics.output_bias_terms(pair) for pair in pairs]
    runs = list(dict.fromkeys((context, continuation) for found in terms for context, continuation, _ in found))
    where = {run: index for index, run in enumerate(runs)}
    weight = torch.zeros(
        (len(pairs), len(runs)), dtype=torch.float64
    )  # m_p = sum_r weight[p, r] * (log-likelihood of run r)
    for index, found in enumerate(terms):
        for context, continuation, sign in found:
            weight[index, where[(context, continuation)]] += sign
    scores = torch.zeros(len(runs), dtype=torch.float64)
    contribution: dict[str, list] = {kind: [None] * layers for kind in KINDS}
    gradient_sum: dict[str, list] = {kind: [None] * layers for kind in KINDS}
    per_batch = 4 * pairs_per_batch
    for start in range(0, len(runs), per_batch):
        chunk = list(range(start, min(start + per_batch, len(runs))))
        batch = _padded(
            loaded, [encode_request(loaded.tokenizer, *runs[index]) for index in chunk], [1.0] * len(chunk), chunk
        )
        captured: dict[tuple[str, int], torch.Tensor] = {}
        handles = [
            module.register_forward_pre_hook(lambda m, args, key=(kind, layer): captured.__setitem__(key, args[0]))
            for kind in KINDS
            for layer, module in enumerate(modules[kind])
        ]
        embeddings = loaded.model.get_input_embeddings()
        handles.append(embeddings.register_forward_hook(lambda m, args, out: out.requires_grad_(True)))
        try:
            with torch.enable_grad():
                logits, offset = _forward(loaded, batch)
                rows = _row_scores(logits, batch, offset)
                keys = sorted(captured)
                grads = torch.autograd.grad(rows.sum(), [captured[key] for key in keys])
        finally:
            for handle in handles:
                handle.remove()
        scores[chunk] = rows.detach().double().cpu()
        mixing = weight[:, chunk].float()  # [pairs, runs of this batch]
        shape = batch.input_ids.shape
        for (kind, layer), grad in zip(keys, grads):
            activation = _as_3d(captured[(kind, layer)].detach().float(), shape)
            grad = _as_3d(grad.float(), shape)
            product = (activation * grad).sum(dim=1)  # [runs, width]
            if kind == "head":
                product = product.reshape(product.shape[0], heads, -1).sum(dim=-1)
            for store, value in ((contribution, product), (gradient_sum, grad.sum(dim=1))):
                added = mixing @ value.cpu()
                store[kind][layer] = added if store[kind][layer] is None else store[kind][layer] + added

    def stacked(found: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        return {kind: torch.stack(found[kind], dim=1) if runs else torch.zeros((0, layers, 0)) for kind in KINDS}

    return Attribution(
        pair_ids=[pair.pair_id for pair in pairs],
        output_bias=weight @ scores,
        contribution=stacked(contribution),
        gradient_sum=stacked(gradient_sum),
        heads=heads,
    )


def shared_attribution(stats, loaded: LoadedModel, pairs_per_batch: int = 8) -> Attribution:
    """The attribution of `stats`' pairs (an `ActivationStats`), computed once per axis and kept
    in `stats.shared`: every scorer that asks with the same batch size, a third party's included,
    reuses the same gradient pass."""
    key = ("attribution", pairs_per_batch)
    if key not in stats.shared:
        if not stats.pairs:
            raise ConfigError(
                "output attribution needs the probe's pairs (ActivationStats.pairs); the probe plugin in use "
                "does not hand them on."
            )
        stats.shared[key] = attribute(loaded, stats.pairs, pairs_per_batch)
    return stats.shared[key]


def shared_means(stats, loaded: LoadedModel, sentences: int = 200) -> dict[str, torch.Tensor]:
    """`unit_means` over the bundled corpus' first `sentences` sentences, once per axis (`stats.shared`)."""
    from fairaudit.resources import corpus_sentences

    key = ("unit_means", sentences)
    if key not in stats.shared:
        stats.shared[key] = unit_means(loaded, corpus_sentences(sentences))
    return stats.shared[key]


def unit_means(loaded: LoadedModel, texts: list[str], batch_size: int = 8) -> dict[str, torch.Tensor]:
    """kind -> `[layers, width]` mean activation over every token of `texts` (mean-ablation
    values; heads keep every dimension of their block)."""
    modules = {kind: unit_modules(loaded, kind) for kind in KINDS}
    sums = {kind: [torch.zeros(0)] * len(loaded.layers) for kind in KINDS}
    tokens = 0
    for start in range(0, len(texts), batch_size):
        batch = loaded.tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True)
        mask = batch["attention_mask"]
        tokens += int(mask.sum())

        def add(key, args, mask=mask):
            kind, layer = key
            hidden = args[0].detach().float().cpu()
            if hidden.dim() == 2:  # OPT flattens [batch * tokens, width]
                hidden = hidden.reshape(mask.shape[0], mask.shape[1], -1)
            total = (hidden * mask[..., None]).sum(dim=(0, 1)).double()
            sums[kind][layer] = total if not sums[kind][layer].numel() else sums[kind][layer] + total

        handles = [
            module.register_forward_pre_hook(lambda m, args, key=(kind, layer): add(key, args))
            for kind in KINDS
            for layer, module in enumerate(modules[kind])
        ]
        try:
            with torch.inference_mode():
                loaded.model(**{key: value.to(loaded.device) for key, value in batch.items()})
        finally:
            for handle in handles:
                handle.remove()
    return {kind: torch.stack(sums[kind]) / max(tokens, 1) for kind in KINDS}


# --- verification by real ablation -------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    kind: str
    layer: int
    index: int


@contextlib.contextmanager
def _ablating(
    loaded: LoadedModel, group: list[Unit], rows: int, means: dict[str, torch.Tensor] | None
) -> Iterator[None]:
    """While active, a batch of `rows * len(group)` rows is `len(group)` copies of one batch,
    copy i with unit `group[i]` ablated (set to 0, or to its mean)."""
    modules = {kind: unit_modules(loaded, kind) for kind in KINDS}
    heads = head_count(loaded)
    downs = [loaded.adapter.down(layer) for layer in loaded.layers]
    widths = {"neuron": [module.weight.shape[dim] for module, dim in downs], "head": [heads] * len(loaded.layers)}
    outside = [
        unit
        for unit in group
        if not (0 <= unit.layer < len(loaded.layers) and 0 <= unit.index < widths[unit.kind][unit.layer])
    ]
    if outside:
        raise ConfigError(
            f"units {outside} are out of range for this model ({len(loaded.layers)} layers, "
            f"{widths['neuron'][0]} neurons and {heads} heads per layer)."
        )

    def ablate(args, kind, layer):
        original = args[0]
        hidden = original.reshape(rows * len(group), -1, original.shape[-1]).clone()
        for copy, unit in enumerate(group):
            if unit.kind != kind or unit.layer != layer:
                continue
            width = hidden.shape[-1] // heads if kind == "head" else 1
            columns = slice(unit.index * width, (unit.index + 1) * width)
            value = 0.0 if means is None else means[kind][layer, columns].to(hidden.dtype).to(hidden.device)
            hidden[copy * rows : (copy + 1) * rows, :, columns] = value
        return (hidden.reshape(original.shape), *args[1:])

    handles = [
        module.register_forward_pre_hook(lambda m, args, kind=kind, layer=layer: ablate(args, kind, layer))
        for kind in KINDS
        for layer, module in enumerate(modules[kind])
        if any(u.kind == kind and u.layer == layer for u in group)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def measured_change(
    loaded: LoadedModel,
    pairs: list[Pair],
    units: list[Unit],
    means: dict[str, torch.Tensor] | None = None,
    pairs_per_batch: int = 8,
    replicas: int = 4,
) -> torch.Tensor:
    """[units]: the real change of the mean output bias (mean over `pairs` of m_p) when each
    unit alone is ablated (zero, or to `means`). Several units share a forward pass: the
    batch is repeated, each copy with its own unit ablated."""
    pairs = [pair for pair in pairs if metrics.output_bias_terms(pair)]
    base = _batched_values(loaded, pairs, pairs_per_batch).mean()
    changes = torch.zeros(len(units), dtype=torch.float64)
    for start in range(0, len(units), replicas):
        group = units[start : start + replicas]
        total = torch.zeros(len(group), dtype=torch.float64)
        for _, batch in _batches(loaded, pairs, pairs_per_batch):
            rows = batch.input_ids.shape[0]
            repeated = _Batch(
                batch.input_ids.repeat(len(group), 1),
                batch.attention_mask.repeat(len(group), 1),
                batch.targets * len(group),
                batch.signs.repeat(len(group)),
                batch.owners,
            )
            with _ablating(loaded, group, rows, means), torch.inference_mode():
                logits, offset = _forward(loaded, repeated)
            scores = _row_scores(logits, repeated, offset).double().cpu().reshape(len(group), rows)
            total += scores.sum(dim=1)
        changes[start : start + len(group)] = total / len(pairs) - base
    return changes


def _window_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[copies]: the mean next-token NLL of each row of `logits` over `targets`."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = log_probs.gather(2, targets.to(logits.device).expand(logits.shape[0], -1)[..., None])
    return -picked.squeeze(-1).double().mean(dim=1).cpu()


def window_loss(loaded: LoadedModel, ids: list[int]) -> float:
    """The mean next-token NLL of the token sequence `ids` (one window), as the model stands."""
    window = torch.tensor([ids])
    with torch.inference_mode():
        return float(_window_nll(loaded.model(input_ids=window.to(loaded.device)).logits, window[0, 1:])[0])


def measured_loss_change(
    loaded: LoadedModel,
    ids: list[int],
    units: list[Unit],
    means: dict[str, torch.Tensor] | None = None,
    replicas: int = 4,
    base: float | None = None,
) -> torch.Tensor:
    """[units]: the real change of the mean next-token negative log-likelihood of the token
    sequence `ids` (one window) when each unit alone is ablated: the quality cost of removing
    it, measured rather than estimated (a first-order loss estimate understates it badly).
    `base`: that loss with nothing ablated, when the caller has it (`window_loss`)."""
    window = torch.tensor([ids])
    if base is None:
        base = window_loss(loaded, ids)
    changes = torch.zeros(len(units), dtype=torch.float64)
    for start in range(0, len(units), replicas):
        group = units[start : start + replicas]
        with _ablating(loaded, group, 1, means), torch.inference_mode():
            logits = loaded.model(input_ids=window.repeat(len(group), 1).to(loaded.device)).logits
        changes[start : start + len(group)] = _window_nll(logits, window[0, 1:]) - base
    return changes
