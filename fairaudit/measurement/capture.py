"""Activation capture: one forward pass with hooks on the adapter's sites. The probe and
the diagnosis views both capture through `run_hooked`, so there is one implementation."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from fairaudit.inputs.model import LoadedModel
from fairaudit.lazy import torch

Hook = Callable[["torch.Tensor"], None]


def run_hooked(
    loaded: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, hooks: dict[tuple[str, int], Hook]
) -> None:
    """Run the base model (no LM head for causal models) on a padded batch; `hooks[(component,
    layer)]` receives that site's activations as `[batch, tokens, units]` (tuple outputs
    unwrapped, OPT's flattened `[batch * tokens, units]` reshaped). Position ids follow the
    attention mask, so left padding does not shift absolute positions."""
    forward = loaded.model.base_model if loaded.has_lm_head else loaded.model
    accepted = inspect.signature(forward.forward).parameters
    sites = [loaded.adapter.sites(layer) for layer in loaded.layers]
    shape = input_ids.shape

    def adapt(hook: Hook) -> Hook:
        def call(value) -> None:
            hidden = value[0] if isinstance(value, tuple) else value
            if hidden.dim() == 2:
                hidden = hidden.reshape(shape[0], shape[1], -1)
            hook(hidden)

        return call

    handles = []
    try:
        for (name, layer_index), hook in hooks.items():
            site = sites[layer_index][name]
            wrapped = adapt(hook)
            if site.where == "output":
                handles.append(site.module.register_forward_hook(lambda m, a, out, wrapped=wrapped: wrapped(out)))
            else:
                handles.append(site.module.register_forward_pre_hook(lambda m, a, wrapped=wrapped: wrapped(a)))
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "position_ids" in accepted:
            inputs["position_ids"] = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        if "use_cache" in accepted:
            inputs["use_cache"] = False
        with torch.inference_mode():
            forward(
                **{key: value.to(loaded.device) if torch.is_tensor(value) else value for key, value in inputs.items()}
            )
    finally:
        for handle in handles:
            handle.remove()


def token_states(loaded: LoadedModel, text: str, components: list[str]) -> dict[str, torch.Tensor]:
    """Per-token activations of one prompt: component -> float32 `[layers, tokens, units]`."""
    ids = torch.tensor([loaded.tokenizer(text)["input_ids"]])
    captured: dict[tuple[str, int], torch.Tensor] = {}
    hooks = {
        (name, layer): (lambda hidden, key=(name, layer): captured.__setitem__(key, hidden[0].float().cpu()))
        for name in components
        for layer in range(len(loaded.layers))
    }
    run_hooked(loaded, ids, torch.ones_like(ids), hooks)
    return {name: torch.stack([captured[(name, layer)] for layer in range(len(loaded.layers))]) for name in components}
