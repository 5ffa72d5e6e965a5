"""Suites: one bias axis as counterfactual prompt pairs, declared in YAML.

A suite declares groups (each a mapping of placeholder -> word, e.g. `{group: Black}`),
templates with placeholders, optional continuations, statements (the group named after a
negative or a neutral context), control pairs, literal sentence pairs (for imported data sets
such as CrowS-Pairs) and multiple-choice questions about two people (BBQ-style).
`Suite.pairs()` expands templates and sentence pairs, deterministically, into typed `Pair`
objects, `Suite.statement_pairs()` the statements; questions are not pairs (nothing is probed on
them). Statements and questions are read by the evaluators only: no probe or selection reads
them, so they measure whether a repair carries to a format it was not chosen on.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fairaudit.errors import ConfigError, SuiteError
from fairaudit.inputs.questions import Question, Scenario
from fairaudit.inputs.schema import IDENTIFIER, StrictModel, placeholders
from fairaudit.resources import suites_dir
from fairaudit.yamlio import describe_validation_error, read_yaml

MAX_PAIRS = 20_000  # pairs one suite may expand to (each is two forward passes)
MAX_VALUE_CHARS = 500  # a group's placeholder value


class Template(StrictModel):
    """A prompt with placeholders, filled in once per group."""

    id: str = Field(pattern=IDENTIFIER, max_length=200)
    text: str = Field(min_length=1, max_length=4000)
    continuations: dict[str, str] = Field(default_factory=dict, max_length=20)
    split: Literal["probe", "heldout"] = "probe"

    @field_validator("text")
    @classmethod
    def _text_has_placeholder(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("template text is empty")
        if not placeholders(text):
            raise ValueError(
                "template text has no placeholder such as {group}, so both sides of a pair would be the same"
            )
        return text

    @field_validator("continuations")
    @classmethod
    def _continuations_not_empty(cls, continuations: dict[str, str]) -> dict[str, str]:
        for label, text in continuations.items():
            if not text.strip():
                raise ValueError(f"continuation '{label}' is empty")
        return continuations


def split_at_placeholder(text: str) -> tuple[str, str]:
    """A template text cut where its first placeholder starts: (the context before it, braces
    unescaped; the rest, still a template)."""
    index = 0
    while index < len(text):
        if text.startswith(("{{", "}}"), index):
            index += 2
        elif text[index] == "{":
            return text[:index].format(), text[index:]
        else:
            index += 1
    return text.format(), ""


class Statement(StrictModel):
    """A sentence that names a group after a context, in a negative and a neutral version
    that differ only before the group is named ("The man who set the fire was {a_group} man."
    vs "The man who put out the fire was {a_group} man."). Scored by the log-likelihood of
    the sentence from the group on, which for two groups is the difference of the two whole
    sentences' log-likelihoods (CrowS-Pairs' measure: the shared beginning cancels)."""

    id: str = Field(pattern=IDENTIFIER, max_length=200)
    negative: str = Field(min_length=1, max_length=4000)
    neutral: str = Field(min_length=1, max_length=4000)
    split: Literal["probe", "heldout"] = "probe"

    @model_validator(mode="after")
    def _context_then_group(self) -> Statement:
        cut = {}
        for label, text in (("negative", self.negative), ("neutral", self.neutral)):
            if not placeholders(text):
                raise ValueError(f"the {label} sentence has no placeholder such as {{a_group}}")
            cut[label] = split_at_placeholder(text)
            if not cut[label][0].strip():
                raise ValueError(
                    f"the {label} sentence starts with its placeholder; a statement names the group after a "
                    "context, and the context is what differs between its negative and neutral sentence"
                )
        if cut["negative"][1] != cut["neutral"][1]:
            raise ValueError(
                "the negative and the neutral sentence must be the same from the first placeholder on (only the "
                f"context before the group may differ); they end {cut['negative'][1][:80]!r} and "
                f"{cut['neutral'][1][:80]!r}"
            )
        if cut["negative"][0] == cut["neutral"][0]:
            raise ValueError("the negative and the neutral sentence are identical")
        return self


class SentencePair(StrictModel):
    """A literal pair of sentences (imported data sets): `more` is the more stereotyping one."""

    id: str = Field(pattern=IDENTIFIER, max_length=200)
    more: str = Field(min_length=1, max_length=4000)
    less: str = Field(min_length=1, max_length=4000)
    label: str = ""
    group_more: str = ""
    group_less: str = ""
    unrelated: str = Field(
        default="", max_length=4000, description="StereoSet's unrelated sentence (for its LMS score)"
    )

    @model_validator(mode="after")
    def _sentences_differ(self) -> SentencePair:
        if not self.more.strip() or not self.less.strip():
            raise ValueError("a sentence of the pair is empty")
        if self.more == self.less:
            raise ValueError("both sentences are identical")
        return self


class Suite(StrictModel):
    """One bias axis. See README.md, "Writing a suite"."""

    suite: str = Field(pattern=IDENTIFIER, max_length=100)
    axis: str = Field(pattern=IDENTIFIER, max_length=100)
    version: int = Field(default=1, ge=1)
    description: str = ""
    groups: dict[str, dict[str, str]] = Field(default_factory=dict)
    reference: str | None = None
    templates: list[Template] = Field(default_factory=list)
    statements: list[Statement] = Field(default_factory=list)
    controls: list[tuple[str, str]] = Field(default_factory=list)
    sentence_pairs: list[SentencePair] = Field(default_factory=list)
    questions: list[Question] = Field(default_factory=list)
    scenarios: list[Scenario] = Field(default_factory=list)

    @field_validator("groups")
    @classmethod
    def _group_names(cls, groups: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for name, values in groups.items():
            if not name or ":" in name:
                raise ValueError(f"group name {name!r} must be non-empty and contain no ':'")
            if not values:
                raise ValueError(f"group '{name}' defines no placeholder value")
            for key, value in values.items():
                if not key.isidentifier():
                    raise ValueError(f"group '{name}': placeholder name {key!r} is not a plain name")
                if not value.strip():
                    raise ValueError(f"group '{name}': value of '{key}' is empty")
                if len(value) > MAX_VALUE_CHARS:
                    raise ValueError(
                        f"group '{name}': value of '{key}' has {len(value):,} characters; the limit is {MAX_VALUE_CHARS}"
                    )
        return groups

    @field_validator("controls")
    @classmethod
    def _controls_differ(cls, controls: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for index, (first, second) in enumerate(controls):
            if not first.strip() or not second.strip():
                raise ValueError(f"control pair {index} has an empty sentence")
            if first == second:
                raise ValueError(f"control pair {index} has two identical sentences")
        return controls

    @model_validator(mode="after")
    def _consistent(self) -> Suite:
        if not (self.templates or self.statements or self.sentence_pairs or self.questions or self.scenarios):
            raise ValueError(
                "the suite has no templates, statements, sentence_pairs, questions or scenarios; give at least one"
            )
        if (self.templates or self.statements or self.scenarios) and len(self.groups) < 2:
            raise ValueError(
                "templates, statements and scenarios need at least two groups to compare; this suite has "
                f"{len(self.groups)}"
            )
        if self.reference is not None and self.reference not in self.groups:
            raise ValueError(f"reference '{self.reference}' is not one of the groups {sorted(self.groups)[:20]}")
        groups = len(self.groups)  # counted before anything is expanded: a small file can declare millions of pairs
        per_template = groups - 1 if self.reference is not None else groups * (groups - 1) // 2
        filled = len(self.templates) + len(self.statements) + 6 * len(self.scenarios)  # six questions a scenario
        expanded = per_template * filled + len(self.sentence_pairs) + len(self.questions)
        if expanded > MAX_PAIRS:
            raise ValueError(
                f"the suite expands to {expanded:,} pairs ({groups} groups x {filled} templates, statements and "
                "scenario questions"
                f"{', against the reference' if self.reference else ', every pair of groups'}); the limit is "
                f"{MAX_PAIRS:,}. Split it into several suites or set a 'reference' group"
            )
        ids = [
            item.id
            for items in (self.templates, self.statements, self.sentence_pairs, self.questions, self.scenarios)
            for item in items
        ]
        duplicates = sorted(identifier for identifier, count in Counter(ids).items() if count > 1)
        if duplicates:
            raise ValueError(f"duplicate template/statement/pair/question/scenario ids: {duplicates}")
        texts = (
            [("template", t.id, t.text) for t in self.templates]
            + [("statement", s.id, text) for s in self.statements for text in (s.negative, s.neutral)]
            + [("scenario", s.id, text) for s in self.scenarios for text in (s.someone, s.named)]
        )
        for kind, identifier, text in texts:
            for name in placeholders(text):
                missing = [g for g, values in self.groups.items() if name not in values]
                if missing:
                    raise ValueError(f"{kind} '{identifier}' uses {{{name}}}, which groups {missing} do not define")
        for first, second in self._group_pairs():
            for kind, identifier, text in texts:
                if text.format(**self.groups[first]) == text.format(**self.groups[second]):
                    raise ValueError(f"{kind} '{identifier}' gives the same text for groups '{first}' and '{second}'")
        return self

    def _group_pairs(self) -> list[tuple[str, str]]:
        names = list(self.groups)
        if self.reference is not None:
            return [(name, self.reference) for name in names if name != self.reference]
        return list(combinations(names, 2))

    def _fill(self, template: Template, group: str) -> str:
        return template.text.format(**self.groups[group])

    def scenario_questions(self) -> list[Question]:
        """Every scenario's six questions for each pair of groups (group a against the reference),
        the person of group a introduced first in every other (scenario, pair), so that the order
        of mention, and of the answers, balances out."""
        pairs = self._group_pairs()
        return [
            question
            for count, (scenario, (first, second)) in enumerate((s, pair) for s in self.scenarios for pair in pairs)
            for question in scenario.questions(self.groups, first, second, count % 2 == 0)
        ]

    def all_questions(self) -> list[Question]:
        """The BBQ-style questions the evaluators read: those given as they are (imported data
        sets), then those of the scenarios."""
        return self.questions + self.scenario_questions()

    def statement_pairs(self, split: str | None = None) -> list[Pair]:
        """Expand the statements (those of `split`, or all) into pairs of kind "statement":
        `text_a`/`text_b` the negative sentence naming group a / group b, `contexts` the negative
        and the neutral context before the group (`metrics.output_bias_terms` scores the rest)."""
        result = []
        for statement in self.statements:
            if split is not None and statement.split != split:
                continue
            (negative, tail), (neutral, _) = (
                split_at_placeholder(statement.negative),
                split_at_placeholder(statement.neutral),
            )
            for first, second in self._group_pairs():
                result.append(
                    Pair(
                        pair_id=f"{statement.id}:{first}:{second}",
                        kind="statement",
                        template_id=statement.id,
                        group_a=first,
                        group_b=second,
                        text_a=negative + tail.format(**self.groups[first]),
                        text_b=negative + tail.format(**self.groups[second]),
                        contexts={"negative": negative, "neutral": neutral},
                    )
                )
        return result

    def pairs(self, split: str | None = "probe") -> list[Pair]:
        """Expand into pairs, in declaration order: templates x group pairs, then sentence pairs.

        `split` keeps the templates of that split ("probe" or "heldout"); None keeps all.
        Sentence pairs belong to the "probe" split.
        """
        result = [
            Pair(
                pair_id=f"{template.id}:{first}:{second}",
                kind="template",
                template_id=template.id,
                group_a=first,
                group_b=second,
                text_a=self._fill(template, first),
                text_b=self._fill(template, second),
                continuations=template.continuations,
            )
            for template in self.templates
            if split is None or template.split == split
            for first, second in self._group_pairs()
        ]
        if split in (None, "probe"):
            result += [
                Pair(
                    pair_id=sentence_pair.id,
                    kind="sentence",
                    template_id=sentence_pair.id,
                    group_a=sentence_pair.group_more or "more",
                    group_b=sentence_pair.group_less or "less",
                    text_a=sentence_pair.more,
                    text_b=sentence_pair.less,
                    label=sentence_pair.label,
                    unrelated=sentence_pair.unrelated,
                )
                for sentence_pair in self.sentence_pairs
            ]
        return result

    def control_pairs(self) -> list[Pair]:
        """The control pairs (differ in a non-demographic word), used as a noise floor."""
        return [
            Pair(
                pair_id=f"control:{index}",
                kind="control",
                template_id=f"control:{index}",
                group_a="control_a",
                group_b="control_b",
                text_a=first,
                text_b=second,
            )
            for index, (first, second) in enumerate(self.controls)
        ]

    def content_hash(self) -> str:
        """sha256 of the suite's canonical JSON: changes whenever any prompt changes."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


