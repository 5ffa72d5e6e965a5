"""Built-in architecture adapters: GLU decoders, fused GLU (Phi-3), GPT-2, OPT, BERT.

Adapters match by structure, not by model_type, so a new family with the same module
names (say, another Llama derivative) works without a new adapter.
"""

from __future__ import annotations

from pydantic import BaseModel

from fairaudit.hookspecs import hookimpl
from fairaudit.inputs.architecture import MlpWeights, Site
from fairaudit.lazy import nn, torch


class NoParams(BaseModel):
    model_config = {"extra": "forbid"}


def _base(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def _first_layer_list(model: nn.Module, paths: tuple[str, ...]) -> nn.ModuleList | None:
    base = _base(model)
    for path in paths:
        node = base
        for attribute in path.split("."):
            node = getattr(node, attribute, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList) and len(node) > 0:
            return node
    return None


def _take(tensor: torch.Tensor, dim: int, keep: torch.Tensor) -> torch.Tensor:
    """`tensor.index_select(dim, keep)`; along columns, a few contiguous runs are copied as
    slices instead (pruning removes few neurons, and a strided gather is the slow path)."""
    if dim == 0 or tensor.dim() == 1:
        return tensor.index_select(dim, keep)
    breaks = torch.nonzero(keep[1:] - keep[:-1] != 1).flatten() + 1
    if len(breaks) > 64:
        return tensor.index_select(dim, keep)
    bounds = [0, *breaks.tolist(), len(keep)]
    starts = keep[bounds[:-1]].tolist()
    return torch.cat(
        [tensor.narrow(dim, start, end - begin) for start, begin, end in zip(starts, bounds[:-1], bounds[1:])], dim=dim
    )


def _shrink(module: nn.Module, keep: torch.Tensor, dim: int) -> None:
    """Keep `keep` along `dim` of the weight (and of the bias when `dim` indexes outputs)."""
    weight = module.weight
    keep = keep.to(weight.device)
    module.weight = nn.Parameter(_take(weight.data, dim, keep), requires_grad=weight.requires_grad)
    bias = getattr(module, "bias", None)
    output_dim = 0 if isinstance(module, nn.Linear) else 1  # Conv1D stores [in, out]
    if bias is not None and dim == output_dim:
        module.bias = nn.Parameter(bias.data.index_select(0, keep), requires_grad=bias.requires_grad)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    else:  # transformers' Conv1D
        module.nf = module.weight.shape[1]


class GluAdapter:
    """Llama, Mistral, Qwen2/3, Gemma 1/2/3, SmolLM: `mlp.gate_proj/up_proj/down_proj`."""

    name = "glu"
    description = "GLU decoders (Llama, Mistral, Qwen2/3, Gemma 1/2/3, SmolLM): gate_proj/up_proj/down_proj"
    glu = True
    Params = NoParams
    width_key = "intermediate_size"

    def down(self, layer: nn.Module) -> tuple[nn.Module, int]:
        return layer.mlp.down_proj, 1

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(_first_layer_list(model, ("layers", "model.layers", "language_model.layers")) or [])

    def matches(self, model: nn.Module) -> bool:
        layers = self.layers(model)
        return (
            bool(layers)
            and all(
                hasattr(getattr(layer, "mlp", None), name)
                for layer in layers
                for name in ("gate_proj", "up_proj", "down_proj")
            )
            and hasattr(layers[0], "self_attn")
        )

    def sites(self, layer: nn.Module) -> dict[str, Site]:
        sites = {
            "attention": Site(layer.self_attn),
            "mlp": Site(layer.mlp),
            "neuron": Site(layer.mlp.down_proj, "input"),
            "heads": Site(layer.self_attn.o_proj, "input"),
            "gate": Site(layer.mlp.gate_proj),
            "up": Site(layer.mlp.up_proj),
            "down": Site(layer.mlp.down_proj),
        }
        if hasattr(layer, "input_layernorm"):
            sites["input_norm"] = Site(layer.input_layernorm)
        return sites

    def mlp_weights(self, layer: nn.Module) -> MlpWeights:
        mlp = layer.mlp
        return MlpWeights(
            rows=(mlp.gate_proj.weight.detach().float(), mlp.up_proj.weight.detach().float()),
            down=mlp.down_proj.weight.detach().float(),
        )

    def prune_layer(self, layer: nn.Module, keep: torch.Tensor) -> None:
        _shrink(layer.mlp.gate_proj, keep, 0)
        _shrink(layer.mlp.up_proj, keep, 0)
        _shrink(layer.mlp.down_proj, keep, 1)
        if hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = len(keep)


class FusedGluAdapter:
    """Phi-3: `mlp.gate_up_proj` holds gate rows then up rows."""

    name = "fused_glu"
    description = "fused GLU decoders (Phi-3): gate_up_proj/down_proj"
    glu = True
    Params = NoParams
    width_key = "intermediate_size"

    def down(self, layer: nn.Module) -> tuple[nn.Module, int]:
        return layer.mlp.down_proj, 1

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(_first_layer_list(model, ("layers",)) or [])

    def matches(self, model: nn.Module) -> bool:
        layers = self.layers(model)
        return bool(layers) and all(
            hasattr(getattr(layer, "mlp", None), "gate_up_proj") and hasattr(layer.mlp, "down_proj") for layer in layers
        )

    def sites(self, layer: nn.Module) -> dict[str, Site]:
        sites = {
            "attention": Site(layer.self_attn),
            "mlp": Site(layer.mlp),
            "neuron": Site(layer.mlp.down_proj, "input"),
            "heads": Site(layer.self_attn.o_proj, "input"),
            "down": Site(layer.mlp.down_proj),
        }
        if hasattr(layer, "input_layernorm"):
            sites["input_norm"] = Site(layer.input_layernorm)
        return sites

    def mlp_weights(self, layer: nn.Module) -> MlpWeights:
        gate, up = layer.mlp.gate_up_proj.weight.detach().float().chunk(2, dim=0)
        return MlpWeights(rows=(gate, up), down=layer.mlp.down_proj.weight.detach().float())

    def prune_layer(self, layer: nn.Module, keep: torch.Tensor) -> None:
        width = layer.mlp.down_proj.in_features
        _shrink(layer.mlp.gate_up_proj, torch.cat([keep, keep + width]), 0)
        _shrink(layer.mlp.down_proj, keep, 1)


class Gpt2Adapter:
    """GPT-2: `attn`, `mlp.c_fc` / `mlp.c_proj` (Conv1D, weights stored [in, out])."""

    name = "gpt2"
    description = "GPT-2 style decoders: attn, mlp.c_fc/c_proj (Conv1D)"
    glu = False
    Params = NoParams
    width_key = "n_inner"

    def down(self, layer: nn.Module) -> tuple[nn.Module, int]:
        return layer.mlp.c_proj, 0

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(_first_layer_list(model, ("h",)) or [])

    def matches(self, model: nn.Module) -> bool:
        layers = self.layers(model)
        return bool(layers) and all(hasattr(getattr(layer, "mlp", None), "c_fc") for layer in layers)

    def sites(self, layer: nn.Module) -> dict[str, Site]:
        return {
            "attention": Site(layer.attn),
            "mlp": Site(layer.mlp),
            "neuron": Site(layer.mlp.c_proj, "input"),
            "heads": Site(layer.attn.c_proj, "input"),
            "input_norm": Site(layer.ln_1),
        }

    def mlp_weights(self, layer: nn.Module) -> MlpWeights:
        return MlpWeights(
            rows=(layer.mlp.c_fc.weight.detach().float().T,), down=layer.mlp.c_proj.weight.detach().float().T
        )

    def prune_layer(self, layer: nn.Module, keep: torch.Tensor) -> None:
        _shrink(layer.mlp.c_fc, keep, 1)
        _shrink(layer.mlp.c_proj, keep, 0)


class OptAdapter:
    """OPT (and Falcon-style fc1/fc2 decoders): `self_attn`, `fc1`, `fc2` on the layer."""

    name = "opt"
    description = "OPT-style decoders: self_attn, fc1/fc2"
    glu = False
    Params = NoParams
    width_key = "ffn_dim"

    def down(self, layer: nn.Module) -> tuple[nn.Module, int]:
        return layer.fc2, 1

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(_first_layer_list(model, ("decoder.layers", "layers")) or [])

    def matches(self, model: nn.Module) -> bool:
        layers = self.layers(model)
        return bool(layers) and all(hasattr(layer, "fc1") and hasattr(layer, "fc2") for layer in layers)

    def sites(self, layer: nn.Module) -> dict[str, Site]:
        return {
            "attention": Site(layer.self_attn),
            "mlp": Site(layer.fc2),
            "neuron": Site(layer.fc2, "input"),
            "heads": Site(layer.self_attn.out_proj, "input"),
            "input_norm": Site(layer.self_attn_layer_norm),
        }

    def mlp_weights(self, layer: nn.Module) -> MlpWeights:
        return MlpWeights(rows=(layer.fc1.weight.detach().float(),), down=layer.fc2.weight.detach().float())

    def prune_layer(self, layer: nn.Module, keep: torch.Tensor) -> None:
        _shrink(layer.fc1, keep, 0)
        _shrink(layer.fc2, keep, 1)


class BertAdapter:
    """BERT-style encoders: `attention.output.dense`, `intermediate.dense`, `output.dense`."""

    name = "bert"
    description = "BERT-style encoders: attention.output.dense, intermediate.dense/output.dense"
    glu = False
    Params = NoParams
    width_key = "intermediate_size"

    def down(self, layer: nn.Module) -> tuple[nn.Module, int]:
        return layer.output.dense, 1

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(_first_layer_list(model, ("encoder.layer",)) or [])

    def matches(self, model: nn.Module) -> bool:
        layers = self.layers(model)
        return bool(layers) and all(hasattr(layer, "intermediate") and hasattr(layer, "output") for layer in layers)

    def sites(self, layer: nn.Module) -> dict[str, Site]:
        return {
            "attention": Site(layer.attention.output.dense),
            "mlp": Site(layer.output.dense),
            "neuron": Site(layer.output.dense, "input"),
            "heads": Site(layer.attention.output.dense, "input"),
        }

    def mlp_weights(self, layer: nn.Module) -> MlpWeights:
        return MlpWeights(
            rows=(layer.intermediate.dense.weight.detach().float(),), down=layer.output.dense.weight.detach().float()
        )

    def prune_layer(self, layer: nn.Module, keep: torch.Tensor) -> None:
        _shrink(layer.intermediate.dense, keep, 0)
        _shrink(layer.output.dense, keep, 1)


@hookimpl
def register_adapters(register):
    for adapter in (GluAdapter(), FusedGluAdapter(), Gpt2Adapter(), OptAdapter(), BertAdapter()):
        register(adapter)
