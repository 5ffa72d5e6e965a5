"""Compliance policies: an organisation's thresholds on stored metrics, and verdicts that
respect uncertainty.

```yaml
policy: acme-release          # a name for the report
min_items: 30                 # default for every rule: fewer items than this is "too few items"
rules:
  - id: output-bias
    metric: stereotype_preference
    abs_at_most: 0.2          # |value| <= 0.2; or at_most / at_least / between: [low, high]
    axes: all                 # or a list of axes (suite axes, CrowS-Pairs categories, lm-eval tasks)
    severity: must            # must: decides the exit status; should: reported only
    source: local choice      # where the threshold comes from
```

Each rule becomes an interval of allowed values [lower, upper]. For every axis and every
model the run measured, a rule's verdict compares that interval with the measurement's 95%
interval (the logic of equivalence testing):

- `pass`: the whole 95% interval lies inside the allowed values;
- `fail`: the whole 95% interval lies outside them;
- `inconclusive`: the interval straddles a threshold (or the measurement has no interval);
- `too few items`: the measurement rests on fewer than `min_items` items;
- `not measured`: the store holds no such measurement for the axis and model.

The metrics are read from the store (`METRICS` says where each comes from); nothing is
recomputed, so `fairaudit check` needs no model.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, field_validator, model_validator

from fairaudit.compliance.sources import METRICS
from fairaudit.errors import ConfigError, StoreError
from fairaudit.resources import policies_dir
from fairaudit.store import Store
from fairaudit.yamlio import read_model

Role = Literal["original", "pruned"]
ROLES: tuple[Role, ...] = ("original", "pruned")
ROLE_OF_STORED = {"before": "original", "after": "pruned"}  # the evaluation tables' role column
VERDICTS = ("pass", "fail", "inconclusive", "too few items", "not measured")


class Rule(BaseModel):
    """One threshold on one metric. Exactly one of `at_most`, `at_least`, `between`, `abs_at_most`."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    metric: str
    at_most: StrictFloat | None = None  # strict: `true` is not 1
    at_least: StrictFloat | None = None
    between: tuple[StrictFloat, StrictFloat] | None = None
    abs_at_most: StrictFloat | None = Field(default=None, ge=0)
    axes: list[str] | Literal["all"] = Field(default="all", description="'all': every audited axis (or task)")
    models: list[Role] = Field(default_factory=lambda: list(ROLES), min_length=1)
    severity: Literal["must", "should"] = "must"
    min_items: int | None = Field(default=None, ge=1)
    if_measured: bool = Field(
        default=False, description="true: a metric the run did not measure is not an inconclusive verdict"
    )
    source: str = ""

    @field_validator("axes", "models")
    @classmethod
    def _distinct(cls, value: Any) -> Any:
        """A list names something once (a repeat would give a repeated verdict), and names something."""
        if isinstance(value, list):
            if not value:
                raise ValueError("name at least one (or leave the field out for its default)")
            return list(dict.fromkeys(value))
        return value

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in METRICS:
            raise ValueError(f"unknown metric '{value}'; policy metrics are: {', '.join(METRICS)}")
        return value

    @field_validator("at_most", "at_least", "abs_at_most")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("a threshold must be a finite number")
        return value

    @field_validator("between")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not (math.isfinite(value[0]) and math.isfinite(value[1]) and value[0] <= value[1]):
            raise ValueError("between takes [low, high] with low <= high, both finite")
        return value

    @model_validator(mode="after")
    def _one_threshold(self) -> Rule:
        given = [name for name in ("at_most", "at_least", "between", "abs_at_most") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"rule '{self.id}' needs exactly one threshold of at_most, at_least, between, abs_at_most "
                f"(it has {', '.join(given) or 'none'})"
            )
        if METRICS[self.metric].kind == "change" and "original" in self.models:
            if "models" in self.model_fields_set:
                raise ValueError(
                    f"rule '{self.id}': '{self.metric}' compares the pruned model with the original, so it "
                    f"applies to models: [pruned] only"
                )
            self.models = ["pruned"]
        return self

    def allowed(self) -> tuple[float, float]:
        """The allowed values as a closed interval [lower, upper] (infinite where open)."""
        if self.between is not None:
            return self.between
        if self.abs_at_most is not None:
            return (-self.abs_at_most, self.abs_at_most)
        if self.at_most is not None:
            return (-math.inf, self.at_most)
        return (self.at_least if self.at_least is not None else -math.inf, math.inf)

    def threshold_text(self) -> str:
        if self.between is not None:
            return f"{self.metric} in [{self.between[0]:g}, {self.between[1]:g}]"
        if self.abs_at_most is not None:
            return f"|{self.metric}| <= {self.abs_at_most:g}"
        if self.at_most is not None:
            return f"{self.metric} <= {self.at_most:g}"
        return f"{self.metric} >= {self.at_least:g}"


