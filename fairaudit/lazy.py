"""Heavy libraries imported on first use, so that listing plugins and reading `--help` do not
load torch (about two seconds on a small machine).

The house rule (docs/design.md, "Imports"): torch, torch.nn, numpy and scipy.stats are
imported at module level from here, in every module (`from fairaudit.lazy import torch`);
every other heavy library (transformers, lm-eval, accelerate, pyarrow.dataset, jinja2, ray)
is imported inside the function that needs it. A stand-in's first attribute access imports
the real module (then cached by Python as usual); after that, each access costs one
dictionary lookup more than a plain `import torch`. Type checkers see the real modules."""

from __future__ import annotations

import importlib
import types
from typing import TYPE_CHECKING, Any


class LazyModule(types.ModuleType):
    """A module imported when one of its attributes is first read."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_target"] = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self.__dict__["_target"]), attribute)

    def __dir__(self) -> list[str]:
        return dir(importlib.import_module(self.__dict__["_target"]))


if TYPE_CHECKING:
    import numpy as numpy
    import torch as torch
    from scipy import stats as scipy_stats
    from torch import nn as nn
else:
    torch = LazyModule("torch")
    nn = LazyModule("torch.nn")
    numpy = LazyModule("numpy")
    scipy_stats = LazyModule("scipy.stats")
