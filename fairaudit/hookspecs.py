"""The whole plugin contract of fairaudit.

A plugin is a module (or object) with functions marked `@hookimpl`, published under the
entry-point group `fairaudit` (`[project.entry-points.fairaudit]` in its pyproject).
The built-in plugins in `fairaudit_plugins` are registered through that same group.

Every `register_*` hook is called once when the registry is built, with a `register`
callable. A plugin calls `register(component)` for each component it provides. A
component is an object with a unique `name` (str), a one-line `description`, and a
pydantic `Params` model of the parameters a run config may give it. What else it must
have depends on its kind: see the Protocol class named in each hook's docstring.
`examples/fairaudit-peak` is a complete third-party plugin package.
pluggy lets an implementation accept only the arguments it uses.
"""

import pluggy

hookspec = pluggy.HookspecMarker("fairaudit")
hookimpl = pluggy.HookimplMarker("fairaudit")


@hookspec
def register_adapters(register):
    """Register architecture adapters (`fairaudit.inputs.architecture.Adapter`): where a model
    family keeps its layers, attention and MLP, and how to prune its MLP."""


@hookspec
def register_probes(register):
    """Register probes (`fairaudit.measurement.probe.Probe`): run a suite's pairs through a
    model and return streaming activation statistics."""


@hookspec
def register_scorers(register):
    """Register scorers (`fairaudit.measurement.scoring.Scorer`): turn activation statistics and
    weights into per-neuron or per-layer score columns."""


@hookspec
def register_pruners(register):
    """Register pruners: `name`, `description`, `Params`, and `apply(loaded, selection, params)`,
    which removes or masks the selected MLP neurons (`fairaudit.repair.prune.Selection`) and returns a
    `fairaudit.repair.prune.PruneReport`."""


@hookspec
def register_evaluators(register):
    """Register evaluators (`fairaudit.measurement.evaluate.Evaluator`): measure a model (bias, quality)
    before and after pruning; per-item values make the paired comparison. One that sets
    `exclusive = False` runs on the two models at once, in two threads: only when it reads no
    model but the one it is given and no process-wide state."""


@hookspec
def register_importers(register):
    """Register suite importers (`fairaudit.inputs.importing.Importer`): turn a public data set file
    into suites."""


@hookspec
def fairaudit_stage_finished(stage, name, axis, seconds):
    """Observer hook, called after each pipeline stage: `stage` is the kind ("probe",
    "scorer", ...), `name` the component, `axis` the suite axis (or None), `seconds` its
    wall time. Return value ignored; an exception here is reported, not fatal."""
