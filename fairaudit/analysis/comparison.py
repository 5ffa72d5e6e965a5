"""The `fairaudit overlap` command's work: the overlap of each axis' top neurons across axes
(per model) and across two models, by index and through a neuron matching
(`fairaudit.analysis.matching`), written as tables and figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from fairaudit.analysis.matching import MatchedComparison
from fairaudit.analysis.overlap import ModelScores, axis_overlap, load_scores, map_to_original, model_overlap
from fairaudit.errors import StoreError


@dataclass
class OverlapRun:
    """What `run` computed and wrote: each model's scores, the tables (by file stem), the matched
    comparison of two models (with `match_corpus`), and the files written."""

    scores: list[ModelScores]
    tables: dict[str, pa.Table]
    compared: Any
    written: list[Path]


def run(
    store_path: Path,
    models: tuple[str, ...] | list[str],
    runs: tuple[str, ...] | list[str],
    top: float,
    score: str,
    out: Path,
    match_corpus: str | None = None,
    permutations: int = 2000,
    max_words: int = 5000,
    baselines: bool = False,
    granted: frozenset[str] = frozenset(),
) -> OverlapRun:
    """`fairaudit overlap`: the overlap of each axis' top neurons across axes (per model) and, with
    two models, across models (by index, and through a neuron matching on `match_corpus`);
    tables written to `out` (Parquet and CSV), figures beside them."""
    from fairaudit.inputs.model import stored_name
    from fairaudit.store import Store, atomic_write_text, write_tables

    if not Path(store_path).is_dir():
        raise StoreError(f"{store_path} is not a store folder (it does not exist).")
    store = Store(store_path)
    scores = [
        load_scores(store, stored_name(model), score, runs[i] if runs else None) for i, model in enumerate(models)
    ]
    tables: dict[str, pa.Table] = {}
    for model_scores in scores:
        result = axis_overlap(model_scores, top)
        name = model_scores.model
        tables.update(
            {
                f"{name}.axis_pairs": result.pairs,
                f"{name}.per_layer": result.per_layer,
                f"{name}.shared_neurons": result.shared,
            }
        )
    if len(scores) == 2:
        width = max(values.shape[1] for model_scores in scores for values in model_scores.by_axis.values())
        mapped = [map_to_original(store, model_scores, width) for model_scores in scores]
        tables["models"] = model_overlap(mapped[0], mapped[1], top)
    compared = None
    if match_corpus is not None:
        from fairaudit.analysis.matching import compare_models

        compared = compare_models(
            store, scores[0], scores[1], match_corpus, top, permutations, max_words, granted, baselines
        )
        tables["matched_overlap"] = pa.Table.from_pylist(
            [{k: v for k, v in o.__dict__.items() if k != "mapped"} for o in compared.overlaps]
        )
        tables["neuron_matching"] = pa.Table.from_pylist(compared.matching.rows())
        if compared.random_overlaps:
            tables["matched_overlap_random_models"] = pa.Table.from_pylist(
                [{k: v for k, v in o.__dict__.items() if k != "mapped"} for o in compared.random_overlaps]
            )
    written = write_tables(out, tables)
    if compared is not None:
        for name, svg in figures(compared, scores[0].model, scores[1].model).items():
            atomic_write_text(Path(out) / f"{name}.svg", svg)
            written.append(Path(out) / f"{name}.svg")
    return OverlapRun(scores=scores, tables=tables, compared=compared, written=written)


def figures(comparison: MatchedComparison, model_a: str, model_b: str) -> dict[str, str]:
    """SVG figures of a matched comparison: observed vs null overlap per axis, and the layer
    alignment over the layer-pair scores."""
    from fairaudit.svg import bar_chart, matrix_heatmap

    names = [overlap.name for overlap in comparison.overlaps]
    series: dict[str, list[float | None]] = {
        "matched overlap": [float(o.overlap) for o in comparison.overlaps],
        "null mean": [o.null_mean for o in comparison.overlaps],
    }
    if comparison.random_overlaps:
        series["random models"] = [float(o.overlap) for o in comparison.random_overlaps]
    scores = comparison.matching.layer_scores
    return {
        "matched_overlap": str(
            bar_chart(f"{model_a} top neurons mapped into {model_b}'s top neurons", names, series, "axis", "neurons")
        ),
        "layer_alignment": str(
            matrix_heatmap(
                f"layer-pair scores, {model_a} (rows) x {model_b} (columns)",
                [f"{a}" for a in range(scores.shape[0])],
                [f"{b}" for b in range(scores.shape[1])],
                scores.tolist(),
                [False] * scores.shape[1],
                f"alignment (row -> column): {comparison.matching.alignment}",
                f"layer of {model_b}",
                f"layer of {model_a}",
                scale_label="layer-pair score:",
            )
        ),
    }
