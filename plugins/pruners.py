"""Built-in pruners. Both work for every adapter (GLU and plain MLPs alike): the adapter
knows how its family's MLP is laid out."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from fairaudit.hookspecs import hookimpl
from fairaudit.model import LoadedModel
from fairaudit.prune import PruneReport, Selection, prune, zero


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StructuredPruner:
    name = "structured"
    description = "remove the neurons: smaller gate/up (fc_in) and down (fc_out) layers, config updated"
    Params = NoParams

    def apply(self, loaded: LoadedModel, selection: Selection, params: NoParams) -> PruneReport:
        return prune(loaded, selection)


class ZeroPruner:
    name = "zero"
    description = "zero the neurons' output columns in place: same shapes, same function as removal"
    Params = NoParams

    def apply(self, loaded: LoadedModel, selection: Selection, params: NoParams) -> PruneReport:
        return zero(loaded, selection)


@hookimpl
def register_pruners(register):
    register(StructuredPruner())
    register(ZeroPruner())
