"""Built-in pruners. Both work for every adapter (GLU and plain MLPs alike): the adapter
knows how its family's MLP is laid out."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fairaudit.hookspecs import hookimpl
from fairaudit.inputs.model import LoadedModel
from fairaudit.repair.prune import PruneReport, Selection, fold_means, prune, zero


class AblationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ablation: Literal["zero", "mean"] = Field(
        default="zero",
        description="what a removed neuron leaves behind: nothing, or its "
        "mean activation over the bundled corpus times its output column (in the bias)",
    )
    corpus_sentences: int = Field(default=200, ge=1, description="bundled-corpus sentences averaged for the means")


def _fold(loaded: LoadedModel, selection: Selection, params: AblationParams) -> None:
    if params.ablation == "mean":
        from fairaudit.measurement.attribution import unit_means
        from fairaudit.resources import corpus_sentences

        fold_means(loaded, selection, unit_means(loaded, corpus_sentences(params.corpus_sentences))["neuron"])


class StructuredPruner:
    name = "structured"
    description = (
        "remove the neurons: smaller gate/up (fc_in) and down (fc_out) layers, config updated (ablation: zero or mean)"
    )
    Params = AblationParams

    def apply(self, loaded: LoadedModel, selection: Selection, params: AblationParams) -> PruneReport:
        _fold(loaded, selection, params)
        return prune(loaded, selection)


class ZeroPruner:
    name = "zero"
    description = (
        "zero the neurons' output columns in place: same shapes, same function as removal (ablation: zero or mean)"
    )
    Params = AblationParams

    def apply(self, loaded: LoadedModel, selection: Selection, params: AblationParams) -> PruneReport:
        _fold(loaded, selection, params)
        return zero(loaded, selection)


@hookimpl
def register_pruners(register):
    register(StructuredPruner())
    register(ZeroPruner())
