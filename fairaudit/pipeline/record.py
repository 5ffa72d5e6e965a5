"""What a run gives back (`AuditResult`) and the timings of its stages, as the run record keeps
them (wall and CPU seconds, and the token positions forwarded: `fairaudit.compute`). The record
itself is `fairaudit.store.RunRecord`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairaudit.compute import TOTAL

Clock = tuple[float, float, int, int]


def timings_of(record: Any) -> dict[str, float]:
    """A run record's timings (a `fairaudit.store.RunRecord`), started empty when it has none."""
    if record.timings is None:
        record.timings = {}
    return record.timings


def clock() -> Clock:
    """Now, as (wall seconds, CPU seconds of this process (all threads), token positions every
    model of the process has forwarded, of which with gradients)."""
    return time.time(), time.process_time(), *TOTAL.snapshot()


def record_time(timings: dict[str, float], key: str, since: Clock) -> None:
    """Wall seconds since `since` into timings[key], CPU seconds into timings[key + ':cpu'], and
    the token positions forwarded meanwhile into timings[key + ':tokens'] (those with gradients,
    each followed by a backward, into key + ':grad_tokens'), when any were."""
    timings[key] = round(time.time() - since[0], 3)
    timings[f"{key}:cpu"] = round(time.process_time() - since[1], 3)
    forward, with_grad = TOTAL.snapshot()
    record_tokens(timings, key, forward - since[2], with_grad - since[3])


def record_tokens(timings: dict[str, float], key: str, forward: int, with_grad: int) -> None:
    """The token counts of `record_time`, for a stage whose count is not the process' (a lane)."""
    for suffix, value in ((":tokens", forward), (":grad_tokens", with_grad)):
        if value:
            timings[key + suffix] = value
        else:
            timings.pop(key + suffix, None)


@dataclass
class AuditResult:
    """What a run produced: where it is stored, and the per-axis summaries."""

    run_id: str
    store: Path
    model_id: str
    summaries: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped_axes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pruned: dict[str, Any] = field(
        default_factory=dict
    )  # out, widths, parameters (when the run prunes); or skipped: why not
    evaluation_failures: list[str] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[Any] = field(default_factory=list)  # fairaudit.compliance.policy.Verdict, when the run has a policy
    report: Path | None = None
