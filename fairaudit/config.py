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

Every setting is a typed pydantic model, parsed once here and handed on as that object: the
engine (`fairaudit.pipeline`, `fairaudit.repair`) reads fields, never dictionaries, and the
command line builds the same objects from its flags, taking each default from the field
(`fairaudit.cli.options.model_options`). This module imports nothing from the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from fairaudit.errors import ConfigError, PluginError
from fairaudit.plugins import Registry, registry
from fairaudit.yamlio import read_model

DEFAULT_MODEL = "smollm2-135m"

# `hybrid` is optiPfair's score (on the unscaled bias); `hybrid_scaled` the same on the scale-free
# bias, which the audit prunes by (see README, "Which score to prune by").
DEFAULT_SCORERS = [
    *("bias", "scaled_bias", "noise_floor", "significance", "importance", "hybrid"),
    {"plugin": "hybrid", "params": {"bias": "scaled_bias", "column": "hybrid_scaled"}},
    *("stereotype_push", "layer_index"),
]
DEFAULT_SUITES = ["race", "gender", "religion", "nationality"]
# What only a command-line flag can turn on (a config file, a sweep file or a store record may ask).
TRUST_FLAGS = {
    "trust_remote_code": "--trust-remote-code",
    "allow_pickle": "--allow-pickle",
    "allow_task_code": "--allow-task-code",
}
DEFAULT_EVALUATORS = "bias_reprobe output_bias random_baseline generations perplexity lm_eval facts fidelity".split()


class PluginRef(BaseModel):
    """A plugin chosen by name, with its parameters."""

    model_config = ConfigDict(extra="forbid")

    plugin: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


def _plugin_ref(value: Any) -> Any:
    return {"plugin": value} if isinstance(value, str) else value


def _problems(exc: ValidationError) -> str:
    """The first three problems of a validation error, each with the field it is about."""
    return "; ".join(
        (f"'{'.'.join(str(p) for p in err['loc'])}': " if err["loc"] else "") + err["msg"].removeprefix("Value error, ")
        for err in exc.errors()[:3]
    )


class ScoringConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    component: str = Field(default="neuron", description="which captured component per-neuron scores describe")
    scorers: list[PluginRef] = Field(
        default_factory=lambda: [PluginRef.model_validate(_plugin_ref(ref)) for ref in DEFAULT_SCORERS]
    )

    @field_validator("scorers", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return [_plugin_ref(item) for item in value] if isinstance(value, list) else value


class ModelSpec(BaseModel):
    """Which model to load and how (the `model:` section of a run config)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="hub id, local folder, .gguf file or built-in alias")
    revision: str | None = None
    gguf_file: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"
    device_map: str | dict[str, str | int] | None = Field(
        default=None,
        description="'auto' (accelerate) spreads a model over GPUs, CPU memory and disk; or a map "
        "{module name: device} such as {model.layers.20: 1, lm_head: cpu}",
    )
    max_memory: dict[str | int, str | int] | None = Field(
        default=None, description="with device_map: memory per device, e.g. {0: 20GiB, cpu: 60GiB}"
    )
    offload_folder: str | None = Field(
        default=None,
        description="with device_map: where weights that fit nowhere go (a private temporary folder inside it is used "
        "and removed when the model is freed)",
    )
    trust_remote_code: bool = False
    allow_pickle: bool = False
    allow_missing_weights: bool = Field(
        default=False,
        description="accept a checkpoint that lacks weights the architecture has (they would be random) "
        "or has weights it does not use",
    )


class SelectionParams(BaseModel):
    """Which neurons to prune. `fraction` is per layer (`scope: per_layer`, the write-up's
    uniform 0.2%) or of all neurons (`scope: global`)."""

    model_config = ConfigDict(extra="forbid")

    axes: list[str] | None = Field(
        default=None,
        min_length=1,
        description="axes whose scores select neurons (in a run "
        "config: default every audited axis; `prune_model` fills them in from its suites)",
    )
    score: str = "hybrid_scaled"
    fraction: float = Field(default=0.002, description="share of neurons to prune, in (0, 1)")
    scope: Literal["per_layer", "global"] = "per_layer"
    layers: list[int] | None = None
    combine: Literal["pooled", "mean", "max", "union", "intersection"] = Field(
        default="pooled",
        description="several axes: rank by one score computed on the axes' pooled bias, by the mean "
        "(or largest) of their scores, or unite / intersect their selections",
    )
    round_to: int | None = Field(default=None, ge=1, description="round each new width down to a multiple of this")
    protect: float = Field(
        default=0.01, ge=0.0, lt=1.0, description="protect the top share of neurons by importance (0: none)"
    )
    importance: str = "importance_ppm"
    direction: Literal["any", "pro"] = Field(
        default="any", description="pro: only neurons whose `push` score is > 0 (pushing group a toward the stereotype)"
    )
    push: str = "stereotype_push"
    only_biased_axes: bool = Field(
        default=False,
        description="leave out every axis whose stored output-level bias (output_attribution scorer) has a "
        "template-resampled 95% interval containing 0: never move an axis that shows no bias",
    )

    @field_validator("layers")
    @classmethod
    def _distinct_layers(cls, value: list[int] | None) -> list[int] | None:
        """A layer named twice is one layer (`--layers 1,1,1` prunes what `--layers 1` prunes)."""
        return sorted(set(value)) if value is not None else None

    @field_validator("fraction")
    @classmethod
    def _fraction_inside_unit_interval(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError(f"fraction must be strictly between 0 and 1 (0.002 = 0.2%); got {value}")
        return value


class CausalParams(BaseModel):
    """How `plan` chooses neurons (the `prune --causal` options)."""

    model_config = ConfigDict(extra="forbid")

    budgets: list[float] = Field(
        default=[0.0005, 0.001, 0.002],
        description="shares of all units (MLP neurons, and attention heads when `heads` is on) to choose among",
    )
    heads: bool = Field(
        default=False,
        description="attention heads are candidates beside MLP neurons (zeroed when chosen); "
        "off by default: on SmolLM2-135M heads that each pass the guard cost too much together (docs/attribution.md)",
    )
    rounds: int = Field(default=2, ge=1, le=20, description="re-score after each share of the largest budget")
    guard: float = Field(
        default=0.003,
        ge=0,
        description="skip a candidate whose removal alone raises perplexity on "
        "a held-aside corpus slice by more than this (relative)",
    )
    max_perplexity_rise: float = Field(default=0.02, ge=0, description="the budget's limit on the corpus slice")
    max_fact_drop: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="the budget's (or strength's) limit on the drop of accuracy on the bundled validation facts "
        "(facts-validation.jsonl, never evaluated; 1: no fact guard)",
    )
    gate: Literal["templates", "pairs", "none"] = Field(
        default="templates",
        description="the interval that must exclude 0 "
        "for an axis to be selected for: templates resampled, pairs, or none",
    )
    validation_every: int = Field(default=4, ge=2, description="every k-th probe template is for validation")
    collateral: bool = Field(
        default=True,
        description="reject a budget that moves an axis left alone away from zero: the lower end of the "
        "95% interval (templates resampled) of |m after| - |m before| on its validation templates above 0",
    )
    statements: bool = Field(
        default=True,
        description="choose the budget (or strength) on validation templates and probe statements together (a "
        "format the selection never reads; left-alone axes' statements checked for collateral too); false: templates",
    )
    heldout_curve: bool = Field(
        default=False,
        description="after choosing, also measure each budget's held-out output bias "
        "(evaluation only: the choice is already made)",
    )
    method: Literal["neurons", "erase", "compare"] = Field(
        default="compare",
        description="neurons: choose MLP neurons (and heads) to remove; erase: fold a rank-`rank` projection "
        "that removes each gated axis' counterfactual direction from every layer's writes, at the strength "
        "of `strengths` chosen on validation; compare (the default): plan both, apply the one that keeps less "
        "validation bias (neurons where erasure cannot fold into the architecture; docs/attribution.md)",
    )
    rank: int = Field(default=1, ge=1, le=16, description="erase: directions per gated axis")
    strengths: list[float] = Field(
        default=[0.25, 0.5, 0.75, 1.0],
        description="erase: the shares of the directions removed to choose among (as budgets are for neurons)",
    )
    erase_from: list[float] = Field(
        default=[0.0, 0.33],
        description="erase: where the fold may start, as shares of the depth, to choose among with each strength "
        "(layers before it keep their writes; 0.33: the first third, where SmolLM2 writes facts such as a language)",
    )
    float32: bool = Field(
        default=True,
        description="plan a bfloat16 or float16 model in float32 (weights cast up for the "
        "planning, then back: exact; twice the memory meanwhile). false: plan in the model's dtype, whose "
        "rounding noise is above the guard's 0.3%",
    )

    @field_validator("budgets")
    @classmethod
    def _shares(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < budget < 1 for budget in value):
            raise ValueError("budgets are shares of all units (MLP neurons and heads), each in (0, 1)")
        return sorted(set(value))

    @field_validator("strengths", "erase_from")
    @classmethod
    def _erasure_shares(cls, value: list[float], info: ValidationInfo) -> list[float]:
        strengths = info.field_name == "strengths"
        if not value or any(not (0 < x <= 1 if strengths else 0 <= x < 1) for x in value):
            raise ValueError(
                "strengths are shares of the erased directions removed, each in (0, 1]"
                if strengths
                else "erase_from are shares of the depth where the fold starts, each in [0, 1)"
            )
        return sorted(set(value))


class HeadsParams(BaseModel):
    """Attention heads zeroed beside the neurons a stored score selects (`pruning.heads`,
    `prune --heads K`): the `count` heads with the largest stored `score` summed over the axes."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(
        ge=1, description="heads to zero: the K best of the model, or K in every layer (scope per_layer)"
    )
    score: str = Field(
        default="output_bias_reduction",
        description="stored head score (output_attribution scorer's head_scores); higher = zero first",
    )
    scope: Literal["global", "per_layer"] = Field(
        default="global", description="the K best heads of the model, or K in every layer"
    )


