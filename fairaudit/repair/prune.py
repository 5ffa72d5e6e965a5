"""Fairness pruning: select biased, unimportant MLP neurons and remove (or mask) them.

Selection works on stored per-neuron scores (`[layers, units]` per axis); removal goes
through the architecture adapter, so every family the probe supports can be pruned.
A saved pruned model loads with plain `transformers` (no fairaudit code), and carries the
map pruned-index -> original-index (`fairaudit_neuron_map.json`).
"""

from __future__ import annotations

import contextlib
import copy
import glob
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fairaudit.config import SelectionParams
from fairaudit.errors import FairauditError, StoreError
from fairaudit.inputs.model import LoadedModel
from fairaudit.lazy import torch
from fairaudit.measurement import metrics

NEURON_MAP_FILE = "fairaudit_neuron_map.json"
MODEL_CARD_FILE = "README.md"


@dataclass
class Selection:
    """Neurons chosen for pruning: for each layer, sorted original indices; and attention heads
    to zero, as (layer, head)."""

    pruned: list[torch.Tensor]
    widths: list[int]
    ranking: str = ""  # how the neurons were ranked, in words (model card, provenance record)
    heads: list[tuple[int, int]] = field(default_factory=list)
    erasure: Any = None  # fairaudit.repair.erasure.Erasure folded into every layer's writes, or None

    def heads_per_layer(self) -> list[list[int]]:
        return heads_by_layer(self.heads, len(self.widths))


def heads_by_layer(heads: list[tuple[int, int]], layers: int) -> list[list[int]]:
    """(layer, head) pairs as one sorted list of heads per layer."""
    return [sorted(head for layer, head in heads if layer == index) for index in range(layers)]


