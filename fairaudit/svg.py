"""Inline SVG charts for the report: no JavaScript, no network, every text escaped.

Text is laid out so that nothing is clipped: titles and captions wrap to the figure's width
(estimated from the font size), long labels are shortened with "…" (the full text stays in
the element's tooltip), legends sit on their own row under the title, and every colour
encoding has a numeric scale."""

from __future__ import annotations

import math
import textwrap

from markupsafe import Markup, escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948")
CHAR_WIDTH = 0.6  # average glyph width in em of the sans-serif fonts used: an estimate that errs wide


def _number(value: float) -> str:
    return f"{value:.3g}" if value and abs(value) < 1e-2 else f"{value:.3f}".rstrip("0").rstrip(".")


def _fit(text: str, limit: int) -> str:
    """`text` shortened to `limit` characters with a trailing ellipsis."""
    return text if len(text) <= limit else text[: max(limit - 1, 1)] + "…"


def _wrapped(text: str, x: float, y: float, width: float, size: int = 11, bold: bool = False) -> tuple[str, float]:
    """`text` as lines no wider than `width` px from baseline `y`: (SVG, y below the last line)."""
    lines = textwrap.wrap(text, max(int(width / (size * CHAR_WIDTH)), 10)) or [""]
    weight = ' font-weight="bold"' if bold else ""
    step = size * 1.3
    svg = "".join(
        f'<text x="{x:.1f}" y="{y + index * step:.1f}" font-size="{size}"{weight}>{escape(line)}</text>'
        for index, line in enumerate(lines)
    )
    return svg, y + (len(lines) - 1) * step + step


def _legend(names: list[str], x: float, y: float, width: float, marker: str = "rect") -> tuple[str, float]:
    """Legend entries left to right from (x, y), wrapping to new rows within `width`: (SVG, y below)."""
    parts, cursor, row = [], x, y
    for index, name in enumerate(names):
        label = _fit(name, 40)
        span = 22 + len(label) * 11 * CHAR_WIDTH
        if cursor > x and cursor + span > x + width:
            cursor, row = x, row + 18
        colour = PALETTE[index % len(PALETTE)]
        shape = (
            f'<circle cx="{cursor + 6:.1f}" cy="{row - 4:.1f}" r="5" fill="{colour}"/>'
            if marker == "circle"
            else f'<rect x="{cursor:.1f}" y="{row - 10:.1f}" width="12" height="12" fill="{colour}"/>'
        )
        parts.append(
            f'{shape}<text x="{cursor + 16:.1f}" y="{row:.1f}" font-size="11">{escape(label)}<title>{escape(name)}</title></text>'
        )
        cursor += span + 12
    return "".join(parts), row + 12


def _scale(x: float, y: float, low: float, high: float, colour, label: str) -> str:
    """A numeric colour scale: ten swatches from `low` to `high` with their values written at both ends."""
    parts = [f'<text x="{x:.1f}" y="{y + 11:.1f}" font-size="10">{escape(label)}</text>']
    start = x + len(label) * 10 * CHAR_WIDTH + 8
    parts.append(f'<text x="{start:.1f}" y="{y + 11:.1f}" font-size="10">{escape(_number(low))}</text>')
    start += len(_number(low)) * 10 * CHAR_WIDTH + 4
    for step in range(10):
        parts.append(f'<rect x="{start + step * 14:.1f}" y="{y}" width="14" height="12" fill="{colour(step / 9)}"/>')
    parts.append(f'<text x="{start + 144:.1f}" y="{y + 11:.1f}" font-size="10">{escape(_number(high))}</text>')
    return "".join(parts)


def _open(title: str, width: float, height: float, fixed_width: bool = False) -> str:
    shown = f"{min(width, 720):.0f}" if fixed_width else "100%"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" width="{shown}" role="img" '
        f'aria-label="{escape(title)}" class="chart">'
    )


