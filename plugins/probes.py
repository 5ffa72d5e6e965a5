"""The built-in probe: batched forward passes with hooks, streaming statistics.

Both prompts of a pair always sit in the same batch (first halves `a`, second halves
`b`), so differences are taken inside the forward hooks and only pooled vectors
`[prompts, units]` leave them. The language-model head is skipped: the base model runs.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from fairaudit.errors import ConfigError
from fairaudit.hookspecs import hookimpl
from fairaudit.inputs.architecture import COMPONENTS
from fairaudit.inputs.model import LoadedModel
from fairaudit.inputs.suite import Pair
from fairaudit.lazy import torch
from fairaudit.measurement.capture import run_hooked
from fairaudit.measurement.probe import ActivationStats, ComponentStats

# optiPfair 0.4.2's default hooks, in its order: self_attn, mlp, gate/up/down_proj, input_layernorm.
OPTIPFAIR_COMPONENTS = ("attention", "mlp", "gate", "up", "down", "input_norm")


class ProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    position: Literal["mean", "last", "aligned"] = "mean"
    batch_size: int = Field(default=16, ge=2, le=4096, description="prompts per forward pass (two per pair)")
    padding_side: Literal["right", "left"] = "right"
    components: list[str] = Field(default_factory=lambda: ["attention", "mlp", "neuron"])
    optipfair_index: bool = Field(default=True, description="also compute optiPfair's token-level bias index")
    progress: bool = Field(
        default=True, description="a progress bar while the fairaudit logger shows progress (not with --quiet)"
    )


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
        self._copies: dict = {}

    def on(self, device) -> dict[str, torch.Tensor]:
        """The pooling weights, side a's mask and lengths on `device`, copied there once per batch
        (a copy per hook would wait for the device at every layer)."""
        if device not in self._copies:
            self._copies[device] = {
                "pool": self.pool.to(device),
                "mask_a": self.attention_mask[: self.pairs].double().to(device),
                "lengths_a": self.lengths_a.to(device),
            }
        return self._copies[device]


class _Accumulator:
    """Running sums for one component over pairs or controls, kept on the device the activations
    come from (float64) and brought to the CPU once, by `stats`."""

    SUMS = ("abs_diff_sum", "abs_diff_sq_sum", "diff_sum", "activation_sum", "activation_sq_sum")

    def __init__(self, layers: int, units: int):
        self.layers, self.units = layers, units
        self.sums: list[torch.Tensor] | None = None
        self.divergence: list[torch.Tensor] = []

    def add(self, pooled: torch.Tensor, pairs: int) -> None:
        """`pooled` is `[layers, 2*pairs, units]`: side a then side b."""
        pooled = pooled.double()
        difference = pooled[:, :pairs] - pooled[:, pairs:]
        absolute = difference.abs()
        if self.sums is None:
            self.sums = [
                torch.zeros((self.layers, self.units), dtype=torch.float64, device=pooled.device) for _ in self.SUMS
            ]
        for total, term in zip(self.sums, (absolute, difference.square(), difference, pooled, pooled.square())):
            total += term.sum(dim=1)
        self.divergence.append(absolute.mean(dim=2).T.float())

    def stats(self) -> dict[str, torch.Tensor]:
        """The sums and the `[items, layers]` divergence matrix, on the CPU."""
        sums = self.sums or [torch.zeros((self.layers, self.units), dtype=torch.float64) for _ in self.SUMS]
        found = {name: total.cpu() for name, total in zip(self.SUMS, sums)}
        found["divergence"] = torch.cat(self.divergence).cpu() if self.divergence else torch.zeros((0, self.layers))
        return found


class ActivationProbe:
    name = "activations"
    description = "batched forward passes with hooks on every layer; streaming per-unit statistics"
    Params = ProbeParams

    def run(
        self, loaded: LoadedModel, pairs: list[Pair], controls: list[Pair], params: ProbeParams, axis: str
    ) -> ActivationStats:
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

        shown = params.progress and logging.getLogger("fairaudit").isEnabledFor(logging.INFO)
        for is_control, chunk in tqdm(batches, desc=f"probe {axis}", disable=not shown, leave=False):
            encoded = [(encode(pair.text_a), encode(pair.text_b)) for pair in chunk]
            batch = _Batch(
                [a for a, _ in encoded] + [b for _, b in encoded],
                [_common_suffix(a, b) for a, b in encoded],
                params.position,
                params.padding_side,
                pad_id,
            )
            pooled: dict[str, list[torch.Tensor | None]] = {name: [None] * len(layers) for name in params.components}
            index_terms: list[torch.Tensor | None] = [None] * len(optipfair_keys)  # per column: [k] on the device
            hooks = {}
            for layer_index in range(len(layers)):
                for name in set(params.components) | set(optipfair):
                    column = optipfair_keys.index(f"{name}_layer_{layer_index}") if name in optipfair else None
                    hooks[(name, layer_index)] = self._hook(
                        name, layer_index, column, batch, pooled, index_terms, is_control
                    )
            run_hooked(loaded, batch.input_ids, batch.attention_mask, hooks)
            for name, per_layer in pooled.items():
                stacked = torch.stack([value.to(per_layer[0].device) for value in per_layer])  # [layers, 2k, units]
                units[name] = stacked.shape[2]
                group = accumulators.setdefault(is_control, {})
                group.setdefault(name, _Accumulator(len(layers), units[name])).add(stacked, batch.pairs)
            if not is_control:
                unequal += int((~batch.equal_length).sum())
                aligned_fallbacks += batch.aligned_fallbacks
                optipfair_rows.append(self._index_rows(batch, index_terms))

        return self._stats(
            axis,
            params,
            pairs,
            controls,
            accumulators,
            units,
            len(layers),
            optipfair_keys,
            optipfair_rows,
            unequal,
            aligned_fallbacks,
        )

    @staticmethod
    def _stats(
        axis: str,
        params: ProbeParams,
        pairs: list[Pair],
        controls: list[Pair],
        accumulators: dict[bool, dict[str, _Accumulator]],
        units: dict[str, int],
        layers: int,
        optipfair_keys: list[str],
        optipfair_rows: list[torch.Tensor],
        unequal: int,
        aligned_fallbacks: int,
    ) -> ActivationStats:
        """The axis' `ActivationStats` from the probe's running sums."""
        pair_sums = accumulators.get(False, {})
        control_sums = accumulators.get(True, {})
        components = {}
        for name in params.components:
            main = (pair_sums.get(name) or _Accumulator(layers, units.get(name, 0))).stats()
            control = (control_sums.get(name) or _Accumulator(layers, main["abs_diff_sum"].shape[1])).stats()
            components[name] = ComponentStats(
                **{key: main[key] for key in _Accumulator.SUMS},
                control_abs_diff_sum=control["abs_diff_sum"],
                control_abs_diff_sq_sum=control["abs_diff_sq_sum"],
                pair_divergence=main["divergence"],
                control_divergence=control["divergence"],
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
            continuations={
                label: sorted({p.continuations[label] for p in pairs if label in p.continuations})
                for label in sorted({label for p in pairs for label in p.continuations})
            },
            pairs=list(pairs),
        )

    @staticmethod
    def _hook(name, layer_index, column, batch: _Batch, pooled, index_terms, is_control):
        """Reduce one site's activations where they are; nothing here waits for the device."""
        pairs = batch.pairs

        def hook(hidden):
            hidden = hidden.float()
            copies = batch.on(hidden.device)
            if name in pooled:
                pooled[name][layer_index] = torch.einsum("bt,btu->bu", copies["pool"], hidden)
            if column is not None and not is_control and bool(batch.equal_length.any()):
                per_token = (hidden[:pairs] - hidden[pairs:]).abs().mean(dim=-1).double()  # [k, T]
                index_terms[column] = (per_token * copies["mask_a"]).sum(dim=1) / copies["lengths_a"]

        return hook

    @staticmethod
    def _index_rows(batch: _Batch, index_terms: list) -> torch.Tensor:
        """optiPfair's per-pair terms of one batch, `[k, columns]` on the CPU (one copy): NaN for
        a pair whose sides differ in length, and where the index is off."""
        rows = torch.full((batch.pairs, len(index_terms)), float("nan"), dtype=torch.float64)
        found = [column for column, value in enumerate(index_terms) if value is not None]
        if found:
            device = index_terms[found[0]].device
            values = torch.stack([index_terms[column].to(device) for column in found], dim=1).cpu()
            rows[:, found] = torch.where(batch.equal_length[:, None], values, torch.nan)
        return rows


@hookimpl
def register_probes(register):
    register(ActivationProbe())
