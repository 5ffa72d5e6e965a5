"""The package's house rules, as a test: modules and functions of a readable size, and imports
that only point down the layers drawn in docs/design.md (no cycles, no upward arrows)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "fairaudit"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

# Lower layers never import higher ones; packages of one layer do not import each other, except the
# foundation modules (layer 0), which may import one another as long as there is no cycle.
LAYERS = [
    {"errors", "lazy", "names", "escaping", "resources", "yamlio", "svg", "hookspecs", "plugins", "config", "compute"},
    {"inputs"},
    {"measurement"},
    {"store", "testing"},
    {"analysis", "repair"},
    {"compliance"},
    {"reporting"},
    {"pipeline"},
    {"cli", "__main__", "__init__"},
]
LAYER = {name: index for index, names in enumerate(LAYERS) for name in names}


def modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts): path for path in sorted(PACKAGE.rglob("*.py"))
    }


def unit(module: str) -> str:
    """The layer unit of a module: its sub-package, or the module itself at the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, module: str) -> set[str]:
    """Every fairaudit module `path` imports, at module level or inside a function."""
    found = set()
    known = modules()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("fairaudit.")}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] == "fairaudit"
            and node.level == 0
        ):
            for alias in node.names:  # `from fairaudit.x import y`: y may be a module itself
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return {name for name in found if name in known and name != module and name != "fairaudit"}


def sized_modules() -> dict[str, Path]:
    """The package's modules and the built-in plugins' (they follow the same size rules)."""
    plugins = {f"fairaudit_plugins.{path.stem}": path for path in sorted((PACKAGE.parent / "plugins").glob("*.py"))}
    return {**modules(), **plugins}


def test_no_module_over_500_lines_and_no_function_over_80():
    long_modules = {
        name: n
        for name, path in sized_modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    long_functions = []
    for name, path in sized_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
            ):
                long_functions.append(f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long_modules == {} and long_functions == [], (long_modules, long_functions)


def test_imports_point_down_the_layers_and_have_no_cycles():
    graph = {name: imports(path, name) for name, path in modules().items()}
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if unit(name) != unit(target)
        and unit(name) != "__init__"
        and (LAYER[unit(target)] > LAYER[unit(name)] or LAYER[unit(target)] == LAYER[unit(name)] != 0)
    )
    assert upward == [], upward
    visiting, done, cycles = set(), set(), []

    def visit(name: str, trail: list[str]) -> None:
        if name in done:
            return
        if name in visiting:
            cycles.append(" -> ".join(trail[trail.index(name) :] + [name]))
            return
        visiting.add(name)
        for target in sorted(graph[name]):
            visit(target, trail + [name])
        visiting.discard(name)
        done.add(name)

    for name in graph:
        visit(name, [])
    assert cycles == [], cycles


def test_every_layer_unit_is_placed():
    assert {unit(name) for name in modules()} <= set(LAYER), {unit(name) for name in modules()} - set(LAYER)


def test_the_type_checker_catches_a_wrong_field_name_in_a_typed_setting(tmp_path):
    """`make lint` runs mypy with the pydantic plugin: a misspelt setting fails it."""
    import shutil
    import subprocess
    import sys

    import pytest

    if shutil.which("mypy", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mypy is not installed (it comes with the test extras)")
    source = tmp_path / "typo.py"
    source.write_text(
        "from fairaudit.config import RunConfig\n\n\ndef guard(config: RunConfig) -> float:\n"
        "    assert config.pruning is not None and config.pruning.causal is not None\n"
        "    return config.pruning.causal.gaurd\n"
    )
    root = PACKAGE.parent
    found = subprocess.run(
        [
            str(Path(sys.executable).parent / "mypy"),
            "--config-file",
            str(root / "pyproject.toml"),
            "--cache-dir",
            str(root / ".mypy_cache"),
            str(source),
        ],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert found.returncode == 1 and '"CausalParams" has no attribute "gaurd"' in found.stdout, found.stdout
