"""Linear erasure folded into the weights: remove each gated axis' counterfactual direction from
every residual write of the model (the attention output projection and the MLP down projection of
every layer), a rank-k edit that leaves a plain `transformers` model of the same shapes.

Definitions (docs/attribution.md, "Erasure"):

- For a probe pair (a, b) of an axis, d_l = (h_l(a) - h_l(b)) / r_l, where h_l is the residual
  stream after layer l at the last token of each side's context (where the continuation is scored)
  and r_l the root mean square of h_l(a) and h_l(b) together: the scale the next layer's norm
  divides by. Unscaled, the last layers' few very large dimensions decide the direction (on
  SmolLM2-135M, erasing it then cost 7% perplexity on religion alone instead of 0.8%).
- The axis' directions: the top `rank` right singular vectors of the matrix whose rows are the
  d_l of all its selection pairs and layers (not centred: the mean difference is the signal).
  The directions of all gated axes are orthonormalized together: U, d x k.
- Folding at strengths s from first layers f: every write W (d x n, and its bias) of a layer l
  becomes (I - U_l diag(s_l) U_l^T) W, where U_l holds the directions whose first layer is at most
  l. At s = 1 no layer from f on writes anything along U; the embeddings' component is left (they
  are tied to the output head in most small models), so the direction is removed from what those
  layers add, not from the residual stream as a whole. Layers before f keep their writes: on
  SmolLM2-135M the validation facts an erasure from every layer cost (mostly a country's
  language) were kept by an erasure from a third of the depth on (docs/attribution.md).
- Each axis' strength and first layer are chosen as the planner's budget is, then the best
  combination of axes (`fairaudit.repair.strengths`).

What it does not show: that the erased direction is "the bias" (it is the direction along which
the pairs' hidden states differ most, which also carries which group is named), or that outputs
are fairer beyond the formats measured. Architectures whose writes pass through a norm before
they join the residual stream (Gemma's post-norms) are refused: the fold would not remove the
direction there (`check_writes`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairaudit.errors import ModelError
from fairaudit.lazy import torch

ERASURE_FILE = "fairaudit_erasure.json"


@dataclass
class Erasure:
    """Directions U (d x k, orthonormal columns, float64), each removed at its strength from the
    writes of every layer from its first layer on: a layer's W becomes (I - U diag(strengths) U^T) W
    over the directions that reach it. `axes[i]`: the axis direction i was fitted on; `first_layers[i]`
    (0 when not given): the first layer whose writes lose it."""

    directions: Any  # torch.Tensor [d, k]
    strengths: list[float]
    axes: list[str]
    first_layers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.first_layers = list(self.first_layers) or [0] * len(self.axes)

    @property
    def rank(self) -> int:
        return int(self.directions.shape[1])

    def at(self, chosen: dict[str, tuple[float, int]]) -> Erasure:
        """The directions of the axes in `chosen`, each at its axis' (strength, first layer)."""
        keep = [i for i, axis in enumerate(self.axes) if axis in chosen]
        return Erasure(
            self.directions[:, keep],
            [chosen[self.axes[i]][0] for i in keep],
            [self.axes[i] for i in keep],
            [chosen[self.axes[i]][1] for i in keep],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "strengths": self.strengths,
            "axes": self.axes,
            "first_layers": self.first_layers,
            "directions": self.directions.T.tolist(),  # k rows of d numbers
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Erasure:
        directions = torch.tensor(data["directions"], dtype=torch.float64).reshape(len(data["axes"]), -1).T
        return cls(
            directions,
            [float(x) for x in data["strengths"]],
            list(data["axes"]),
            [int(x) for x in data.get("first_layers", [])],
        )


def writes(loaded) -> list:
    """Every module whose output is added to the residual stream: per layer, the attention output
    projection and the MLP down projection."""
    from fairaudit.measurement.attribution import unit_modules

    return [module for pair in zip(unit_modules(loaded, "head"), unit_modules(loaded, "neuron")) for module in pair]


def residuals(loaded, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """[texts, layers, d] float64: the residual stream after every layer at each text's last token
    (a text given several times, such as a template's reference side, is forwarded once)."""
    distinct = {text: position for position, text in enumerate(dict.fromkeys(texts))}
    return _residuals(loaded, list(distinct), batch_size)[torch.tensor([distinct[text] for text in texts])]


def _residuals(loaded, texts: list[str], batch_size: int) -> torch.Tensor:
    captured: list[torch.Tensor] = []

    def keep(module, args, output):
        captured.append((output[0] if isinstance(output, tuple) else output).detach())

    hooks = [layer.register_forward_hook(keep) for layer in loaded.layers]
    rows = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = loaded.tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True)
            mask = batch["attention_mask"]
            last = (mask * torch.arange(mask.shape[1])).argmax(dim=1)  # the last real token, either padding side
            captured.clear()
            with torch.inference_mode():
                loaded.model(input_ids=batch["input_ids"].to(loaded.device), attention_mask=mask.to(loaded.device))
            rows.append(
                torch.stack([h[torch.arange(len(last)), last.to(h.device)].double().cpu() for h in captured], 1)
            )
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(rows)


def axis_directions(loaded, pairs: list, rank: int) -> torch.Tensor:
    """[d, rank]: the top right singular vectors of the pairs' scaled differences d_l / r_l, all
    layers stacked (r_l: the root mean square of the two sides' residual streams at that layer)."""
    a, b = residuals(loaded, [p.text_a for p in pairs]), residuals(loaded, [p.text_b for p in pairs])
    scale = ((a.pow(2).mean(dim=-1) + b.pow(2).mean(dim=-1)) / 2).sqrt().clamp_min(1e-12)
    differences = (a - b) / scale[..., None]
    _, _, vh = torch.linalg.svd(differences.reshape(-1, differences.shape[-1]), full_matrices=False)
    return vh[:rank].T


def fit(loaded, parts: dict[str, list], rank: int) -> Erasure:
    """The erasure of the axes in `parts` (axis -> its selection pairs) at strength 1: each axis'
    `rank` directions, orthonormalized together in the order of `parts` (Gram-Schmidt: an axis'
    columns are its directions less what earlier axes' already span)."""
    stacked = torch.cat([axis_directions(loaded, pairs, rank) for pairs in parts.values()], dim=1)
    q, _ = torch.linalg.qr(stacked)
    return Erasure(q, [1.0] * q.shape[1], [axis for axis in parts for _ in range(rank)])


def random_like(erasure: Erasure, seed: int) -> Erasure:
    """Random orthonormal directions of the same rank and strengths (the baseline)."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(erasure.directions.shape, generator=generator, dtype=torch.float64))
    return Erasure(q, list(erasure.strengths), list(erasure.axes), list(erasure.first_layers))


def fold(loaded, erasure: Erasure) -> None:
    """Replace every write W of a layer l by (I - U diag(s) U^T) W over the directions whose first
    layer is at most l, in place (its bias likewise)."""
    with torch.no_grad():
        for position, module in enumerate(writes(loaded)):
            reach = [i for i, first in enumerate(erasure.first_layers) if first <= position // 2]
            if not reach:
                continue
            weight = module.weight
            u = erasure.directions[:, reach].to(weight.device)
            scaled = u * torch.tensor([erasure.strengths[i] for i in reach], dtype=u.dtype, device=u.device)
            is_linear = isinstance(module, torch.nn.Linear)  # Linear [out, in]; GPT-2's Conv1D [in, out]
            w = weight.double() if is_linear else weight.double().T
            w -= scaled @ (u.T @ w)
            weight.copy_(w if is_linear else w.T)
            if getattr(module, "bias", None) is not None:
                b = module.bias.double()
                module.bias.copy_(b - scaled @ (u.T @ b))


@contextmanager
def folded(loaded, erasure: Erasure) -> Iterator[None]:
    """`erasure` folded into the weights for the block, the exact weights given back after."""
    saved = [
        (module, module.weight.detach().clone(), None if module.bias is None else module.bias.detach().clone())
        for module in writes(loaded)
    ]
    try:
        fold(loaded, erasure)
        yield
    finally:
        with torch.no_grad():
            for module, weight, bias in saved:
                module.weight.copy_(weight)
                if bias is not None:
                    module.bias.copy_(bias)


def check_writes(loaded, erasure: Erasure, text: str = "The weather was mild that day.") -> None:
    """Refuse an architecture whose layers do not add the folded writes to the residual stream as
    they are (a norm after the projection): after folding at strength 1, what each layer adds
    must have no component along U."""
    probe = Erasure(erasure.directions, [1.0] * erasure.rank, erasure.axes)  # from the first layer
    with folded(loaded, probe):
        stream = residuals(loaded, [text])[0]  # [layers, d]
    added = stream[1:] - stream[:-1]
    along = (added @ probe.directions).norm(dim=1) / added.norm(dim=1).clamp_min(1e-12)
    if float(along.max()) > 1e-3:
        raise ModelError(
            f"{loaded.model_id}: its layers do not add their output projections to the residual stream as they are "
            f"(a norm sits after them, as in Gemma): a folded erasure leaves {float(along.max()):.1%} of a layer's "
            "write along the erased direction. Erasure is refused for this architecture; prune neurons instead "
            "(causal: {method: neurons})."
        )


def saved(folder: str | Path) -> Erasure | None:
    """The erasure folded into the model saved in `folder`, or None; a file that is not one is refused."""
    path = Path(folder) / ERASURE_FILE
    if not path.is_file():
        return None
    try:
        return Erasure.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(
            f"{path} is not an erasure fairaudit wrote ({type(exc).__name__}: {str(exc)[:200]}): the model's "
            "random baseline cannot draw directions like it. Prune the model again."
        ) from None
