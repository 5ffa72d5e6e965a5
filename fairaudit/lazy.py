"""Heavy libraries imported on first use, so that listing plugins and reading `--help` do not
load torch (about two seconds on a small machine).

`from fairaudit.lazy import torch` gives a stand-in whose first attribute access imports the
real torch (then cached by Python as usual); after that, each access costs one dictionary
lookup more than a plain `import torch`. The plugin modules use it; so does anything they
import at module level."""

from __future__ import annotations

import importlib
import types
from typing import Any


class LazyModule(types.ModuleType):
    """A module imported when one of its attributes is first read."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_target"] = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self.__dict__["_target"]), attribute)

    def __dir__(self) -> list[str]:
        return dir(importlib.import_module(self.__dict__["_target"]))


torch = LazyModule("torch")
nn = LazyModule("torch.nn")
numpy = LazyModule("numpy")
scipy_stats = LazyModule("scipy.stats")
