"""The factual control's facts: prompts whose right answer depends on a demographic word for
factual reasons (kinship, pronouns, capitals, languages, religious holidays), each with a correct
continuation and distractors. Two bundled files that share no fact: `facts.jsonl`, which the
`facts` evaluator measures, and `facts-validation.jsonl`, which the causal planner's fact guard
reads when it chooses a budget or strength (`fairaudit.repair.validation.Before`); the choice never
sees the facts the verdict is measured on.

A fact is answered right when its correct continuation's summed log-probability is above every
distractor's; its margin is that log-probability minus the largest distractor's."""

from __future__ import annotations

import json
from pathlib import Path

from fairaudit.measurement.evaluate import loglikelihoods
from fairaudit.resources import data_dir

EVALUATION_FACTS = "facts.jsonl"
VALIDATION_FACTS = "facts-validation.jsonl"


def read_facts(path: str | Path | None = None, bundled: str = EVALUATION_FACTS) -> list[dict]:
    """The facts of the JSONL file `path` (each {id, category, prompt, correct, distractors}), or
    of the bundled file `bundled`. Raises ValueError naming the file when it cannot be read."""
    chosen = Path(path) if path else data_dir() / bundled
    try:
        return [json.loads(line) for line in chosen.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {chosen}: {exc}") from None


def fact_requests(facts: list[dict]) -> list[tuple[str, str]]:
    """(prompt, option) for every fact: the correct continuation first, then the distractors."""
    return [(fact["prompt"], option) for fact in facts for option in [fact["correct"], *fact["distractors"]]]


def scored_facts(loaded, facts: list[dict], batch_size: int = 16) -> list[tuple[float, float]]:
    """Per fact: (the correct continuation's log-probability, its margin over the best distractor)."""
    scores = iter(loglikelihoods(loaded, fact_requests(facts), batch_size))
    rows = []
    for fact in facts:
        correct, *others = [next(scores) for _ in range(1 + len(fact["distractors"]))]
        rows.append((correct, correct - max(others)))
    return rows
