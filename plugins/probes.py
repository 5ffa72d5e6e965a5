"""The built-in probe: batched forward passes with hooks, streaming statistics.

Both prompts of a pair always sit in the same batch (first halves `a`, second halves
`b`), so differences are taken inside the forward hooks and only pooled vectors
`[prompts, units]` leave them. The language-model head is skipped: the base model runs.
"""

from __future__ import annotations

from typing import Literal

from fairaudit.lazy import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from fairaudit.architecture import COMPONENTS
from fairaudit.capture import run_hooked
from fairaudit.errors import ConfigError
from fairaudit.hookspecs import hookimpl
from fairaudit.model import LoadedModel
from fairaudit.probe import ActivationStats, ComponentStats
from fairaudit.suite import Pair

# optiPfair 0.4.2's default hooks, in its order: self_attn, mlp, gate/up/down_proj, input_layernorm.
OPTIPFAIR_COMPONENTS = ("attention", "mlp", "gate", "up", "down", "input_norm")


class ProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    position: Literal["mean", "last", "aligned"] = "mean"
    batch_size: int = Field(default=16, ge=2, le=4096, description="prompts per forward pass (two per pair)")
    padding_side: Literal["right", "left"] = "right"
    components: list[str] = Field(default_factory=lambda: ["attention", "mlp", "neuron"])
    optipfair_index: bool = Field(default=True, description="also compute optiPfair's token-level bias index")
    progress: bool = True


def _common_suffix(first: list[int], second: list[int]) -> int:
    length = 0
    while length < min(len(first), len(second)) and first[-1 - length] == second[-1 - length]:
        length += 1
    return length


class _Batch:
    """Padded token ids of k pairs (rows 0..k-1 side a, k..2k-1 side b) and pooling weights."""

    def __init__(self, sides: list[list[int]], suffixes: list[int], position: str, padding_side: str, pad_id: int):
        count, width = len(sides), max(len(ids) for ids in sides)
        self.pairs = count // 2
        self.input_ids = torch.full((count, width), pad_id, dtype=torch.long)
        self.attention_mask = torch.zeros((count, width), dtype=torch.long)
        self.pool = torch.zeros((count, width), dtype=torch.float32)
        self.aligned_fallbacks = 0
        for row, ids in enumerate(sides):
            start = width - len(ids) if padding_side == "left" else 0
            self.input_ids[row, start : start + len(ids)] = torch.tensor(ids)
            self.attention_mask[row, start : start + len(ids)] = 1
            end = start + len(ids)
            if position == "mean":
                self.pool[row, start:end] = 1.0 / len(ids)
            elif position == "last":
                self.pool[row, end - 1] = 1.0
            else:  # aligned: the shared suffix after the substituted words, aligned from the end
                suffix = suffixes[row % self.pairs]
                if suffix == 0:
                    self.pool[row, end - 1] = 1.0
                    self.aligned_fallbacks += row < self.pairs
                else:
                    self.pool[row, end - suffix : end] = 1.0 / suffix
        lengths = self.attention_mask.sum(dim=1)
        self.equal_length = lengths[: self.pairs] == lengths[self.pairs :]
        self.lengths_a = lengths[: self.pairs].double()


class _Accumulator:
    """Running sums for one component over pairs or controls."""

    def __init__(self, layers: int, units: int):
        zeros = lambda: torch.zeros((layers, units), dtype=torch.float64)  # noqa: E731
        self.abs_sum, self.abs_sq_sum, self.diff_sum = zeros(), zeros(), zeros()
        self.act_sum, self.act_sq_sum = zeros(), zeros()
        self.divergence: list[torch.Tensor] = []

    def add(self, pooled: torch.Tensor, pairs: int) -> None:
        """`pooled` is `[layers, 2*pairs, units]`: side a then side b."""
        pooled = pooled.double()
        difference = pooled[:, :pairs] - pooled[:, pairs:]
        absolute = difference.abs()
        self.abs_sum += absolute.sum(dim=1)
        self.abs_sq_sum += difference.square().sum(dim=1)
        self.diff_sum += difference.sum(dim=1)
        self.act_sum += pooled.sum(dim=1)
        self.act_sq_sum += pooled.square().sum(dim=1)
        self.divergence.append(absolute.mean(dim=2).T.float())

    def divergence_matrix(self, layers: int) -> torch.Tensor:
        return torch.cat(self.divergence) if self.divergence else torch.zeros((0, layers))