def _complement(width: int, pruned: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(width, dtype=torch.bool)
    keep[pruned] = False
    return torch.nonzero(keep).flatten()


def _protected(importance: torch.Tensor, protect: float) -> torch.Tensor:
    """[layers, units] bool: neurons in the top `protect` share of importance within their layer."""
    if protect <= 0:
        return torch.zeros_like(importance, dtype=torch.bool)
    threshold = torch.quantile(importance.double(), 1 - protect, dim=1, keepdim=True)
    return importance.double() >= threshold


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` largest entries of a 1-D tensor, ties broken by lower index."""
    if count <= 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(-scores.double(), stable=True).indices
    return order[:count]


def pooled_hybrid(bias: dict[str, torch.Tensor], importance: torch.Tensor, weight: float) -> torch.Tensor:
    """[layers, units]: the hybrid score of the axes' mean bias, i.e. of all axes' pairs
    pooled with equal weight per axis. Unlike the mean of per-axis hybrid scores, it keeps
    each axis' bias magnitude: min-max normalising every axis first gives an axis with no
    bias (only noise) top scores as high as one with strong bias."""
    pooled = torch.stack([value.double() for value in bias.values()]).mean(dim=0)
    return metrics.hybrid(pooled, importance.double(), weight)


def select(
    scores: dict[str, torch.Tensor],
    params: SelectionParams,
    importance: torch.Tensor | None = None,
    push: dict[str, torch.Tensor] | None = None,
) -> Selection:
    """Choose neurons from per-axis scores `{axis: [layers, units]}` (higher = prune first).
    With `direction: pro`, `push` (per axis, same shape) must be > 0 for a neuron to be chosen.
    `combine: pooled` expects the pooling done by the caller (`pooled_hybrid`, one entry);
    given several entries, it averages them like `mean`."""
    first = next(iter(scores.values()))
    layers, units = first.shape
    chosen_layers = list(range(layers)) if params.layers is None else params.layers
    outside = [layer for layer in chosen_layers if not 0 <= layer < layers]
    if outside:
        raise FairauditError(f"layers {outside} are out of range: the model has layers 0..{layers - 1}.")
    protected = (
        _protected(importance, params.protect)
        if importance is not None
        else torch.zeros((layers, units), dtype=torch.bool)
    )
    if params.direction == "pro":
        if push is None:
            raise FairauditError(f"direction 'pro' needs the signed '{params.push}' score, which was not given.")
        scores = {axis: value.double().masked_fill(~(push[axis] > 0), float("-inf")) for axis, value in scores.items()}
    if params.combine in ("max", "mean", "pooled"):
        stacked = torch.stack([value.double() for value in scores.values()])
        scores = {params.combine: stacked.amax(dim=0) if params.combine == "max" else stacked.mean(dim=0)}
    per_axis: list[list[set[int]]] = []
    for axis_scores in scores.values():
        ranked = axis_scores.double().masked_fill(protected, float("-inf")).nan_to_num(nan=float("-inf"))
        sets: list[set[int]] = [set() for _ in range(layers)]
        if params.scope == "per_layer":
            count = min(int(params.fraction * units), units - 1)
            for layer in chosen_layers:
                sets[layer] = {int(i) for i in _top(ranked[layer], count) if ranked[layer, i] > float("-inf")}
        else:
            mask = torch.full_like(ranked, float("-inf"))
            mask[chosen_layers] = ranked[chosen_layers]
            count = int(params.fraction * units * len(chosen_layers))
            for flat in _top(mask.flatten(), count):
                layer, unit = divmod(int(flat), units)
                if mask[layer, unit] > float("-inf") and len(sets[layer]) < units - 1:
                    sets[layer].add(unit)
        per_axis.append(sets)
    combined = []
    for layer in range(layers):
        layer_sets = [sets[layer] for sets in per_axis]
        combined.append(set.intersection(*layer_sets) if params.combine == "intersection" else set.union(*layer_sets))
    if params.round_to:
        for layer in chosen_layers:
            new_width = (units - len(combined[layer])) // params.round_to * params.round_to
            if new_width <= 0:
                raise FairauditError(
                    f"round_to {params.round_to} leaves layer {layer} with no neuron; use a smaller multiple."
                )
            extra = units - new_width - len(combined[layer])
            if extra > 0:  # prune the next-best candidates of the first axis to reach the multiple
                ranked = (
                    next(iter(scores.values()))[layer].double().masked_fill(protected[layer], float("-inf")).clone()
                )
                ranked[list(combined[layer])] = float("-inf")
                combined[layer] |= {int(i) for i in _top(ranked, extra)}
    if not any(combined):
        per_layer = params.fraction * units
        why = (
            f"fraction {params.fraction} of {units} neurons per layer is {per_layer:.2f}, under one neuron"
            if params.scope == "per_layer" and per_layer < 1
            else "every candidate was protected by importance (lower --protect), excluded by --direction pro, or has no score"
        )
        raise FairauditError(f"the selection prunes no neuron: {why}. Nothing was pruned or written.")
    return Selection(pruned=[torch.tensor(sorted(s), dtype=torch.long) for s in combined], widths=[units] * layers)


def pruned_counts(loaded: LoadedModel) -> tuple[list[int], list[int]] | None:
    """(neurons, attention heads) removed or zeroed per layer of a model fairaudit pruned (from
    its neuron map), or None for a model without one."""
    folder = Path(str(loaded.provenance.get("source", "")))
    path = folder / NEURON_MAP_FILE
    if not path.is_file():
        return None
    neuron_map = json.loads(path.read_text(encoding="utf-8"))
    neurons = [
        width - len(kept) + len(zeroed)
        for width, kept, zeroed in zip(neuron_map["original_widths"], neuron_map["layers"], neuron_map["zeroed"])
    ]
    empty: list[list[int]] = [[] for _ in neurons]
    return neurons, [
        len(zeroed) + len(removed)
        for zeroed, removed in zip(neuron_map.get("zeroed_heads", empty), neuron_map.get("removed_heads", empty))
    ]


# --- applying a selection ---------------------------------------------------------------


@dataclass
class PruneReport:
    """What pruning did, per layer and in parameters."""

    widths_before: list[int]
    widths_after: list[int]
    zeroed: list[list[int]]  # per layer: original indices kept at the common width but zeroed
    parameters_before: int
    parameters_after: int
    neuron_map: list[list[int]] = field(default_factory=list)  # per layer: pruned index -> original index
    zeroed_heads: list[list[int]] = field(default_factory=list)  # per layer: attention heads zeroed
    removed_heads: list[list[int]] = field(
        default_factory=list
    )  # per layer: attention heads removed (original indices)

    @property
    def removed(self) -> int:
        """Neurons removed or zeroed."""
        return sum(self.widths_before) - sum(self.widths_after) + sum(len(z) for z in self.zeroed)

    @property
    def parameters_removed_percent(self) -> float:
        return 100.0 * (self.parameters_before - self.parameters_after) / max(self.parameters_before, 1)


def fold_means(loaded: LoadedModel, selection: Selection, means: torch.Tensor) -> None:
    """Mean-ablation, exported exactly: each selected neuron's mean activation (`means`,
    `[layers, width]`) times its output column is added to the output projection's bias, so
    that removing or zeroing the neuron afterwards leaves the model computing what it computed
    with the neuron held at its mean. Families without an output-projection bias get one where
    their config allows it (Llama's `mlp_bias: true`: gate and up biases zero); others are refused."""
    layers = loaded.layers
    missing = [
        index for index, layer in enumerate(layers) if getattr(loaded.adapter.down(layer)[0], "bias", None) is None
    ]
    if missing:
        config = loaded.model.config
        if not hasattr(config, "mlp_bias") or not hasattr(layers[0].mlp, "gate_proj"):
            raise FairauditError(
                f"mean-ablation cannot be exported for {type(loaded.model).__name__}: its MLP output projection "
                f"has no bias and its config cannot add one; prune with ablation 'zero'."
            )
        config.mlp_bias = True
        for layer in layers:  # every layer, so that a plain load with mlp_bias: true finds every bias
            for module in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                if module.bias is None:
                    module.bias = torch.nn.Parameter(
                        torch.zeros(module.out_features, dtype=module.weight.dtype, device=module.weight.device)
                    )
    with torch.no_grad():
        for index, (layer, pruned) in enumerate(zip(layers, selection.pruned)):
            if not len(pruned):
                continue
            module, dim = loaded.adapter.down(layer)
            mean = means[index, pruned].to(module.weight.device, torch.float64)
            columns = module.weight.index_select(dim, pruned.to(module.weight.device)).double()
            shift = columns @ mean if dim == 1 else mean @ columns  # Linear [out, in]; Conv1D [in, out]
            module.bias += shift.to(module.bias.dtype)


def zero_heads(loaded: LoadedModel, heads: list[list[int]]) -> None:
    """Prune attention heads exactly, shapes unchanged: zero each listed head's columns of the
    attention output projection (its block of the projection's input), per layer. `remove_heads`
    removes them instead, where the architecture's config can say it."""
    from fairaudit.measurement.attribution import head_count, unit_modules

    modules, count = unit_modules(loaded, "head"), head_count(loaded)
    if len(heads) != len(modules):
        raise FairauditError(f"heads are given for {len(heads)} layers, the model has {len(modules)}.")
    with torch.no_grad():
        for module, chosen in zip(modules, heads):
            is_linear = isinstance(module, torch.nn.Linear)  # Linear [out, in]; GPT-2's Conv1D [in, out]
            width = _head_width(module, count)
            for head in chosen:
                if not 0 <= head < count:
                    raise FairauditError(f"head {head} is out of range: the model has heads 0..{count - 1}.")
                block = slice(head * width, (head + 1) * width)
                if is_linear:
                    module.weight[:, block] = 0.0
                else:
                    module.weight[block, :] = 0.0


def remove_heads(loaded: LoadedModel, heads: list[list[int]]) -> None:
    """Remove attention heads from the weights (shapes shrink; the config's head counts follow),
    where the architecture allows it: separate q/k/v/o projections (Llama, Qwen, Gemma, Mistral
    families), the same number of heads from every layer (their configs hold one head count),
    and, when several query heads share a key/value head, whole groups of them. Refused
    otherwise (`zero_heads` is exact for any selection)."""
    from fairaudit.measurement.attribution import head_count

    config = getattr(loaded.model.config, "text_config", None) or loaded.model.config
    count, kv = head_count(loaded), int(getattr(config, "num_key_value_heads", None) or head_count(loaded))
    attentions = [getattr(layer, "self_attn", None) for layer in loaded.layers]
    if not all(all(hasattr(a, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")) for a in attentions):
        raise FairauditError(
            f"heads cannot be removed from {type(loaded.model).__name__}: its attention has no separate "
            f"q/k/v/o projections; zero them instead."
        )
    if len(heads) != len(attentions) or len({len(set(chosen)) for chosen in heads}) != 1 or not heads[0]:
        raise FairauditError(
            f"heads are removed only when every layer loses the same number (transformers' config holds one "
            f"head count); this selection takes {[len(set(chosen)) for chosen in heads]} per layer. Zero them "
            f"instead (the default)."
        )
    group = count // kv
    kept_kv = []
    for index, chosen in enumerate(heads):
        groups = sorted({head // group for head in chosen})
        if any(not 0 <= head < count for head in chosen) or sorted(set(chosen)) != [
            g * group + i for g in groups for i in range(group)
        ]:
            raise FairauditError(
                f"layer {index}: heads {sorted(chosen)} cannot be removed: {group} query heads share each key/value "
                f"head, so only whole groups of {group} ({count} heads in all) can go. Zero them instead."
            )
        kept_kv.append([g for g in range(kv) if g not in groups])
    width = int(getattr(config, "head_dim", None) or config.hidden_size // count)
    shape = {"head_dim": width, "num_attention_heads": count - len(heads[0]), "num_key_value_heads": len(kept_kv[0])}
    candidate = copy.deepcopy(
        config
    )  # transformers' own checks of the new config (Llama: heads must divide hidden_size)
    for key, value in shape.items():
        setattr(candidate, key, value)
    try:
        getattr(candidate, "validate", lambda: None)()
    except Exception as exc:  # transformers' validators raise ValueError wrapped in huggingface_hub's own error
        cause = exc.__cause__ or exc
        raise FairauditError(
            f"removing {len(heads[0])} head(s) per layer leaves a config transformers refuses ({cause}); "
            f"zero them instead, or remove a number that it accepts."
        ) from None
    with torch.no_grad():
        for attention, chosen, kv_kept in zip(attentions, heads, kept_kv):
            query = torch.tensor([h * width + d for h in range(count) if h not in chosen for d in range(width)])
            key = torch.tensor([g * width + d for g in kv_kept for d in range(width)])
            for module, rows in ((attention.q_proj, query), (attention.k_proj, key), (attention.v_proj, key)):
                module.weight = torch.nn.Parameter(module.weight[rows.to(module.weight.device)].clone())
                if module.bias is not None:
                    module.bias = torch.nn.Parameter(module.bias[rows.to(module.bias.device)].clone())
                module.out_features = len(rows)
            o_proj = attention.o_proj
            o_proj.weight = torch.nn.Parameter(o_proj.weight[:, query.to(o_proj.weight.device)].clone())
            o_proj.in_features = len(query)
    for key, value in shape.items():
        setattr(config, key, value)


def _zero_neurons(loaded: LoadedModel, layer: torch.nn.Module, neurons: torch.Tensor) -> None:
    module, dim = loaded.adapter.down(layer)
    with torch.no_grad():
        module.weight.index_fill_(dim, neurons.to(module.weight.device), 0.0)


def prune(loaded: LoadedModel, selection: Selection) -> PruneReport:
    """Remove the selected neurons in place and update the config.

    transformers keeps one MLP width for all layers of most families; when layers lose
    different numbers of neurons, each is cut to the widest remaining layer and its surplus
    selected neurons are zeroed (their output column set to 0), which is exact."""
    layers = loaded.layers
    if len(selection.pruned) != len(layers):
        raise FairauditError(f"the selection has {len(selection.pruned)} layers, the model {len(layers)}.")
    parameters_before = sum(p.numel() for p in loaded.model.parameters())
    widths_before = [loaded.adapter.mlp_weights(layer).down.shape[1] for layer in layers]
    if widths_before != selection.widths:
        raise FairauditError(
            f"the selection was made for MLP widths {selection.widths}, the model has {widths_before}."
        )
    target = max(width - len(pruned) for width, pruned in zip(widths_before, selection.pruned))
    zeroed, neuron_map = [], []
    for layer, width, pruned in zip(layers, widths_before, selection.pruned):
        surplus = target - (width - len(pruned))
        restored = pruned[:surplus] if surplus else pruned[:0]  # kept at the common width, but zeroed
        removed = pruned[surplus:]
        keep = _complement(width, removed)
        if len(removed):
            loaded.adapter.prune_layer(layer, keep)
        if len(restored):
            _zero_neurons(loaded, layer, torch.searchsorted(keep, restored))
        zeroed.append(restored.tolist())
        neuron_map.append(keep.tolist())
    setattr(loaded.model.config, loaded.adapter.width_key, target)
    parameters_after = sum(p.numel() for p in loaded.model.parameters())
    return PruneReport(widths_before, [target] * len(layers), zeroed, parameters_before, parameters_after, neuron_map)


def zero(loaded: LoadedModel, selection: Selection) -> PruneReport:
    """Zero the selected neurons' output columns in place; shapes (and the config) unchanged."""
    parameters = sum(p.numel() for p in loaded.model.parameters())
    widths = [loaded.adapter.mlp_weights(layer).down.shape[1] for layer in loaded.layers]
    for layer, pruned in zip(loaded.layers, selection.pruned):
        if len(pruned):
            _zero_neurons(loaded, layer, pruned)
    return PruneReport(
        widths,
        widths,
        [p.tolist() for p in selection.pruned],
        parameters,
        parameters,
        [list(range(width)) for width in widths],
    )


@contextlib.contextmanager
def masked(loaded: LoadedModel, selection: Selection) -> Iterator[None]:
    """Zero the selected neurons and heads for a `with` block (a what-if): their activations are
    set to 0 before the down projection (a neuron) or the attention output projection (a head's
    block of its input); an erasure is folded into the weights, the exact weights given back after."""
    if selection.erasure is not None:
        from fairaudit.repair.erasure import folded

        with folded(loaded, selection.erasure), masked(loaded, replace(selection, erasure=None)):
            yield
        return
    handles = []
    if selection.heads:
        from fairaudit.measurement.attribution import head_count, unit_modules

        modules, count = unit_modules(loaded, "head"), head_count(loaded)
    for index, (layer, pruned, chosen_heads) in enumerate(
        zip(loaded.layers, selection.pruned, selection.heads_per_layer())
    ):
        if len(pruned):
            handles.append(loaded.adapter.sites(layer)["neuron"].module.register_forward_pre_hook(_zeroing(pruned)))
        if chosen_heads:
            width = _head_width(modules[index], count)
            columns = torch.cat([torch.arange(head * width, (head + 1) * width) for head in chosen_heads])
            handles.append(modules[index].register_forward_pre_hook(_zeroing(columns)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _zeroing(columns: torch.Tensor):
    """A forward pre-hook that sets the given columns of a module's first input to 0."""

    def hook(module, args):
        hidden = args[0].clone()
        hidden[..., columns.to(hidden.device)] = 0
        return (hidden, *args[1:])

    return hook


def _head_width(module: torch.nn.Module, heads: int) -> int:
    """Columns per head of an attention output projection (Linear [out, in]; GPT-2's Conv1D [in, out])."""
    return (module.weight.shape[1] if isinstance(module, torch.nn.Linear) else module.weight.shape[0]) // heads


def saved_bytes(loaded: LoadedModel, dtype: str | None = None) -> int:
    """About how many bytes the model's weights take on disk in `dtype` (None: as loaded)."""
    width = torch.empty(0, dtype=getattr(torch, dtype)).element_size() if dtype else None
    tensors = [*loaded.model.parameters(), *loaded.model.buffers()]
    return sum(t.numel() * (width if width and t.is_floating_point() else t.element_size()) for t in tensors)


def save_pruned(
    loaded: LoadedModel, report: PruneReport, out: Path, card: str, dtype: str | None = None, extra=None
) -> Path:
    """Write the pruned model, its tokenizer, the neuron map, a model card and the `extra` files
    (name -> text) to `out`, through a temporary sibling folder renamed into place. `dtype`
    ("float32", "bfloat16", "float16"): cast the model to it first (in place) and save it so."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise StoreError(f"output folder {out} exists and is not empty; choose a new folder.")
    from fairaudit.store import writer_alive

    for stale in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):  # what a killed prune left
        if not writer_alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
    if dtype:
        loaded.model.to(getattr(torch, dtype))
    try:
        loaded.model.save_pretrained(temporary)
        loaded.tokenizer.save_pretrained(temporary)
        neuron_map = {
            "original_widths": report.widths_before,
            "zeroed": report.zeroed,
            "layers": report.neuron_map,
            **({"zeroed_heads": report.zeroed_heads} if any(report.zeroed_heads) else {}),
            **({"removed_heads": report.removed_heads} if any(report.removed_heads) else {}),
        }
        (temporary / NEURON_MAP_FILE).write_text(json.dumps(neuron_map), encoding="utf-8")
        for name, text in {MODEL_CARD_FILE: card, **(extra or {})}.items():
            (temporary / name).write_text(text, encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(temporary, out)
    except Exception as exc:  # OSError, and the errors safetensors raises for a full disk
        shutil.rmtree(temporary, ignore_errors=True)
        detail = (
            exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {str(exc)[:200]}"
        )
        raise StoreError(
            f"could not write the pruned model to {out}: {detail}. Nothing was left behind; free space "
            f"or choose another folder."
        ) from None
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out