def bar_chart(
    title: str,
    categories: list[str],
    series: dict[str, list[float | None]],
    x_label: str,
    y_label: str,
    intervals: dict[str, list[tuple[float, float] | None]] | None = None,
) -> Markup:
    """Grouped bars: one group per category (e.g. layer), one bar per series (e.g. before/after);
    `intervals[series][i]` (low, high) draws an error bar on that bar."""
    intervals = intervals or {}
    width, left, right, plot_height, bottom = 720, 64, 16, 192, 48
    plot_width = width - left - right
    head, below = _wrapped(title, 8, 22, width - 16, 14, bold=True)
    legend, top = _legend(list(series), left, below + 4, plot_width)
    top += 8
    values = [v for column in series.values() for v in column if v is not None and not math.isnan(v)]
    values += [
        high
        for column in intervals.values()
        for bounds in column
        if bounds
        for high in bounds[1:]
        if not math.isnan(high)
    ]
    peak = max(values) if values else 1.0
    peak = peak if peak > 0 else 1.0
    group = plot_width / max(len(categories), 1)
    bar = group * 0.8 / max(len(series), 1)
    height = top + plot_height + bottom
    parts = [
        head,
        legend,
        f'<line x1="{left}" y1="{top + plot_height}" x2="{width - right}" y2="{top + plot_height}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_height}" stroke="#333"/>',
    ]
    to_y = lambda value: top + plot_height - plot_height * max(value, 0) / peak  # noqa: E731
    for tick in range(5):
        value = peak * tick / 4
        parts.append(
            f'<line x1="{left - 4}" y1="{to_y(value):.1f}" x2="{width - right}" y2="{to_y(value):.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{to_y(value) + 4:.1f}" font-size="10" text-anchor="end">{escape(_number(value))}</text>'
        )
    for index, category in enumerate(categories):
        x0 = left + index * group + group * 0.1
        for offset, (name, column) in enumerate(series.items()):
            found = column[index] if index < len(column) else None
            if found is None or math.isnan(found):  # a missing value: no bar
                continue
            value = found
            column_bounds = intervals.get(name) or []
            bounds = column_bounds[index] if index < len(column_bounds) else None
            note = f" [{_number(bounds[0])}, {_number(bounds[1])}]" if bounds else ""
            parts.append(
                f'<rect x="{x0 + offset * bar:.1f}" y="{to_y(value):.1f}" width="{bar:.1f}" '
                f'height="{top + plot_height - to_y(value):.1f}" fill="{PALETTE[offset % len(PALETTE)]}"><title>{escape(name)}, '
                f"{escape(category)}: {escape(_number(value))}{escape(note)}</title></rect>"
            )
            if bounds and not any(math.isnan(b) for b in bounds):
                middle = x0 + offset * bar + bar / 2
                cap = min(bar / 4, 4)
                parts.append(
                    f'<path d="M{middle:.1f} {to_y(bounds[0]):.1f}V{to_y(bounds[1]):.1f}M{middle - cap:.1f} {to_y(bounds[0]):.1f}'
                    f'H{middle + cap:.1f}M{middle - cap:.1f} {to_y(bounds[1]):.1f}H{middle + cap:.1f}" stroke="#222" fill="none"/>'
                )
        if len(categories) <= 40 or index % max(len(categories) // 20, 1) == 0:
            label = _fit(category, max(int(group / (10 * CHAR_WIDTH)), 3)) if len(categories) > 1 else category
            parts.append(
                f'<text x="{x0 + group * 0.4:.1f}" y="{top + plot_height + 14}" font-size="10" '
                f'text-anchor="middle">{escape(label)}<title>{escape(category)}</title></text>'
            )
    axis_note = f"{x_label}; bars show 95% intervals" if any(any(column) for column in intervals.values()) else x_label
    parts.append(
        f'<text x="{left + plot_width / 2:.1f}" y="{height - 8}" font-size="11" text-anchor="middle">{escape(axis_note)}</text>'
    )
    parts.append(
        f'<text x="14" y="{top + plot_height / 2:.1f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_height / 2:.1f})">{escape(y_label)}</text>'
    )
    return Markup(_open(title, width, height) + "".join(parts) + "</svg>")


def _blues(share: float) -> str:
    return f"rgb({int(255 - 180 * share)},{int(255 - 140 * share)},{int(255 - 60 * share)})"


def _reds(share: float) -> str:
    return f"rgb({int(255 - 30 * share)},{int(255 - 200 * share)},{int(255 - 200 * share)})"


def heatmap(
    title: str,
    labels: list[str],
    values: list[list[float | None]],
    notes: list[list[str]],
    scale_label: str = "colour:",
) -> Markup:
    """A square matrix (e.g. axis x axis overlap / expected); darker = larger, with a numeric
    colour scale; `notes` printed in cells."""
    cell, left = 92, 110
    size = len(labels)
    width = max(left + cell * size + 16, 420)
    head, top = _wrapped(title, 8, 22, width - 16, 14, bold=True)
    top += 6
    finite = [v for row in values for v in row if v is not None and not math.isnan(v)]
    peak = max(finite) if finite else 1.0
    parts = [head]
    for row, label in enumerate(labels):
        parts.append(
            f'<text x="{left - 6}" y="{top + row * cell + cell / 2 + 4:.1f}" font-size="11" text-anchor="end">'
            f"{escape(_fit(label, 17))}<title>{escape(label)}</title></text>"
        )
        parts.append(
            f'<text x="{left + row * cell + cell / 2:.1f}" y="{top + size * cell + 12}" font-size="11" '
            f'text-anchor="middle">{escape(_fit(label, 14))}<title>{escape(label)}</title></text>'
        )
        for column in range(size):
            value = values[row][column]
            shade = 0.0 if value is None or math.isnan(value) or peak <= 0 else min(value / peak, 1.0)
            parts.append(
                f'<rect x="{left + column * cell}" y="{top + row * cell}" width="{cell - 2}" height="{cell - 2}" fill="{_blues(shade)}">'
                f"<title>{escape(labels[row])} x {escape(labels[column])}: {escape(notes[row][column])}</title></rect>"
            )
            for line, text in enumerate(notes[row][column].split("\n")):
                parts.append(
                    f'<text x="{left + column * cell + cell / 2 - 1:.1f}" y="{top + row * cell + 30 + line * 14}" '
                    f'font-size="10" text-anchor="middle">{escape(_fit(text, 15))}</text>'
                )
    scale_y = top + size * cell + 24
    parts.append(_scale(8, scale_y, 0.0, peak if finite else 0.0, _blues, scale_label))
    return Markup(_open(title, width, scale_y + 20, fixed_width=True) + "".join(parts) + "</svg>")


def matrix_heatmap(
    title: str,
    row_labels: list[str],
    column_labels: list[str],
    values: list[list[float]],
    highlight: list[bool],
    caption: str,
    x_label: str,
    y_label: str,
    scale_label: str = "value:",
) -> Markup:
    """Rows (e.g. layers) x columns (e.g. tokens); darker = larger, with a numeric colour scale;
    highlighted columns (e.g. substituted words) have bold, underlined labels."""
    cell_width, cell_height, left = 44, 18, 70
    width = max(left + cell_width * len(column_labels) + 20, 720)
    head, top = _wrapped(title, 8, 22, width - 16, 14, bold=True)
    top += 6
    shown = [_fit(label, 16) for label in column_labels]
    finite = [v for row in values for v in row if not math.isnan(v)]
    peak = max(finite) if finite and max(finite) > 0 else 1.0
    parts = [head]
    for row, label in enumerate(row_labels):
        y = top + row * cell_height
        parts.append(
            f'<text x="{left - 6}" y="{y + 13}" font-size="10" text-anchor="end">{escape(_fit(label, 11))}</text>'
        )
        for column, value in enumerate(values[row]):
            shade = 0.0 if math.isnan(value) else min(value / peak, 1.0)
            parts.append(
                f'<rect x="{left + column * cell_width}" y="{y}" width="{cell_width - 1}" height="{cell_height - 1}" '
                f'fill="{_reds(shade)}"><title>{escape(label)}, {escape(column_labels[column])}: {escape(_number(value))}</title></rect>'
            )
    base = top + len(row_labels) * cell_height + 6
    for column, label in enumerate(shown):
        x = left + column * cell_width + cell_width / 2
        style = ' font-weight="bold" text-decoration="underline"' if highlight[column] else ""
        parts.append(
            f'<text x="{x:.1f}" y="{base}" font-size="10" text-anchor="end" transform="rotate(-50 {x:.1f} {base})"{style}>'
            f"{escape(label)}<title>{escape(column_labels[column])}</title></text>"
        )
    # a rotated label reaches down by its length x sin(50 degrees)
    below = base + max((len(label) for label in shown), default=1) * 10 * CHAR_WIDTH * 0.77 + 18
    label_svg, below = _wrapped(x_label, left, below, width - left - 8)
    caption_svg, below = _wrapped(caption, left, below, width - left - 8)
    parts += [label_svg, caption_svg, _scale(left, below - 4, 0.0, peak if finite else 0.0, _reds, scale_label)]
    parts.append(
        f'<text x="12" y="{top + len(row_labels) * cell_height / 2:.1f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + len(row_labels) * cell_height / 2:.1f})">{escape(y_label)}</text>'
    )
    return Markup(_open(title, width, below + 18) + "".join(parts) + "</svg>")


def scatter(
    title: str,
    points: list[tuple[float, float]],
    labels: list[str],
    groups: list[str],
    highlight: list[bool],
    x_label: str,
    y_label: str,
    caption: str,
) -> Markup:
    """Labelled points coloured by group (e.g. prompt a / prompt b), highlighted ones ringed."""
    width, left, right, plot_height = 720, 72, 20, 310
    names = list(dict.fromkeys(groups))
    head, below = _wrapped(title, 8, 22, width - 16, 14, bold=True)
    legend, top = _legend(names, left, below + 4, width - left - right, marker="circle")
    top += 8
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_low, x_high = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y_low, y_high = (min(ys), max(ys)) if ys else (0.0, 1.0)
    span_x, span_y = (x_high - x_low) or 1.0, (y_high - y_low) or 1.0
    to_x = lambda v: left + (v - x_low) / span_x * (width - left - right)  # noqa: E731
    to_y = lambda v: top + (y_high - v) / span_y * plot_height  # noqa: E731
    parts = [
        head,
        legend,
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{plot_height}" fill="none" stroke="#999"/>',
    ]
    for (x, y), label, group, marked in zip(points, labels, groups, highlight):
        colour = PALETTE[names.index(group) % len(PALETTE)]
        ring = ' stroke="#000" stroke-width="2"' if marked else ""
        weight = ' font-weight="bold"' if marked else ""
        anchor = (
            ' text-anchor="end"' if to_x(x) > width - right - 90 else ""
        )  # labels near the right edge grow leftwards
        shift = -6 if anchor else 6
        parts.append(
            f'<circle cx="{to_x(x):.1f}" cy="{to_y(y):.1f}" r="5" fill="{colour}"{ring}><title>{escape(group)}: '
            f'{escape(label)}</title></circle><text x="{to_x(x) + shift:.1f}" y="{to_y(y) - 4:.1f}" font-size="10"'
            f"{weight}{anchor}>{escape(_fit(label, 16))}</text>"
        )
    for value in (x_low, x_high):  # the range of each axis, so a reader can read values off the plot
        parts.append(
            f'<text x="{to_x(value):.1f}" y="{top + plot_height + 14}" font-size="10" text-anchor="middle">'
            f"{escape(_number(value))}</text>"
        )
    for value in (y_low, y_high):
        parts.append(
            f'<text x="{left - 4}" y="{to_y(value) + 4:.1f}" font-size="10" text-anchor="end">{escape(_number(value))}</text>'
        )
    parts.append(
        f'<text x="{left + (width - left - right) / 2:.1f}" y="{top + plot_height + 30}" font-size="11" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    parts.append(
        f'<text x="14" y="{top + plot_height / 2:.1f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_height / 2:.1f})">{escape(y_label)}</text>'
    )
    caption_svg, below = _wrapped(caption, left, top + plot_height + 50, width - left - 8)
    parts.append(caption_svg)
    return Markup(_open(title, width, below + 4) + "".join(parts) + "</svg>")