class ActivationProbe:
    name = "activations"
    description = "batched forward passes with hooks on every layer; streaming per-unit statistics"
    Params = ProbeParams

    def run(self, loaded: LoadedModel, pairs: list[Pair], controls: list[Pair], params: ProbeParams, axis: str) -> ActivationStats:
        layers = loaded.layers
        sites = [loaded.adapter.sites(layer) for layer in layers]
        available = set(sites[0])
        unknown = [name for name in params.components if name not in available]
        if unknown:
            raise ConfigError(
                f"probe component(s) {unknown} are not available for the '{loaded.adapter.name}' adapter; "
                f"available: {sorted(available)} (meanings: {', '.join(f'{k}: {v}' for k, v in COMPONENTS.items() if k in available)})."
            )
        optipfair = [name for name in OPTIPFAIR_COMPONENTS if name in available] if params.optipfair_index else []
        optipfair_keys = [f"{name}_layer_{index}" for index in range(len(layers)) for name in optipfair]
        units = {}
        accumulators: dict[bool, dict[str, _Accumulator]] = {}
        tokenizer = loaded.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        encode = lambda text: tokenizer(text)["input_ids"]  # noqa: E731
        optipfair_rows: list[torch.Tensor] = []
        unequal = aligned_fallbacks = 0
        per_batch = params.batch_size // 2
        batches = [(False, pairs[i : i + per_batch]) for i in range(0, len(pairs), per_batch)]
        batches += [(True, controls[i : i + per_batch]) for i in range(0, len(controls), per_batch)]

        for is_control, chunk in tqdm(batches, desc=f"probe {axis}", disable=not params.progress, leave=False):
            encoded = [(encode(pair.text_a), encode(pair.text_b)) for pair in chunk]
            batch = _Batch(
                [a for a, _ in encoded] + [b for _, b in encoded],
                [_common_suffix(a, b) for a, b in encoded],
                params.position,
                params.padding_side,
                pad_id,
            )
            pooled: dict[str, list[torch.Tensor | None]] = {name: [None] * len(layers) for name in params.components}
            terms = torch.full((batch.pairs, len(optipfair_keys)), float("nan"), dtype=torch.float64)
            hooks = {}
            for layer_index in range(len(layers)):
                for name in set(params.components) | set(optipfair):
                    column = optipfair_keys.index(f"{name}_layer_{layer_index}") if name in optipfair else None
                    hooks[(name, layer_index)] = self._hook(name, layer_index, column, batch, pooled, terms, is_control)
            run_hooked(loaded, batch.input_ids, batch.attention_mask, hooks)
            for name, per_layer in pooled.items():
                stacked = torch.stack(per_layer)  # [layers, 2k, units]
                units[name] = stacked.shape[2]
                group = accumulators.setdefault(is_control, {})
                group.setdefault(name, _Accumulator(len(layers), units[name])).add(stacked, batch.pairs)
            if not is_control:
                unequal += int((~batch.equal_length).sum())
                aligned_fallbacks += batch.aligned_fallbacks
                optipfair_rows.append(terms)

        pair_sums = accumulators.get(False, {})
        control_sums = accumulators.get(True, {})
        components = {}
        for name in params.components:
            main = pair_sums.get(name) or _Accumulator(len(layers), units.get(name, 0))
            control = control_sums.get(name) or _Accumulator(len(layers), main.abs_sum.shape[1])
            components[name] = ComponentStats(
                abs_diff_sum=main.abs_sum,
                abs_diff_sq_sum=main.abs_sq_sum,
                diff_sum=main.diff_sum,
                activation_sum=main.act_sum,
                activation_sq_sum=main.act_sq_sum,
                control_abs_diff_sum=control.abs_sum,
                control_abs_diff_sq_sum=control.abs_sq_sum,
                pair_divergence=main.divergence_matrix(len(layers)),
                control_divergence=control.divergence_matrix(len(layers)),
            )
        return ActivationStats(
            axis=axis,
            position=params.position,
            pair_ids=[pair.pair_id for pair in pairs],
            control_ids=[pair.pair_id for pair in controls],
            components=components,
            optipfair_keys=optipfair_keys,
            optipfair_terms=torch.cat(optipfair_rows) if optipfair_rows else torch.zeros((0, len(optipfair_keys))),
            unequal_length_pairs=unequal,
            aligned_fallbacks=aligned_fallbacks,
            continuations={label: sorted({p.continuations[label] for p in pairs if label in p.continuations})
                           for label in sorted({label for p in pairs for label in p.continuations})},
            pairs=list(pairs),
        )

    @staticmethod
    def _hook(name, layer_index, column, batch: _Batch, pooled, terms, is_control):
        pairs = batch.pairs

        def hook(hidden):
            hidden = hidden.float()
            if name in pooled:
                pooled[name][layer_index] = torch.einsum("bt,btu->bu", batch.pool.to(hidden.device), hidden).cpu()
            if column is not None and not is_control and bool(batch.equal_length.any()):
                per_token = (hidden[:pairs] - hidden[pairs:]).abs().mean(dim=-1).double().cpu()  # [k, T]
                mask = batch.attention_mask[:pairs].double()
                value_per_pair = (per_token * mask).sum(dim=1) / batch.lengths_a
                terms[:, column] = torch.where(batch.equal_length, value_per_pair, torch.nan)

        return hook


@hookimpl
def register_probes(register):
    register(ActivationProbe())
