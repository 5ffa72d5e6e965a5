"""Architecture adapters: where a model family keeps its layers, attention and MLP.

An adapter is a plugin (`register_adapters`). The core asks each registered adapter, in
name order, whether it `matches` a model and uses the first that does; an unsupported
model gets an error naming its class and how to add an adapter.

The *neuron* of an MLP is one unit of its expansion layer: for a GLU MLP
`act(gate_i . x) * (up_i . x)`, the input of `down_proj`; for a plain MLP the activated
output of the first projection. Every adapter exposes it as the input of its "down"
module, so one hook captures it in every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from fairaudit.errors import ModelError

if TYPE_CHECKING:  # annotations only: listing the adapters must not import torch
    import torch
    from torch import nn

Where = Literal["output", "input"]

# Components a probe can capture; an adapter offers those its family has.
COMPONENTS = {
    "attention": "output of the attention block (before the residual add)",
    "mlp": "output of the MLP block (before the residual add)",
    "neuron": "MLP expansion units: the input of down_proj / c_proj / fc2 / output.dense",
    "gate": "output of gate_proj (GLU only)",
    "up": "output of up_proj (GLU only)",
    "down": "output of down_proj (GLU only; equals 'mlp' for Llama-style MLPs)",
    "input_norm": "output of the layer's input layer norm (decoders that have one)",
    "heads": "attention heads: the input of the attention output projection (o_proj / c_proj / out_proj / "
    "attention.output.dense), the heads' outputs side by side",
}


@dataclass(frozen=True)
class Site:
    """A module whose output (or first input) is one component of one layer."""

    module: nn.Module
    where: Where = "output"


@dataclass(frozen=True)
class MlpWeights:
    """The weights that define each neuron, as float32 copies.

    `rows` are the input-side matrices, each `[neurons, hidden]` (GLU: gate then up;
    plain MLP: the first projection). `down` is the output-side matrix `[hidden, neurons]`.
    """

    rows: tuple[torch.Tensor, ...]
    down: torch.Tensor


class Adapter(Protocol):
    """What an architecture adapter plugin provides."""

    name: str
    description: str
    glu: bool
    width_key: str  # the config field holding the MLP width (intermediate_size, n_inner, ffn_dim)

    def matches(self, model: nn.Module) -> bool:
        """True when this adapter understands `model`'s structure."""

    def layers(self, model: nn.Module) -> list[nn.Module]:
        """The transformer blocks, first to last."""

    def sites(self, layer: nn.Module) -> dict[str, Site]:
        """Component name (keys of `COMPONENTS`) -> where to hook it in `layer`."""

    def mlp_weights(self, layer: nn.Module) -> MlpWeights:
        """The neuron-defining weights of `layer`'s MLP."""

    def prune_layer(self, layer: nn.Module, keep: torch.Tensor) -> None:
        """Keep only the neurons `keep` (sorted original indices) in `layer`'s MLP."""

    def down(self, layer: nn.Module) -> tuple[nn.Module, int]:
        """The output projection and the dimension of its weight that indexes neurons."""


def find_adapter(model: nn.Module, adapters: dict[str, Adapter]) -> Adapter:
    """The first adapter (by name) that matches `model`, or a `ModelError` saying how to add one."""
    for name in sorted(adapters):
        if adapters[name].matches(model):
            return adapters[name]
    raise ModelError(
        f"no architecture adapter understands {type(model).__name__} "
        f"(model_type '{getattr(getattr(model, 'config', None), 'model_type', '?')}'). Installed adapters: "
        f"{', '.join(sorted(adapters))}. Add one as a plugin: a class with matches/layers/sites/"
        f"mlp_weights/prune_layer registered through the 'register_adapters' hook "
        f"(see README.md, 'Writing a plugin')."
    )
