"""Where the data shipped with fairaudit lives (built-in suites, report templates).

In a wheel they are the package-data folders `fairaudit/suites` and
`fairaudit/reports_templates`; in an editable install or a source checkout they are the
top-level folders `suites/` and `reports_templates/` next to `fairaudit/`.
"""

import importlib.util
from pathlib import Path


def _data_dir(name: str) -> Path:
    """The folder itself: the data folders hold no __init__.py, so they import as namespace
    packages, whose `resources.files` is not a plain path on every Python (3.12: a MultiplexedPath)."""
    try:
        spec = importlib.util.find_spec(f"fairaudit.{name}")
    except ModuleNotFoundError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / name


def suites_dir() -> Path:
    """Folder of the built-in suite YAML files."""
    return _data_dir("suites")


def policies_dir() -> Path:
    """Folder of the built-in policy YAML files."""
    return _data_dir("policies")


def templates_dir() -> Path:
    """Folder of the Jinja templates of the HTML report."""
    return _data_dir("reports_templates")


def data_dir() -> Path:
    """Folder of fairaudit's bundled data: the perplexity corpus and local lm-eval tasks."""
    return Path(__file__).resolve().parent / "data"


def corpus_path() -> Path:
    """The bundled corpus: perplexity, the causal planner's quality slices, mean-ablation."""
    return data_dir() / "corpus.txt"


def corpus_sentences(count: int) -> list[str]:
    """The first `count` sentences (five words or more) of the bundled corpus: the text that
    embedding fidelity compares and that mean-ablation averages over."""
    text = corpus_path().read_text(encoding="utf-8")
    return [s.strip() + "." for s in text.replace("\n", " ").split(". ") if len(s.split()) >= 5][:count]
