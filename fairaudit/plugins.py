"""The plugin manager and the registry of named components.

`registry()` loads every entry point of the group `fairaudit` (the built-ins included),
calls each plugin's `register_*` hooks, and returns a `Registry` that maps
(kind, name) -> component, remembering which plugin and distribution provided it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from fairaudit import hookspecs
from fairaudit.errors import PluginError

KINDS = ("adapter", "probe", "scorer", "pruner", "evaluator", "importer")
ENTRY_POINT_GROUP = "fairaudit"


@dataclass(frozen=True)
class Registered:
    """One component and where it came from."""

    kind: str
    name: str
    component: Any
    plugin: str
    distribution: str
    version: str

    @property
    def description(self) -> str:
        return getattr(self.component, "description", "")


@dataclass
class Registry:
    """Components by kind and name."""

    components: dict[str, dict[str, Registered]] = field(default_factory=lambda: {kind: {} for kind in KINDS})

    def get(self, kind: str, name: str) -> Any:
        """The component `name` of `kind`; a `PluginError` listing the allowed names if absent."""
        try:
            return self.components[kind][name].component
        except KeyError:
            allowed = ", ".join(sorted(self.components.get(kind, {}))) or "(none installed)"
            raise PluginError(
                f"no {kind} plugin named '{name}'. Installed {kind}s: {allowed}. "
                f"Run 'fairaudit plugins' to see every plugin and where it comes from."
            ) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def entries(self) -> list[Registered]:
        return [entry for kind in KINDS for _, entry in sorted(self.components[kind].items())]


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    return manager


_manager: pluggy.PluginManager | None = None
_distributions: dict[str, tuple[str, str]] = {}
_registry: Registry | None = None


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every `fairaudit` entry point loaded."""
    global _manager
    if _manager is None:
        manager = _new_manager()
        for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
            dist = entry_point.dist
            plugin_name = f"{dist.name if dist else '?'}:{entry_point.name}"
            if manager.has_plugin(plugin_name):
                continue
            try:
                module = entry_point.load()
            except Exception as exc:  # a broken third-party plugin must not hide the others' names
                raise PluginError(
                    f"plugin '{entry_point.name}' ({entry_point.value}, from "
                    f"{dist.name if dist else 'an unknown distribution'}) failed to import: "
                    f"{type(exc).__name__}: {exc}. Uninstall or fix it."
                ) from exc
            manager.register(module, name=plugin_name)
            _distributions[plugin_name] = (dist.name, dist.version) if dist else ("(unknown)", "")
        _manager = manager
    return _manager


def register_plugin(plugin: object, name: str) -> None:
    """Register a plugin object in this process (tests, notebooks) and rebuild the registry."""
    global _registry
    plugin_manager().register(plugin, name=name)
    _distributions[name] = ("(registered in-process)", "")
    _registry = None


def unregister_plugin(name: str) -> None:
    """Undo `register_plugin`."""
    global _registry
    plugin_manager().unregister(name=name)
    _distributions.pop(name, None)
    _registry = None


def registry() -> Registry:
    """All registered components. A plugin whose hook raises is named in the error."""
    global _registry
    if _registry is not None:
        return _registry
    manager = plugin_manager()
    result = Registry()
    for kind in KINDS:
        hook = getattr(manager.hook, f"register_{kind}s")
        for implementation in hook.get_hookimpls():
            plugin_name = implementation.plugin_name
            distribution, version = _distributions.get(plugin_name, ("(unknown)", ""))

            def register(
                component: Any,
                _kind: str = kind,
                _plugin: str = plugin_name,
                _distribution: str = distribution,
                _version: str = version,
            ) -> None:
                name = getattr(component, "name", None)
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin '{_plugin}' registered a {_kind} without a string 'name'.")
                if name in result.components[_kind]:
                    other = result.components[_kind][name].plugin
                    raise PluginError(f"{_kind} '{name}' is registered twice: by '{other}' and by '{_plugin}'.")
                result.components[_kind][name] = Registered(_kind, name, component, _plugin, _distribution, _version)

            try:
                implementation.function(register=register)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin '{plugin_name}' failed in register_{kind}s: {type(exc).__name__}: {exc}."
                ) from exc
    _registry = result
    return result


def notify_stage_finished(stage: str, name: str, axis: str | None, seconds: float) -> list[str]:
    """Call the observer hook on every plugin; return one message per observer that failed."""
    failures = []
    for implementation in plugin_manager().hook.fairaudit_stage_finished.get_hookimpls():
        try:
            implementation.function(
                **{
                    arg: value
                    for arg, value in dict(stage=stage, name=name, axis=axis, seconds=seconds).items()
                    if arg in implementation.argnames
                }
            )
        except Exception as exc:
            failures.append(f"observer plugin '{implementation.plugin_name}' failed: {type(exc).__name__}: {exc}")
    return failures