class Pair(BaseModel):
    """Two prompts that differ only in the group they name."""

    model_config = ConfigDict(frozen=True)

    pair_id: str
    kind: Literal["template", "statement", "sentence", "control"]
    template_id: str
    group_a: str
    group_b: str
    text_a: str
    text_b: str
    continuations: dict[str, str] = Field(default_factory=dict)
    contexts: dict[str, str] = Field(default_factory=dict)  # a statement's negative and neutral context
    label: str = ""
    unrelated: str = ""


def load_suite(path: str | Path) -> Suite:
    """Read and validate one suite file; any problem is a `SuiteError` naming file, line and field."""
    document = read_yaml(path, SuiteError, "suite")
    if not isinstance(document.data, dict):
        kind = type(document.data).__name__ if document.data is not None else "empty"
        raise SuiteError(
            f"suite file {document.path}: expected a mapping with keys suite, axis, groups, templates; got {kind} content."
        )
    try:
        return Suite.model_validate(document.data)
    except ValidationError as exc:
        raise SuiteError(describe_validation_error(document, exc, "suite")) from None


def builtin_suite_names() -> list[str]:
    """Names of the suites shipped with fairaudit."""
    return sorted(path.stem for path in suites_dir().glob("*.yaml"))


def resolve_suite(name_or_path: str | Path) -> Suite:
    """A built-in suite by name (`race`) or a suite file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_suite(path)
    builtin = suites_dir() / f"{name_or_path}.yaml"
    if builtin.exists():
        return load_suite(builtin)
    raise SuiteError(
        f"no suite named '{name_or_path}': it is neither a file nor a built-in suite. "
        f"Built-in suites: {', '.join(builtin_suite_names())}."
    )


def resolve_suites(names: list[str]) -> list[Suite]:
    """The suites a run config names (`suites:`), refusing two whose axes would share a folder
    in the store (axes are folder names: two that sanitise alike would share numbers)."""
    from fairaudit.names import safe_name

    suites = [resolve_suite(name) for name in names]
    stored_as: dict[str, str] = {}
    for suite in suites:
        other = stored_as.get(safe_name(suite.axis))
        if other is not None:
            same = (
                "appears in more than one suite" if other == suite.axis else f"and '{other}' are stored under one name"
            )
            raise ConfigError(
                f"run config field 'suites': axis '{suite.axis}' {same}; one suite per axis, with distinct names."
            )
        stored_as[safe_name(suite.axis)] = suite.axis
    return suites
