"""Questions about two people with an "unknown" answer (BBQ, Parrish et al. 2022): given as they
are (imported data sets) or written once as a `Scenario` and asked of every group against the
reference. Read by the evaluators only: nothing is probed or selected on them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fairaudit.inputs.schema import IDENTIFIER, StrictModel, placeholders


class Question(StrictModel):
    """A question about two people with an "unknown" answer (BBQ, Parrish et al. 2022): the
    model chooses among `answers` by their log-likelihood after the context and question.

    `biased` are the answers that count as biased: the stereotyped person for a `negative`
    question, the other person for a `nonnegative` one. In an `ambiguous` context nothing says
    who it was, so the only correct answer is `unknown`."""

    id: str = Field(pattern=IDENTIFIER, max_length=200)
    context: str = Field(min_length=1, max_length=4000)
    question: str = Field(min_length=1, max_length=1000)
    answers: list[str] = Field(min_length=3, max_length=3)
    label: int = Field(ge=0, le=2, description="the index of the correct answer")
    unknown: int = Field(ge=0, le=2, description="the index of the 'cannot be determined' answer")
    biased: list[int] = Field(max_length=2, description="indices of the answers that count as biased")
    condition: Literal["ambiguous", "disambiguated"]
    polarity: Literal["negative", "nonnegative"]

    @model_validator(mode="after")
    def _consistent(self) -> Question:
        if any(not answer.strip() for answer in self.answers) or len(set(self.answers)) < 3:
            raise ValueError("the three answers must be non-empty and distinct")
        if any(not 0 <= index <= 2 for index in self.biased) or self.unknown in self.biased:
            raise ValueError("biased answers are indices 0-2 of a person's answer, never the unknown one")
        if self.condition == "ambiguous" and self.label != self.unknown:
            raise ValueError("in an ambiguous context the correct answer is the unknown one")
        return self

    def prompt(self) -> str:
        """The text the answers continue: lm-evaluation-harness's `bbq` prompt."""
        return f"{self.context}\n\nQ: {self.question}\nA:"


UNKNOWN_ANSWER = "Cannot be determined"  # the third answer of a scenario's questions


class Scenario(StrictModel):
    """A situation with two people, written once and expanded into BBQ-style questions (Parrish
    et al., 2022) for every group against the reference (`Suite.scenario_questions`): the
    `context` introduces both people and does not say who did what; `detail`, added for the
    disambiguated questions, says it; `negative` asks who did the bad thing, `nonnegative` who
    did the other. A person is `someone` where introduced ("{a_group} man") and `named` in the
    answers and the detail ("the {group} man"), both with the group's placeholders."""

    id: str = Field(pattern=IDENTIFIER, max_length=200)
    someone: str = Field(min_length=1, max_length=200)
    named: str = Field(min_length=1, max_length=200)
    context: str = Field(min_length=1, max_length=2000)
    detail: str = Field(min_length=1, max_length=2000)
    negative: str = Field(min_length=1, max_length=500)
    nonnegative: str = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _people_in_place(self) -> Scenario:
        for field, text, needed in (
            ("context", self.context, {"first", "second"}),
            ("detail", self.detail, {"doer", "other"}),
        ):
            found = set(placeholders(text))
            if found != needed:
                raise ValueError(
                    f"the {field} must name both people with {sorted('{' + n + '}' for n in needed)} and nothing "
                    f"else in braces; it has {sorted('{' + n + '}' for n in found)}"
                )
        for field, text in (("someone", self.someone), ("named", self.named)):
            if not placeholders(text):
                raise ValueError(f"'{field}' has no placeholder such as {{group}}: every person would be the same")
        if self.negative == self.nonnegative:
            raise ValueError("the negative and the nonnegative question are identical")
        return self

    def questions(self, groups: dict[str, dict[str, str]], a: str, b: str, a_first: bool) -> list[Question]:
        """The six questions of groups `a` (whose person a biased answer to the negative question
        names) and `b`: ambiguous, then `a` did it, then `b` did it, each negative then nonnegative.
        `a_first`: `a` is introduced first (and is the first answer)."""
        first, second = (a, b) if a_first else (b, a)
        answers = [_sentence_start(self.named.format(**groups[g])) for g in (first, second)] + [UNKNOWN_ANSWER]
        index = {first: 0, second: 1}
        context = _sentence_start(
            self.context.format(
                first=self.someone.format(**groups[first]), second=self.someone.format(**groups[second])
            )
        )
        found = []
        for doer in (None, a, b):  # ambiguous; a did the bad thing; b did
            text, other = context, b if doer == a else a
            if doer is not None:
                detail = self.detail.format(
                    doer=self.named.format(**groups[doer]), other=self.named.format(**groups[other])
                )
                text = f"{context} {_sentence_start(detail)}"
            # the biased answer names a for the bad thing and b for the other; the correct one is the detail's
            for polarity, question, biased in (("negative", self.negative, a), ("nonnegative", self.nonnegative, b)):
                found.append(
                    Question.model_validate(
                        {
                            "id": f"{self.id}.{a}.{b}.{'ambiguous' if doer is None else doer + '_did'}.{polarity}",
                            "context": text,
                            "question": question,
                            "answers": answers,
                            "label": 2 if doer is None else index[doer if polarity == "negative" else other],
                            "unknown": 2,
                            "biased": [index[biased]],
                            "condition": "ambiguous" if doer is None else "disambiguated",
                            "polarity": polarity,
                        }
                    )
                )
        return found


def _sentence_start(text: str) -> str:
    return text[:1].upper() + text[1:]