class Policy(BaseModel):
    """A policy file: a name, a default minimum of items, and rules."""

    model_config = ConfigDict(extra="forbid")

    policy: str = Field(min_length=1, max_length=120)
    description: str = ""
    min_items: int = Field(default=30, ge=1)
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> Policy:
        ids = [rule.id for rule in self.rules]
        repeated = sorted({rule_id for rule_id in ids if ids.count(rule_id) > 1})
        if repeated:
            raise ValueError(f"rule ids must be unique; repeated: {', '.join(repeated)}")
        return self

    def sha256(self) -> str:
        """Hash of the policy's content (not of its file's formatting)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def check_axes(self, axes: list[str], where: str) -> None:
        """Refuse a rule naming an axis the run does not have, before any work is done."""
        for rule in self.rules:
            if rule.axes != "all" and METRICS[rule.metric].per_axis:
                unknown = [
                    axis for axis in rule.axes if axis not in axes and METRICS[rule.metric].evaluator != "lm_eval"
                ]
                if unknown:
                    raise ConfigError(
                        f"policy '{self.policy}', rule '{rule.id}': axis {unknown} is not audited by {where} "
                        f"(its axes: {', '.join(axes) or 'none'})."
                    )


def builtin_policy_names() -> list[str]:
    return sorted(path.stem for path in policies_dir().glob("*.yaml"))


def load_policy(name_or_path: str | Path) -> Policy:
    """A built-in policy by name (`default`) or a policy file; errors name the file and the line."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        builtin = policies_dir() / f"{name_or_path}.yaml"
        if not builtin.exists():
            raise ConfigError(
                f"no policy named '{name_or_path}': it is neither a file nor a built-in policy. "
                f"Built-in policies: {', '.join(builtin_policy_names())}."
            )
        path = builtin
    return read_model(path, Policy, ConfigError, "policy", "policy, rules")[1]


# --- verdicts ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    """One rule on one axis of one model."""

    rule: str
    metric: str
    severity: str
    model: str  # "original" or "pruned"
    axis: str
    verdict: str
    value: float = math.nan
    low: float = math.nan
    high: float = math.nan
    items: int = 0
    threshold: str = ""
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in asdict(self).items()
        }


def judge(
    value: float, low: float, high: float, items: int, allowed: tuple[float, float], min_items: int
) -> tuple[str, str]:
    """The verdict of one measurement against allowed values [lower, upper], and why."""
    lower, upper = allowed
    if items < min_items:
        return "too few items", f"{items} items; the rule needs at least {min_items}"
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive", "the measurement has no 95% interval"
    if lower <= low and high <= upper:
        return "pass", "the whole 95% interval satisfies the threshold"
    if high < lower or low > upper:
        return "fail", "the whole 95% interval violates the threshold"
    return "inconclusive", "the 95% interval straddles the threshold"


def _measurements(store: Store, run_id: str) -> dict[tuple, dict[str, float]]:
    """(source kind, evaluator, metric, role, axis) -> {value, low, high, items}, from the store.
    Within a run, role "before" is the original model and "after" the pruned (or compared) one."""
    found: dict[tuple, dict[str, float]] = {}
    for table in ("evaluations", "comparisons"):
        for row in store.rows(table, run_id=run_id):
            if table == "evaluations":
                if not row["error"] and row["role"] in ROLE_OF_STORED:
                    found[
                        ("level", row["evaluator"], row["metric"], ROLE_OF_STORED[row["role"]], row["axis_or_task"])
                    ] = {"value": row["value"], "low": row["low"], "high": row["high"], "items": row["n"]}
                continue
            for field, low, high in (
                ("change", "change_low", "change_high"),
                ("relative_change", "relative_low", "relative_high"),
                ("abs_change", "abs_low", "abs_high"),
            ):
                if row.get(field) is None:  # a store written before abs_change existed: not measured
                    continue
                found[(f"change:{field}", row["evaluator"], row["metric"], "pruned", row["axis_or_task"])] = {
                    "value": row[field],
                    "low": row[low],
                    "high": row[high],
                    "items": row["items"],
                }
    return found


