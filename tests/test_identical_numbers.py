"""The evaluators' speed work must not move a number: a small audit's before/after tables,
compared with the ones the code gave before that work (`tests/data/small_audit_numbers.json`).

"Identical" means bit-identical on one machine and within float32 rounding across machines
(another CPU's kernels sum in another order): every number is compared to 1e-6 of the
magnitude of what was summed to make it. A value in nats (output_bias, log-probabilities, NLLs) is a
difference of log-likelihoods, as uncertain as those log-likelihoods, not as its own size; a
before/after change is as uncertain as the values it is the difference of.

Regenerate the reference only when a change of numbers is intended and explained:
    python tests/test_identical_numbers.py --write
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

REFERENCE = Path(__file__).parent / "data" / "small_audit_numbers.json"
EVALUATORS = [
    "bias_reprobe",
    "output_bias",
    {"plugin": "perplexity", "params": {"max_length": 64, "stride": 48}},
    "facts",
    "fidelity",
]


def small_audit_numbers(folder: Path) -> dict[str, dict[str, float]]:
    """Run a two-axis audit with pruning on a small Llama; {measurements, comparisons} keyed by row."""
    from fairaudit.config import RunConfig
    from fairaudit.pipeline.audit import audit
    from fairaudit.testing import make_model

    model = make_model("llama", folder / "model", layers=2, hidden=32, intermediate=64)
    result = audit(
        RunConfig.model_validate(
            {
                "model": str(model),
                "suites": ["race", "gender"],
                "store": str(folder / "store"),
                "report": False,
                "probe": {"plugin": "activations", "params": {"progress": False}},
                "pruning": {"out": str(folder / "pruned"), "selection": {"fraction": 0.1}},
                "evaluators": EVALUATORS,
            }
        )
    )
    assert result.evaluation_failures == []
    from fairaudit.inputs.model import load_model
    from fairaudit.inputs.suite import resolve_suite
    from fairaudit.measurement.evaluate import loglikelihoods
    from fairaudit.measurement.metrics import output_bias_terms

    loaded = load_model(str(model))
    requests = [
        (context, continuation)
        for axis in ("race", "gender")
        for pair in resolve_suite(axis).pairs(None)
        for context, continuation, _ in output_bias_terms(pair)
    ]
    nats = max(abs(value) for value in loglikelihoods(loaded, requests))  # the largest log-likelihood summed into a gap
    measurements = {
        f"{row['evaluator']}|{row['role']}|{row['axis_or_task']}|{row['metric']}": row["value"]
        for row in result.measurements
    }
    comparisons = {
        f"{row['evaluator']}|{row['axis_or_task']}|{row['metric']}|{key}": row[key]
        for row in result.comparisons
        for key in ("before", "after", "change", "change_low", "change_high")
    }
    scales = {
        f"{row['evaluator']}|{row['axis_or_task']}|{row['metric']}": max(abs(row["before"]), abs(row["after"]))
        for row in result.comparisons
    }
    return {"measurements": measurements, "comparisons": comparisons, "scales": scales, "nats": nats}


def in_nats(key: str) -> bool:
    """Whether a row's value is a difference of log-likelihoods (output_bias, log-probabilities, NLLs)."""
    return key.startswith("output_bias|") or "|fact_logprob" in key or "|nll_" in key


def test_the_small_audit_gives_the_reference_numbers(tmp_path):
    expected = json.loads(REFERENCE.read_text(encoding="utf-8"))
    actual = small_audit_numbers(tmp_path)
    for table in ("measurements", "comparisons"):
        assert sorted(actual[table]) == sorted(expected[table]), table
        for key, value in expected[table].items():
            got = actual[table][key]
            # a change is compared to 1e-6 of the values it is the difference of, a value in nats
            # to 1e-6 of the log-likelihoods it is the difference of
            scale = expected["scales"].get(key.rsplit("|", 1)[0], 0.0) if table == "comparisons" else 0.0
            if in_nats(key):
                scale = max(scale, actual["nats"])
            if value is None:
                assert got is None or math.isnan(got), key
            else:
                assert math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-6 * scale), (key, got, value)


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    numbers = small_audit_numbers(Path(tempfile.mkdtemp(prefix="fairaudit-reference-")))
    clean = {
        table: {key: (None if value is None or math.isnan(value) else value) for key, value in rows.items()}
        for table, rows in numbers.items()
        if table != "nats"
    }
    REFERENCE.write_text(json.dumps(clean, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {REFERENCE}: {sum(len(rows) for rows in clean.values())} numbers")
