"""A "Bias, Risks, and Limitations" section for a Hugging Face model card, from a stored run.

The section follows the model-card template's heading and says what was audited, what was
found (with intervals), the policy verdicts when there is a policy, and what the audit does
not show. It reads the store only.
"""

from __future__ import annotations

import math
from typing import Any

import fairaudit
from fairaudit.compliance.policy import Policy, Verdict, evaluate_policy, stored_policy
from fairaudit.escaping import for_terminal, markdown_code, markdown_text
from fairaudit.store import Store

LIMITATIONS = (
    "Activation divergence between the two prompts of a pair is not proof of unfair outputs: a neuron can react "
    "to a group word and change nothing the model says.",
    "Output-level preferences are measured on short English templates and declared continuations; they do not "
    "cover open-ended generation, other languages, dialogues or downstream tasks.",
    "Only the groups and templates of the listed suites were audited; a group that is not in a suite was not measured.",
    "A `pass` verdict means the whole 95% interval met the policy's threshold on these items; it is relative to the "
    "thresholds chosen, not a certificate that the model is unbiased.",
)


def _interval(value: Any, low: Any, high: Any) -> str:
    def number(x: Any) -> str:
        return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:+.4f}"

    return f"{number(value)} [{number(low)}, {number(high)}]"


def verdict_table(verdicts: list[Verdict]) -> list[str]:
    """Markdown lines of a verdict table."""
    lines = [
        "| rule | severity | model | axis | verdict | value [95% CI] | items | threshold |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        lines.append(
            f"| {v.rule} | {v.severity} | {v.model} | {markdown_text(v.axis)} | **{v.verdict}** | "
            f"{_interval(v.value, v.low, v.high)} | {v.items} | {markdown_code(v.threshold)} |"
        )
    return lines


def bias_section(store: Store, run_id: str, policy: Policy | None = None) -> str:
    """The Markdown section, ready to paste into a model's README.md."""
    record = store.verify(run_id)
    policy = policy or stored_policy(record)
    model = record.get("model", {})
    lines = [
        "## Bias, Risks, and Limitations",
        "",
        f"Audited with fairaudit {markdown_text(record.get('environment', {}).get('fairaudit', fairaudit.__version__))}, "
        f"run {markdown_code(run_id)} ({markdown_text(record.get('started', '?'))}), on "
        f"{markdown_code(model.get('source', record.get('model_id')))} (weights hash "
        f"{markdown_code(model.get('weights_hash', '?'))}).",
        "",
        "### What was audited",
        "",
    ]
    for axis, entry in record.get("suites", {}).items():
        definition = entry.get("definition") or {}
        lines.append(
            f"- **{markdown_text(axis)}**: suite {markdown_code(entry.get('suite'))} version {markdown_text(entry.get('version'))}, "
            f"{len(definition.get('groups', {}))} groups, {len(definition.get('templates', []))} templates "
            f"(sha256 `{str(entry.get('sha256'))[:16]}`)."
        )
    evaluators = [
        ref["plugin"] if isinstance(ref, dict) else ref for ref in record.get("config", {}).get("evaluators", [])
    ]
    if evaluators:
        lines.append(f"- Evaluators: {', '.join(markdown_text(name) for name in evaluators)}.")
    if record.get("prune"):
        prune = record["prune"]
        lines.append(
            f"- Pruned {prune.get('removed')} of {prune.get('neurons')} MLP neurons ({for_terminal(prune.get('ranking', ''))})."
        )
    summaries = {row["axis"]: row for row in store.rows("axis_summary", run_id=run_id)}
    preference = {
        (row["role"], row["axis_or_task"]): row
        for row in store.rows("evaluations", run_id=run_id)
        if row["evaluator"] == "output_bias" and row["metric"] == "stereotype_preference" and not row["error"]
    }
    lines += [
        "",
        "### Findings",
        "",
        "| axis | activation bias index [95% CI] | output-level preference, original [95% CI] | pruned [95% CI] |",
        "|---|---|---|---|",
    ]
    for axis in record.get("suites", {}):
        summary = summaries.get(axis, {})
        before, after = preference.get(("before", axis)), preference.get(("after", axis))
        lines.append(
            f"| {markdown_text(axis)} | {_interval(summary.get('bias_index'), summary.get('bias_index_low'), summary.get('bias_index_high'))} | "
            + (
                " | ".join(
                    _interval(row["value"], row["low"], row["high"]) if row else "not measured"
                    for row in (before, after)
                )
            )
            + " |"
        )
    lines += [
        "",
        "Output-level preference: extra log-probability (nats) of the negative over the neutral continuation "
        "for the first group of each pair; 0 = no preference, positive = stereotype-consistent.",
    ]
    if policy is not None:
        verdicts = evaluate_policy(policy, store, run_id)
        lines += [
            "",
            f"### Policy verdicts ({markdown_code(policy.policy)}, sha256 `{policy.sha256()[:16]}`)",
            "",
            *verdict_table(verdicts),
        ]
    lines += ["", "### What this audit does not show", "", *(f"- {text}" for text in LIMITATIONS), ""]
    return "\n".join(lines)
