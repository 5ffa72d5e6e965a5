"""The report's inline charts: no text leaves its figure (titles and captions wrap, long labels
are shortened with the full text kept as a tooltip), legends do not sit on titles, colour
encodings carry a numeric scale, and bars carry their intervals."""

from __future__ import annotations

import re

from fairaudit.svg import CHAR_WIDTH, bar_chart, heatmap, matrix_heatmap, scatter

LONG = (
    "a title long enough to run past the right edge of a seven-hundred-pixel figure if it were drawn on one line " * 2
)


def _boxes(svg: str) -> tuple[float, float, list[tuple[float, float, float, float, str]]]:
    """viewBox width and height, and (left, right, top, bottom, text) of each unrotated text, estimated from its font size."""
    width, height = map(float, re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg).groups())
    boxes = []
    for attributes, content in re.findall(r"<text ([^>]*)>([^<]*)", svg):
        if "rotate" in attributes:
            continue
        x, y = float(re.search(r'\bx="([-\d.]+)"', attributes)[1]), float(re.search(r'\by="([-\d.]+)"', attributes)[1])
        size = float(re.search(r'font-size="([\d.]+)"', attributes)[1])
        text = re.sub(r"&[a-z#0-9]+;", "x", content)
        span = len(text) * size * CHAR_WIDTH
        anchor = re.search(r'text-anchor="(\w+)"', attributes)
        left = x - span if anchor and anchor[1] == "end" else x - span / 2 if anchor and anchor[1] == "middle" else x
        boxes.append((left, left + span, y - size, y + size * 0.25, text))
    return width, height, boxes


def _assert_inside(svg) -> None:
    width, height, boxes = _boxes(str(svg))
    for left, right, top, bottom, text in boxes:
        assert left >= -1 and right <= width + 1 and top >= -1 and bottom <= height + 1, f"{text!r} leaves the figure"


def _assert_no_overlap(svg, first: str, second: str) -> None:
    _, _, boxes = _boxes(str(svg))
    a = next(box for box in boxes if box[4].startswith(first))
    b = next(box for box in boxes if box[4].startswith(second))
    assert a[1] <= b[0] or b[1] <= a[0] or a[3] <= b[2] or b[3] <= a[2], f"{first!r} overlaps {second!r}"


def test_bar_chart_wraps_its_title_keeps_the_legend_clear_and_draws_intervals():
    svg = bar_chart(
        LONG,
        ["0", "1"],
        {"before pruning": [1.0, 2.0], "after pruning": [0.5, 1.5]},
        "layer",
        "divergence",
        {"before pruning": [(0.8, 1.2), (1.7, 2.4)]},
    )
    _assert_inside(svg)
    _assert_no_overlap(svg, "a title", "before pruning")
    assert str(svg).count("<path") == 2 and "[0.8, 1.2]" in str(svg) and "bars show 95% intervals" in str(svg)
    assert ">2.4<" in str(svg), "the scale reaches the top of the highest interval"


def test_matrix_heatmap_fits_long_captions_and_tokens_and_has_a_numeric_scale():
    tokens = ["When", "an", "extraordinarily-long-token-text", "thought"]
    svg = str(
        matrix_heatmap(
            LONG,
            ["layer 0", "layer 1"],
            tokens,
            [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.25]],
            [False, True, False, False],
            caption=LONG,
            x_label="token of prompt a",
            y_label="layer",
            scale_label="mean |difference|:",
        )
    )
    _assert_inside(svg)
    assert "extraordinarily…" in svg and "<title>extraordinarily-long-token-text</title>" in svg
    assert "mean |difference|:" in svg and ">0<" in svg and ">0.7<" in svg, "the colour scale runs from 0 to the peak"
    _, height, _ = _boxes(svg)
    rotated = [float(y) for y in re.findall(r"rotate\(-50 [\d.]+ ([\d.]+)\)", svg)]
    assert max(rotated) + len("extraordinarily…") * 10 * CHAR_WIDTH * 0.77 < height


def test_overlap_heatmap_has_a_numeric_scale():
    svg = str(
        heatmap(
            "overlap",
            ["race", "gender"],
            [[None, 2.5], [2.5, None]],
            [["race", "3"], ["3", "gender"]],
            scale_label="observed / expected:",
        )
    )
    _assert_inside(svg)
    assert "observed / expected:" in svg and ">2.5<" in svg


def test_scatter_legend_sits_under_its_title_and_labels_stay_inside():
    points = [(0.0, 0.0), (1.0, 1.0), (0.99, 0.5)]
    svg = scatter(
        LONG,
        points,
        ["When", "an-extraordinarily-long-label", "thought"],
        ["a: asian", "b: white", "b: white"],
        [False, True, False],
        "PC1",
        "PC2",
        caption=LONG,
    )
    _assert_inside(svg)
    _assert_no_overlap(svg, "a title", "a: asian")
