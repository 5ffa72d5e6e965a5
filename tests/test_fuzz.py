"""Hostile suites and configs: thousands of generated malformed files, each ends in a
FairauditError with a message or a valid object, never another exception, never a hang."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fairaudit.config import RunConfig, load_config
from fairaudit.errors import FairauditError
from fairaudit.inputs.suite import Suite, load_suite

SCRATCH = Path(tempfile.mkdtemp(prefix="fairaudit-fuzz-"))
CASE_SECONDS = 2.0

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True), text)
value = st.recursive(
    scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)
slotted_text = st.builds(lambda a, b: f"{a} {{group}} {b}", text, text) | text
group_value = st.dictionaries(st.sampled_from(["group", "pronoun", "x", "a b", ""]), text | value, max_size=3)
template = st.fixed_dictionaries(
    {"id": text | value, "text": slotted_text | value},
    optional={
        "continuations": st.dictionaries(text, text | value, max_size=3) | value,
        "split": st.sampled_from(["probe", "heldout", "other"]) | value,
    },
)
suite_like = st.fixed_dictionaries(
    {},
    optional={
        "suite": text | value,
        "axis": text | value,
        "version": st.integers(-3, 5) | value,
        "groups": st.dictionaries(text, group_value | value, max_size=5) | value,
        "reference": text | value,
        "templates": st.lists(template | value, max_size=4) | value,
        "controls": st.lists(st.lists(text, max_size=3) | value, max_size=3) | value,
        "sentence_pairs": st.lists(st.fixed_dictionaries({"id": text, "more": text, "less": text}) | value, max_size=3),
        "extra": value,
    },
)
config_like = st.fixed_dictionaries(
    {},
    optional={
        "model": text | value,
        "suites": st.lists(st.sampled_from(["race", "gender", "nope"]) | text, max_size=3) | value,
        "probe": st.fixed_dictionaries(
            {"plugin": st.sampled_from(["activations", "nope"]) | text},
            optional={"params": st.dictionaries(st.sampled_from(["position", "batch_size", "x"]), value, max_size=3)},
        )
        | value,
        "scoring": st.fixed_dictionaries(
            {},
            optional={
                "scorers": st.lists(st.sampled_from(["bias", "hybrid", "nope"]) | value, max_size=3),
                "component": text,
            },
        )
        | value,
        "pruning": st.none()
        | st.fixed_dictionaries(
            {},
            optional={"selection": st.dictionaries(st.sampled_from(["fraction", "scope", "axes"]), value, max_size=2)},
        )
        | value,
        "evaluators": st.lists(st.sampled_from(["perplexity", "nope"]) | value, max_size=3) | value,
        "seed": value,
        "other": value,
    },
)


def serialised(document) -> bytes:
    try:
        return yaml.safe_dump(document, allow_unicode=True).encode("utf-8")
    except (yaml.YAMLError, ValueError, UnicodeEncodeError):
        return repr(document).encode("utf-8", "replace")


def mutate(raw: bytes, cut: int, noise: bytes) -> bytes:
    """Truncate and splice in bytes: broken indentation, tabs, stray quotes, invalid UTF-8."""
    cut = cut % (len(raw) + 1)
    return raw[:cut] + noise + raw[cut:]


def check(raw: bytes, loader, kind) -> None:
    path = SCRATCH / "case.yaml"
    path.write_bytes(raw)
    started = time.perf_counter()
    try:
        loaded = loader(path)
    except FairauditError as exc:
        assert str(exc) and "\n" not in str(exc).strip(), "one paragraph"
    else:
        assert isinstance(loaded, kind)
    assert time.perf_counter() - started < CASE_SECONDS


settings_for_fuzz = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@settings_for_fuzz
@given(
    suite_like,
    st.integers(0, 10_000),
    st.sampled_from([b"", b"\t", b"\xff\xfe", b": : :", b"- [", b"'", b"&a *a", b"\n  x: 1"]),
)
def test_generated_suites(document, cut, noise):
    raw = serialised(document)
    check(raw, load_suite, Suite)
    check(mutate(raw, cut, noise), load_suite, Suite)


@settings_for_fuzz
@given(
    config_like,
    st.integers(0, 10_000),
    st.sampled_from([b"", b"\t", b"\xc3\x28", b"{{", b"!!python/object:os.system", b"*x"]),
)
def test_generated_configs(document, cut, noise):
    raw = serialised(document)
    check(raw, load_config, RunConfig)
    check(mutate(raw, cut, noise), load_config, RunConfig)
