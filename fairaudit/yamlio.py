"""Safe YAML reading for suites and run configs.

Suites and configs are untrusted input (a compliance team audits with other people's
files), so reading them is bounded:

- the file is at most `MAX_FILE_BYTES` and must be UTF-8;
- only plain data is built (`yaml.SafeLoader`: no Python objects);
- anchors and aliases are allowed, but the document they expand to is at most
  `MAX_EXPANDED_NODES` nodes (a "billion laughs" file is refused before anything walks it);
- every error names the file and, where YAML knows it, the line.

The composed node tree is kept so that later validation errors can be mapped back to a
line (`line_of`).
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fairaudit.errors import FairauditError, one_paragraph

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

MAX_FILE_BYTES = 5 * 1024 * 1024
LOADER = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)  # libyaml's parser when PyYAML has it: the same safe loader, faster
MAX_EXPANDED_NODES = 200_000  # refused beyond this only when aliases multiply the file's own nodes ...
EXPANSION_FACTOR = 10  # ... by more than this: a long plain file is fine, a "billion laughs" is not


@dataclass
class YamlDocument:
    """A parsed YAML file: its plain data and the node tree it came from."""

    path: Path
    data: Any
    root: yaml.Node | None

    def line_of(self, location: tuple[str | int, ...]) -> int | None:
        """1-based line of the value at `location` (keys and list indices), if known."""
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        for key in location:
            if isinstance(node, yaml.MappingNode):
                match = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(key)]
                if not match:
                    return line
                node = match[0]
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
                node = node.value[key]
            else:
                return line
            line = node.start_mark.line + 1
        return line


def _expanded_size(node: yaml.Node, memo: dict[int, int], limit: int = MAX_EXPANDED_NODES) -> int:
    """Number of nodes the tree has once every alias is expanded (memoised per node)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # guards against recursive aliases; PyYAML refuses them anyway
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo, limit) + _expanded_size(v, memo, limit) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo, limit) for v in node.value)
    else:
        size = 1
    memo[key] = min(size, limit + 1)
    return memo[key]


def read_capped(path: Path, limit: int, error: type[FairauditError], what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. The file is opened without blocking
    and checked to be a regular file before anything is read (a FIFO or /dev/zero is refused),
    and reading stops at `limit` + 1 bytes whatever its size claims."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise error(f"{what} file {path} does not exist.") from None
    except IsADirectoryError:
        raise error(f"{path} is a folder, not a {what} file.") from None
    except OSError as exc:
        raise error(f"cannot read {what} file {path}: {exc.strerror}.") from None
    with os.fdopen(descriptor, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if stat.S_ISDIR(mode):
            raise error(f"{path} is a folder, not a {what} file.")
        if not stat.S_ISREG(mode):
            raise error(
                f"{what} file {path} is not a regular file (a device, pipe or socket); save the {what} to a file."
            )
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise error(
            f"{what} file {path} is larger than {limit / 1e6:.0f} MB, the limit. A {what} holds prompts, not data: "
            f"split it or trim it."
        )
    return raw


def _literal_size(node: yaml.Node, seen: set[int] | None = None) -> int:
    """Number of distinct nodes written in the file (an alias counts once)."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return 0
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        return 1 + sum(_literal_size(k, seen) + _literal_size(v, seen) for k, v in node.value)
    if isinstance(node, yaml.SequenceNode):
        return 1 + sum(_literal_size(v, seen) for v in node.value)
    return 1


def _refuse_duplicate_keys(
    node: yaml.Node, path: Path, error: type[FairauditError], what: str, seen: set[int] | None = None
) -> None:
    """A key given twice in one mapping silently drops the first value in YAML loaders: refuse it."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in keys:
                    raise error(
                        f"{what} file {path}, line {key.start_mark.line + 1}: key '{one_paragraph(key.value)[:80]}' is "
                        f"given twice in one mapping (first on line {keys[key.value]}); YAML would keep only the last. "
                        f"Merge the two."
                    )
                keys[key.value] = key.start_mark.line + 1
            _refuse_duplicate_keys(value, path, error, what, seen)
    elif isinstance(node, yaml.SequenceNode):
        for value in node.value:
            _refuse_duplicate_keys(value, path, error, what, seen)


def read_yaml(path: str | Path, error: type[FairauditError], what: str) -> YamlDocument:
    """Read one YAML file safely; raise `error` with a one-paragraph message on any problem.

    `what` names the kind of file in messages ("suite", "run config").
    """
    path = Path(path)
    raw = read_capped(path, MAX_FILE_BYTES, error, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise error(f"{what} file {path}, line {line}: not valid UTF-8 (byte {exc.start}). Save it as UTF-8.") from None
    if "\x00" in text:
        raise error(f"{what} file {path} contains NUL bytes; it is not a text file.")
    try:
        root = yaml.compose(text, Loader=LOADER)
        if root is not None:
            _refuse_duplicate_keys(root, path, error, what)
        limit = max(MAX_EXPANDED_NODES, EXPANSION_FACTOR * _literal_size(root)) if root is not None else 0
        if root is not None and _expanded_size(root, {}, limit) > limit:
            raise error(
                f"{what} file {path}: its anchors and aliases expand to more than {limit:,} "
                f"values; refusing it (this is the shape of a YAML 'billion laughs' attack)."
            )
        data = yaml.load(text, Loader=LOADER) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        if isinstance(exc, yaml.constructor.ConstructorError):
            problem += (
                "; only plain data (mappings, lists, strings, numbers) is read, tags that build objects are refused"
            )
        elif "\t" in text and "tab" in problem:
            problem += "; YAML does not allow tabs for indentation, use spaces"
        raise error(f"{what} file {path}{where}: invalid YAML: {problem}.") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} file {path}: invalid YAML: {' '.join(str(exc).split())}.") from None
    except RecursionError:
        raise error(f"{what} file {path}: nesting too deep to be a {what}.") from None
    return YamlDocument(path=path, data=data, root=root)


def describe_validation_error(document: YamlDocument, exc: ValidationError, what: str) -> str:
    """One paragraph naming the file, the first failing field, its line and what was expected."""
    errors = exc.errors()  # pydantic.ValidationError
    problems = []
    for err in errors[:3]:
        location = tuple(err["loc"])
        field = ".".join(str(part) for part in location) or "(top level)"
        line = document.line_of(location)
        where = f"line {line}, " if line else ""
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (check its spelling; see the schema in README.md)"
        problems.append(f"{where}field '{field}': {message}")
    more = f" (and {len(errors) - 3} more problems)" if len(errors) > 3 else ""
    return f"{what} file {document.path}: " + "; ".join(problems) + more + "."


def read_model(
    path: str | Path, model: type[BaseModel], error: type[FairauditError], what: str, keys: str
) -> tuple[YamlDocument, Any]:
    """Read a YAML mapping into the pydantic `model`; every error names the file and, where
    it can, the field and the line. `keys` lists the expected keys for the message."""
    from pydantic import ValidationError

    document = read_yaml(path, error, what)
    if not isinstance(document.data, dict):
        raise error(f"{what} file {document.path}: expected a mapping with keys {keys}.")
    try:
        return document, model.model_validate(document.data)
    except ValidationError as exc:
        raise error(describe_validation_error(document, exc, what)) from None


def finite(value: Any) -> Any:
    """`value` with NaN and infinities as None: strict JSON has no NaN (docs: "--json output")."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def strict_json(value: Any) -> str:
    """Strict JSON (indented): NaN and infinities become null, other objects their `str`."""
    return json.dumps(finite(value), indent=2, default=str, allow_nan=False)
