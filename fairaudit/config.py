"""The declarative run config: which model, which suites, which plugin for each stage.

```yaml
model: smollm2-135m            # or {id: ..., revision: ..., dtype: ..., device: ...}
suites: [race, gender]         # built-in names or suite files
probe: {plugin: activations, params: {position: mean, batch_size: 16}}
scoring:
  component: neuron
  scorers: [bias, scaled_bias, noise_floor, significance, importance, hybrid, layer_index]
store: fairaudit-out/store
seed: 0
```

A plugin is named by a string or `{plugin: NAME, params: {...}}`; its params are checked
against the plugin's own `Params` model, so a typo fails before any model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fairaudit.errors import ConfigError, PluginError
from fairaudit.model import DEFAULT_MODEL, ModelSpec
from fairaudit.plugins import Registry, registry
from fairaudit.yamlio import read_model

# `hybrid` is optiPfair's score (on the unscaled bias); `hybrid_scaled` the same on the scale-free
# bias, which the audit prunes by (see README, "Which score to prune by").
DEFAULT_SCORERS = ["bias", "scaled_bias", "noise_floor", "significance", "importance", "hybrid",
                   {"plugin": "hybrid", "params": {"bias": "scaled_bias", "column": "hybrid_scaled"}}, "stereotype_push",
                   "layer_index"]
DEFAULT_SUITES = ["race", "gender", "religion", "nationality"]
# What only a command-line flag can turn on (a config file, a sweep file or a store record may ask).
TRUST_FLAGS = {"trust_remote_code": "--trust-remote-code", "allow_pickle": "--allow-pickle", "allow_task_code": "--allow-task-code"}
DEFAULT_EVALUATORS = ["bias_reprobe", "output_bias", "random_baseline", "generations", "perplexity", "lm_eval", "facts", "fidelity"]


class PluginRef(BaseModel):
    """A plugin chosen by name, with its parameters."""

    model_config = ConfigDict(extra="forbid")

    plugin: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


def _plugin_ref(value: Any) -> Any:
    return {"plugin": value} if isinstance(value, str) else value


def _problems(exc: ValidationError) -> str:
    """The first three problems of a validation error, each with the field it is about."""
    return "; ".join((f"'{'.'.join(str(p) for p in err['loc'])}': " if err["loc"] else "") + err["msg"].removeprefix("Value error, ")
                     for err in exc.errors()[:3])


class ScoringConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    component: str = Field(default="neuron", description="which captured component per-neuron scores describe")
    scorers: list[PluginRef] = Field(default_factory=lambda: [PluginRef.model_validate(_plugin_ref(ref)) for ref in DEFAULT_SCORERS])

    @field_validator("scorers", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return [_plugin_ref(item) for item in value] if isinstance(value, list) else value


class PruningConfig(BaseModel):
    """The `pruning:` section: which pruner, which neurons, where the pruned model goes.
    Neurons and heads are chosen causally (`causal`, `fairaudit.causal.CausalParams`) unless the
    section gives a `selection` (`fairaudit.prune.SelectionParams`: a stored score; its `axes`
    default to every suite's axis) or says `causal: null` (then the default selection)."""

    model_config = ConfigDict(extra="forbid")

    pruner: PluginRef = Field(default_factory=lambda: PluginRef(plugin="structured"))
    selection: dict[str, Any] = Field(default_factory=dict)
    out: str | None = Field(default=None, description="the pruned model goes to OUT/RUN_ID/MODEL-pruned "
                                                        "(default: a 'pruned' folder beside the store folder)")
    causal: dict[str, Any] | None = Field(default=None, description="choose neurons and heads by fairaudit.causal.plan (keys "
                                          "of CausalParams: budgets, heads, rounds, guard, max_perplexity_rise, gate, "
                                          "validation_every); the default when 'selection' is left out. null: select by a "
                                          "stored score ('selection', default hybrid_scaled at 0.2%)")
    save_dtype: Literal["float32", "bfloat16", "float16", "source"] = Field(
        default="float32", description="dtype of the saved pruned model; 'source': the dtype the checkpoint's config declares. "
                                       "The evaluations measure the model as saved")

    @model_validator(mode="before")
    @classmethod
    def _causal_by_default(cls, data: Any) -> Any:
        """Causal selection unless a `selection` (or `causal: null`) is given: it is the only
        selection shown to beat random neurons on held-out templates (docs/attribution.md)."""
        if isinstance(data, dict) and "causal" not in data and not data.get("selection"):
            return {**data, "causal": {}}
        return data

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_shorthand(cls, value: Any) -> Any:
        return _plugin_ref(value)


class RunConfig(BaseModel):
    """A whole run. See the module docstring for the YAML form."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = Field(default_factory=lambda: ModelSpec(id=DEFAULT_MODEL))
    suites: list[str] = Field(default_factory=lambda: list(DEFAULT_SUITES), min_length=1)
    probe: PluginRef = Field(default_factory=lambda: PluginRef(plugin="activations"))
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    pruning: PruningConfig | None = Field(default_factory=PruningConfig, description="null: audit without pruning")
    evaluators: list[PluginRef] = Field(default_factory=lambda: [PluginRef(plugin=name) for name in DEFAULT_EVALUATORS])
    store: str = "fairaudit-out/store"
    seed: int = 0
    evaluator_time_limit: float | None = Field(default=3600.0, gt=0, description="seconds per evaluator run (null: none)")
    evaluate_side_by_side: bool = Field(default=True, description="evaluate the original and the pruned model at once "
                                        "(two threads, half the CPU threads each) with the evaluators that allow it")
    report: bool = Field(default=True, description="write the HTML report (and report.json) beside the store folder")
    diagnose_top: int = Field(default=1, ge=0, le=20, description="diagnosis figures for this many most divergent pairs per axis")
    overlap_top: float = Field(default=0.01, gt=0, description="top-k of each axis for the stored overlap analysis")
    policy: str | None = Field(default=None, description="a policy file or built-in policy name whose rules the run is checked against")

    @field_validator("evaluators", mode="before")
    @classmethod
    def _evaluator_names(cls, value: Any) -> Any:
        return [_plugin_ref(item) for item in value] if isinstance(value, list) else value

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, value: Any) -> Any:
        return {"id": value} if isinstance(value, str) else value

    @field_validator("probe", mode="before")
    @classmethod
    def _probe_shorthand(cls, value: Any) -> Any:
        return _plugin_ref(value)

    def requested_trust(self) -> set[str]:
        """The capabilities this config asks for that run code or read pickles (see `TRUST_FLAGS`)."""
        wanted = {name for name in ("trust_remote_code", "allow_pickle") if getattr(self.model, name)}
        if any(ref.params.get("allow_task_code") for ref in self.evaluators):
            wanted.add("allow_task_code")
        return wanted

    def with_trust(self, granted: set[str] | frozenset[str], source: str) -> RunConfig:
        """This config, read from an untrusted file, with what the command line granted: a file may
        ask for a capability in `TRUST_FLAGS` but only the flag grants it, so a config (or a store
        record) cannot make fairaudit run foreign code on its own."""
        missing = sorted(self.requested_trust() - set(granted))
        if missing:
            raise ConfigError(f"{source} asks for {', '.join(missing)}, which runs code (or reads pickles) from files you did "
                              f"not write; a file cannot turn that on. Pass {' '.join(TRUST_FLAGS[name] for name in missing)} "
                              f"on the command line only if you trust them.")
        model = self.model.model_copy(update={name: True for name in ("trust_remote_code", "allow_pickle") if name in granted})
        evaluators = [ref.model_copy(update={"params": {**ref.params, "allow_task_code": True}})
                      if ref.plugin == "lm_eval" and "allow_task_code" in granted else ref for ref in self.evaluators]
        return self.model_copy(update={"model": model, "evaluators": evaluators})

    def plugin_refs(self) -> list[tuple[str, str, PluginRef]]:
        """(field path, plugin kind, reference) for every plugin the config names."""
        refs = [("probe", "probe", self.probe)]
        refs += [(f"scoring.scorers.{index}", "scorer", ref) for index, ref in enumerate(self.scoring.scorers)]
        if self.pruning is not None:
            refs.append(("pruning.pruner", "pruner", self.pruning.pruner))
        refs += [(f"evaluators.{index}", "evaluator", ref) for index, ref in enumerate(self.evaluators)]
        return refs

    def selection(self, axes: list[str]):
        """The pruning selection, with `axes` filled in when the config leaves them out."""
        from fairaudit.prune import SelectionParams

        return SelectionParams.model_validate({"axes": axes, **(self.pruning.selection if self.pruning else {})})

    def check_plugins(self, plugins: Registry | None = None, source: str = "run config") -> dict[str, BaseModel]:
        """Resolve every plugin name and validate its params; return params by field path."""
        plugins = plugins or registry()
        resolved = {}
        for field_path, kind, ref in self.plugin_refs():
            try:
                component = plugins.get(kind, ref.plugin)
            except PluginError as exc:
                raise ConfigError(f"{source}, field '{field_path}.plugin': {exc}") from None
            try:
                resolved[field_path] = component.Params.model_validate(ref.params)
            except ValidationError as exc:
                problems = _problems(exc)
                allowed = ", ".join(component.Params.model_fields)
                raise ConfigError(
                    f"{source}, field '{field_path}.params' of {kind} '{ref.plugin}': {problems}. "
                    f"Its parameters are: {allowed or '(none)'}."
                ) from None
        if self.pruning is not None and self.pruning.causal is not None:
            from fairaudit.causal import CausalParams

            if self.pruning.selection:
                raise ConfigError(f"{source}, field 'pruning': 'causal' chooses the neurons itself; leave out 'selection' "
                                  f"(or 'causal' to select by a stored score).")
            try:
                CausalParams.model_validate(self.pruning.causal)
            except ValidationError as exc:
                problems = _problems(exc)
                raise ConfigError(f"{source}, field 'pruning.causal': {problems}.") from None
        elif self.pruning is not None:
            try:
                selection = self.selection(["axis"] if "axes" not in self.pruning.selection else [])
            except ValidationError as exc:
                problems = _problems(exc)
                raise ConfigError(f"{source}, field 'pruning.selection': {problems}.") from None
            self._check_pruning_columns(plugins, resolved, selection, source)
        return resolved

    def _check_pruning_columns(self, plugins: Registry, resolved: dict[str, BaseModel], selection, source: str) -> None:
        """When every configured scorer declares its columns, the pruning score must be one of them."""
        produced: set[str] = set()
        for index, ref in enumerate(self.scoring.scorers):
            outputs = getattr(plugins.get("scorer", ref.plugin), "outputs", None)
            if outputs is None:
                return  # a scorer that does not declare its columns: checked when pruning runs
            produced.update(outputs(resolved[f"scoring.scorers.{index}"]))
        needed = ([selection.score] + ([selection.importance] if selection.protect > 0 else [])
                  + ([selection.push] if selection.direction == "pro" else []))
        missing = [column for column in needed if column not in produced]
        if missing:
            raise ConfigError(
                f"{source}, field 'pruning.selection': pruning ranks by {missing}, which no configured scorer writes "
                f"(they write: {', '.join(sorted(produced)) or 'nothing'}). Add the scorer, choose another 'score', "
                f"or set 'pruning: null'."
            )


def load_config(path: str | Path, granted: set[str] | frozenset[str] = frozenset()) -> RunConfig:
    """Read and validate a run config file, plugins included. `granted`: the capabilities of
    `TRUST_FLAGS` the user's command line turned on."""
    document, config = read_model(path, RunConfig, ConfigError, "run config", "such as model, suites, probe")
    config = config.with_trust(granted, f"run config file {document.path}")
    config.check_plugins(source=f"run config file {document.path}")
    return config