def cross_check(store: Store, run_id: str) -> int:
    """Recompute every summary an evaluator stored as the mean of its items (`of_items`): the
    mean, the count and the 95% bootstrap interval from the `evaluation_items` rows, refusing the
    store when one differs (naming it). Returns how many were checked. A summary that is not a
    mean of items (a third-party evaluator's, lm-eval's aggregates, a store written before the
    flag) is not checked: its verdict rests on the stored value and the file hashes alone."""
    from fairaudit.lazy import torch
    from fairaudit.measurement.metrics import bootstrap_interval

    summaries = [row for row in store.rows("evaluations", run_id=run_id) if row.get("of_items") and not row["error"]]
    if not summaries:
        return 0
    items: dict[tuple, list[float]] = {}
    for row in store.rows("evaluation_items", run_id=run_id):
        key = (row["model"], row["evaluator"], row["role"], row["axis_or_task"], row["metric"])
        items.setdefault(key, []).append(row["value"])
    for row in summaries:
        key = (row["model"], row["evaluator"], row["role"], row["axis_or_task"], row["metric"])
        values = torch.tensor(items.get(key, []), dtype=torch.float64)
        finite = values[torch.isfinite(values)]
        mean = float(finite.mean()) if finite.numel() else math.nan
        low, high = bootstrap_interval(finite)
        stored = (_nan(row["value"]), _nan(row["low"]), _nan(row["high"]))
        agree = all(
            (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
            for a, b in zip(stored, (mean, low, high))
        )
        if not agree or row["n"] != finite.numel():
            raise StoreError(
                f"run {run_id}: the stored summary of {row['evaluator']} / {row['metric']} / "
                f"{row['axis_or_task'] or '-'} on the {row['role']} model ({stored[0]:.6g} [{stored[1]:.6g}, "
                f"{stored[2]:.6g}], n {row['n']}) does not match its {values.numel()} per-item rows ({mean:.6g} "
                f"[{low:.6g}, {high:.6g}], n {finite.numel()}): the store was edited after the run. Rerun the audit."
            )
    return len(summaries)


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def evaluate_policy(policy: Policy, store: Store, run_id: str) -> list[Verdict]:
    """Every rule's verdict for every axis and model the run measured, read from the store."""
    record = store.verify(run_id)  # every table file as the run wrote it
    cross_check(store, run_id)
    if record.get("kind", "audit") not in ("audit", "evaluate"):
        raise StoreError(
            f"run {run_id} is a {record.get('kind')} run; a policy is checked on an audit or evaluate run."
        )
    found = _measurements(store, run_id)
    axes = list(record.get("suites", {})) or sorted({key[4] for key in found if key[4]})
    policy.check_axes(axes, f"run {run_id}")
    # the audited model always counts, and so does a pruned one the run made: no data is no pass
    roles = (
        {"original"}
        | ({"pruned"} if record.get("prune") or record.get("compare") else set())
        | {key[3] for key in found}
    )
    configured = {
        ref["plugin"] if isinstance(ref, dict) else ref for ref in record.get("config", {}).get("evaluators", [])
    }
    verdicts = []
    for rule in policy.rules:
        source = METRICS[rule.metric]
        key_kind = "level" if source.kind == "level" else f"change:{source.field}"
        min_items = rule.min_items or policy.min_items
        for role in rule.models:
            if role not in roles:
                continue
            measured_axes = sorted(
                {key[4] for key in found if key[:4] == (key_kind, source.evaluator, source.metric, role)}
            )
            if not source.per_axis:
                if rule.if_measured and source.evaluator not in configured:
                    continue
                wanted = [""]
            elif rule.axes == "all" and rule.if_measured:
                wanted = measured_axes
            elif rule.axes == "all":  # every audited axis: one the run did not measure is "not measured"
                on_suites = source.evaluator != "lm_eval"  # lm-eval's axes are its tasks
                wanted = sorted(set(measured_axes) | (set(axes) if on_suites else set())) or ["(any)"]
            else:
                wanted = list(rule.axes)
            for axis in wanted:
                measurement = found.get((key_kind, source.evaluator, source.metric, role, axis))
                verdict = Verdict(
                    rule.id,
                    rule.metric,
                    rule.severity,
                    role,
                    axis or "-",
                    "not measured",
                    threshold=rule.threshold_text(),
                )
                if measurement is None:
                    if rule.if_measured and source.per_axis:
                        continue
                    verdict.reason = (
                        f"the run has no '{source.metric}' from the '{source.evaluator}' evaluator "
                        f"{'for this axis ' if source.per_axis else ''}on the {role} model"
                    )
                    verdicts.append(verdict)
                    continue
                value, low, high = (_nan(measurement[k]) for k in ("value", "low", "high"))
                if source.transform == "exp_minus_one":
                    value, low, high = (math.expm1(v) for v in (value, low, high))
                verdict.value, verdict.low, verdict.high, verdict.items = (
                    value,
                    low,
                    high,
                    int(measurement["items"] or 0),
                )
                verdict.verdict, verdict.reason = judge(value, low, high, verdict.items, rule.allowed(), min_items)
                verdicts.append(verdict)
    return verdicts


def gate_role(verdicts: list[Verdict], requested: str = "auto") -> str:
    """The model the exit status judges: the pruned one when the run has it (it is what would be
    released), else the original; `requested` overrides."""
    if requested != "auto":
        return requested
    return "pruned" if any(v.model == "pruned" for v in verdicts) else "original"


def exit_status(verdicts: list[Verdict], role: str) -> int:
    """0: every `must` rule passes on `role`'s model; 1: one fails; 3: one is not decided. A pass
    needs at least one `must` verdict on that model: nothing measured is never a pass (3)."""
    judged = [v for v in verdicts if v.severity == "must" and v.model == role]
    if any(v.verdict == "fail" for v in judged):
        return 1
    if not judged or any(v.verdict != "pass" for v in judged):
        return 3
    return 0


def verdict_changes(baseline: list[Verdict], current: list[Verdict]) -> list[dict[str, Any]]:
    """Per rule and axis, the verdict of a baseline run beside the current one; regressions
    (pass before, fail now) first, then other changes for the worse, improvements, the rest."""
    rank = {"pass": 0, "too few items": 1, "not measured": 1, "inconclusive": 1, "fail": 2}
    before = {(v.rule, v.model, v.axis): v for v in baseline}
    rows = []
    for verdict in current:
        previous = before.get((verdict.rule, verdict.model, verdict.axis))
        was = previous.verdict if previous else "not measured"
        if was == "pass" and verdict.verdict == "fail":
            change = "regression"
        elif rank[verdict.verdict] > rank[was]:
            change = "worse"
        elif rank[verdict.verdict] < rank[was]:
            change = "better"
        else:
            change = "same"
        rows.append(
            {
                "rule": verdict.rule,
                "severity": verdict.severity,
                "model": verdict.model,
                "axis": verdict.axis,
                "before": was,
                "after": verdict.verdict,
                "change": change,
                "value_before": previous.value if previous else math.nan,
                "value_after": verdict.value,
            }
        )
    order = {"regression": 0, "worse": 1, "better": 2, "same": 3}
    return sorted(rows, key=lambda row: (order[row["change"]], row["severity"] != "must", row["rule"], row["axis"]))


def policy_record(policy: Policy, source: str | Path) -> dict[str, Any]:
    """What a run record keeps of the policy it was checked against."""
    return {
        "name": policy.policy,
        "source": str(source),
        "sha256": policy.sha256(),
        "definition": policy.model_dump(mode="json"),
    }


def stored_policy(record: dict[str, Any]) -> Policy | None:
    """The policy a run was audited against, from its record (None when it had none), refused
    when it is not a valid policy or no longer matches the sha256 recorded with it."""
    from pydantic import ValidationError

    entry = record.get("policy")
    if not entry:
        return None
    run = record.get("run_id", "?")
    try:
        policy = Policy.model_validate(entry["definition"])
    except (ValidationError, KeyError, TypeError):
        raise StoreError(
            f"run {run}: the policy stored in its record is not a valid policy (the record was edited, or "
            f"written by another version); name a policy with --policy."
        ) from None
    if policy.sha256() != entry.get("sha256"):
        raise StoreError(
            f"run {run}: the policy stored in its record no longer matches the sha256 recorded when the run "
            f"was audited (it was edited after the run); name a policy file you trust with --policy."
        )
    return policy


def check_config(policy: Policy, axes: list[str], evaluators: list[str], prunes: bool, where: str) -> None:
    """Before a model loads: every `must` rule can be measured by this run config."""
    policy.check_axes(axes, where)
    for rule in policy.rules:
        if rule.if_measured or rule.severity != "must":
            continue
        source = METRICS[rule.metric]
        if source.evaluator not in evaluators:
            raise ConfigError(
                f"policy '{policy.policy}', rule '{rule.id}': metric '{rule.metric}' comes from the "
                f"'{source.evaluator}' evaluator, which {where} does not run. Add it to 'evaluators', "
                f"or mark the rule 'if_measured: true'."
            )
        if source.kind == "change" and not prunes:
            raise ConfigError(
                f"policy '{policy.policy}', rule '{rule.id}': metric '{rule.metric}' compares the pruned "
                f"model with the original, and {where} does not prune. Mark the rule 'if_measured: true' or "
                f"add a 'pruning:' section."
            )