class PruningConfig(BaseModel):
    """The `pruning:` section: which pruner, which neurons (and heads), where the pruned model goes.

    Exactly one of `causal` (`CausalParams`: chosen by measured effect on the output, the
    default) and `selection` (`SelectionParams`: a stored score) is set once validated: a
    section without `selection` is causal; `causal: null` without a `selection` selects by the
    default stored score. `heads` (zero heads by a stored score) goes with `selection`."""

    model_config = ConfigDict(extra="forbid")

    pruner: PluginRef = Field(default_factory=lambda: PluginRef(plugin="structured"))
    causal: CausalParams | None = Field(
        default=None,
        description="choose neurons (and heads) by their measured and "
        "attributed effect on each axis' output-level bias (the default)",
    )
    selection: SelectionParams | None = Field(
        default=None, description="choose neurons by a stored score instead (default hybrid_scaled at 0.2% per layer)"
    )
    heads: HeadsParams | None = Field(
        default=None, description="with selection: also zero attention heads by a stored head score"
    )
    remove_heads: bool = Field(
        default=False,
        description="remove the chosen heads from the weights instead of zeroing them "
        "(Llama-style attention, the same number in every layer, whole key/value groups; refused "
        "otherwise, before anything is written)",
    )
    out: str | None = Field(
        default=None,
        description="the pruned model goes to OUT/RUN_ID/MODEL-pruned "
        "(default: a 'pruned' folder beside the store folder)",
    )
    save_dtype: Literal["float32", "bfloat16", "float16", "source"] = Field(
        default="float32",
        description="dtype of the saved pruned model; 'source': the dtype the checkpoint's config declares. "
        "The evaluations measure the model as saved",
    )

    @model_validator(mode="before")
    @classmethod
    def _causal_by_default(cls, data: Any) -> Any:
        """Causal selection unless a `selection` (or `causal: null`) is given: it is the only
        selection shown to beat random neurons on held-out templates (docs/attribution.md)."""
        if not isinstance(data, dict):
            return data
        if data.get("causal") is not None and data.get("selection"):
            raise ValueError(
                "'causal' chooses the neurons itself; leave out 'selection' (or 'causal' to select by a stored score)"
            )
        if "causal" not in data and not data.get("selection"):
            return {**data, "causal": {}, "selection": None}
        if data.get("causal") is None and not data.get("selection"):
            return {**data, "causal": None, "selection": {}}
        return data

    @model_validator(mode="after")
    def _heads_need_a_stored_score(self) -> PruningConfig:
        if self.heads is not None and self.causal is not None:
            raise ValueError(
                "'heads' (--heads) selects heads by a stored score; the causal planner chooses heads itself "
                "(causal: {heads: true}, --causal-heads)"
            )
        return self

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_shorthand(cls, value: Any) -> Any:
        return _plugin_ref(value)

    def for_axes(self, axes: list[str]) -> PruningConfig:
        """This section with the selection's axes filled in (when it leaves them out): what is applied."""
        if self.selection is None or self.selection.axes:
            return self
        return self.model_copy(update={"selection": self.selection.model_copy(update={"axes": list(axes)})})


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
    evaluator_time_limit: float | None = Field(
        default=3600.0, gt=0, description="seconds per evaluator run (null: none)"
    )
    evaluate_side_by_side: bool = Field(
        default=True,
        description="evaluate the original and the pruned model at once "
        "(two threads, half the CPU threads each) with the evaluators that allow it",
    )
    report: bool = Field(default=True, description="write the HTML report (and report.json) beside the store folder")
    diagnose_top: int = Field(
        default=1, ge=0, le=20, description="diagnosis figures for this many most divergent pairs per axis"
    )
    overlap_top: float = Field(default=0.01, gt=0, description="top-k of each axis for the stored overlap analysis")
    policy: str | None = Field(
        default=None, description="a policy file or built-in policy name whose rules the run is checked against"
    )

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

    @classmethod
    def default_audit(cls) -> RunConfig:
        """The default audit (`fairaudit audit` with no run config, `fairaudit.audit(None)`): every
        default, checked against the bundled default policy so that it ends with a release verdict."""
        return cls(policy="default")

    def with_trust(self, granted: set[str] | frozenset[str], source: str) -> RunConfig:
        """This config, read from an untrusted file, with what the command line granted: a file may
        ask for a capability in `TRUST_FLAGS` but only the flag grants it, so a config (or a store
        record) cannot make fairaudit run foreign code on its own."""
        missing = sorted(self.requested_trust() - set(granted))
        if missing:
            raise ConfigError(
                f"{source} asks for {', '.join(missing)}, which runs code (or reads pickles) from files you did "
                f"not write; a file cannot turn that on. Pass {' '.join(TRUST_FLAGS[name] for name in missing)} "
                f"on the command line only if you trust them."
            )
        model = self.model.model_copy(
            update={name: True for name in ("trust_remote_code", "allow_pickle") if name in granted}
        )
        evaluators = [
            ref.model_copy(update={"params": {**ref.params, "allow_task_code": True}})
            if ref.plugin == "lm_eval" and "allow_task_code" in granted
            else ref
            for ref in self.evaluators
        ]
        return self.model_copy(update={"model": model, "evaluators": evaluators})

    def plugin_refs(self) -> list[tuple[str, str, PluginRef]]:
        """(field path, plugin kind, reference) for every plugin the config names."""
        refs = [("probe", "probe", self.probe)]
        refs += [(f"scoring.scorers.{index}", "scorer", ref) for index, ref in enumerate(self.scoring.scorers)]
        if self.pruning is not None:
            refs.append(("pruning.pruner", "pruner", self.pruning.pruner))
        refs += [(f"evaluators.{index}", "evaluator", ref) for index, ref in enumerate(self.evaluators)]
        return refs

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
        if self.pruning is not None and self.pruning.selection is not None:
            self._check_pruning_columns(plugins, resolved, self.pruning.selection, source)
        return resolved

    def _check_pruning_columns(
        self, plugins: Registry, resolved: dict[str, BaseModel], selection: SelectionParams, source: str
    ) -> None:
        """When every configured scorer declares its columns, the pruning score must be one of them."""
        produced: set[str] = set()
        for index, ref in enumerate(self.scoring.scorers):
            outputs = getattr(plugins.get("scorer", ref.plugin), "outputs", None)
            if outputs is None:
                return  # a scorer that does not declare its columns: checked when pruning runs
            produced.update(outputs(resolved[f"scoring.scorers.{index}"]))
        needed = (
            [selection.score]
            + ([selection.importance] if selection.protect > 0 else [])
            + ([selection.push] if selection.direction == "pro" else [])
        )
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
