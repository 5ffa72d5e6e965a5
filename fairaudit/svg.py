"""Inline SVG charts for the report: no JavaScript, no network, every text escaped."""

from __future__ import annotations

import math

from markupsafe import Markup, escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948")


def _number(value: float) -> str:
    return f"{value:.3g}" if value and abs(value) < 1e-2 else f"{value:.3f}".rstrip("0").rstrip(".")


def bar_chart(title: str, categories: list[str], series: dict[str, list[float]], x_label: str, y_label: str) -> Markup:
    """Grouped bars: one group per category (e.g. layer), one bar per series (e.g. before/after)."""
    width, height, left, right, top, bottom = 720, 280, 64, 16, 40, 48
    plot_width, plot_height = width - left - right, height - top - bottom
    values = [v for column in series.values() for v in column if v is not None and not math.isnan(v)]
    peak = max(values) if values else 1.0
    peak = peak if peak > 0 else 1.0
    group = plot_width / max(len(categories), 1)
    bar = group * 0.8 / max(len(series), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="{escape(title)}" class="chart">',
             f'<text x="{left}" y="22" font-size="14" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{left}" y1="{top + plot_height}" x2="{width - right}" y2="{top + plot_height}" stroke="#333"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_height}" stroke="#333"/>']
    for tick in range(5):
        value = peak * tick / 4
        y = top + plot_height - plot_height * tick / 4
        parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{escape(_number(value))}</text>')
    for index, category in enumerate(categories):
        x0 = left + index * group + group * 0.1
        for offset, (name, column) in enumerate(series.items()):
            value = column[index] if index < len(column) else None
            if value is None or math.isnan(value):
                continue
            bar_height = plot_height * max(value, 0) / peak
            parts.append(f'<rect x="{x0 + offset * bar:.1f}" y="{top + plot_height - bar_height:.1f}" width="{bar:.1f}" '
                         f'height="{bar_height:.1f}" fill="{PALETTE[offset % len(PALETTE)]}"><title>{escape(name)}, '
                         f'{escape(category)}: {escape(_number(value))}</title></rect>')
        if len(categories) <= 40 or index % max(len(categories) // 20, 1) == 0:
            parts.append(f'<text x="{x0 + group * 0.4:.1f}" y="{top + plot_height + 14}" font-size="10" '
                         f'text-anchor="middle">{escape(category)}</text>')
    parts.append(f'<text x="{left + plot_width / 2:.1f}" y="{height - 8}" font-size="11" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text x="14" y="{top + plot_height / 2:.1f}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + plot_height / 2:.1f})">{escape(y_label)}</text>')
    for offset, name in enumerate(series):
        x = width - right - 150 * (len(series) - offset)
        parts.append(f'<rect x="{x}" y="10" width="12" height="12" fill="{PALETTE[offset % len(PALETTE)]}"/>'
                     f'<text x="{x + 16}" y="20" font-size="11">{escape(name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def heatmap(title: str, labels: list[str], values: list[list[float | None]], notes: list[list[str]]) -> Markup:
    """A square matrix (e.g. axis x axis overlap / expected); darker = larger; `notes` printed in cells."""
    cell, left, top = 92, 110, 40
    size = len(labels)
    width, height = left + cell * size + 16, top + cell * size + 16
    finite = [v for row in values for v in row if v is not None and not math.isnan(v)]
    peak = max(finite) if finite else 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{min(width, 720)}" role="img" '
             f'aria-label="{escape(title)}" class="chart">',
             f'<text x="8" y="22" font-size="14" font-weight="bold">{escape(title)}</text>']
    for row, label in enumerate(labels):
        parts.append(f'<text x="{left - 6}" y="{top + row * cell + cell / 2 + 4:.1f}" font-size="11" text-anchor="end">{escape(label)}</text>')
        parts.append(f'<text x="{left + row * cell + cell / 2:.1f}" y="{top + size * cell + 12}" font-size="11" '
                     f'text-anchor="middle">{escape(label)}</text>')
        for column in range(size):
            value = values[row][column]
            shade = 0.0 if value is None or math.isnan(value) or peak <= 0 else min(value / peak, 1.0)
            fill = f"rgb({int(255 - 180 * shade)},{int(255 - 140 * shade)},{int(255 - 60 * shade)})"
            parts.append(f'<rect x="{left + column * cell}" y="{top + row * cell}" width="{cell - 2}" height="{cell - 2}" fill="{fill}">'
                         f'<title>{escape(labels[row])} x {escape(labels[column])}: {escape(notes[row][column])}</title></rect>')
            for line, text in enumerate(notes[row][column].split("\n")):
                parts.append(f'<text x="{left + column * cell + cell / 2 - 1:.1f}" y="{top + row * cell + 30 + line * 14}" '
                             f'font-size="10" text-anchor="middle">{escape(text)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def matrix_heatmap(title: str, row_labels: list[str], column_labels: list[str], values: list[list[float]],
                   highlight: list[bool], caption: str, x_label: str, y_label: str) -> Markup:
    """Rows (e.g. layers) x columns (e.g. tokens); darker = larger; highlighted columns (the
    substituted words) have bold, underlined labels."""
    cell_width, cell_height, left, top = 44, 18, 70, 40
    width = left + cell_width * len(column_labels) + 20
    height = top + cell_height * len(row_labels) + 110
    finite = [v for row in values for v in row if not math.isnan(v)]
    peak = max(finite) if finite and max(finite) > 0 else 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="{escape(title)}" class="chart">',
             f'<text x="8" y="22" font-size="14" font-weight="bold">{escape(title)}</text>']
    for row, label in enumerate(row_labels):
        y = top + row * cell_height
        parts.append(f'<text x="{left - 6}" y="{y + 13}" font-size="10" text-anchor="end">{escape(label)}</text>')
        for column, value in enumerate(values[row]):
            shade = 0.0 if math.isnan(value) else min(value / peak, 1.0)
            fill = f"rgb({int(255 - 30 * shade)},{int(255 - 200 * shade)},{int(255 - 200 * shade)})"
            parts.append(f'<rect x="{left + column * cell_width}" y="{y}" width="{cell_width - 1}" height="{cell_height - 1}" '
                         f'fill="{fill}"><title>{escape(label)}, {escape(column_labels[column])}: {escape(_number(value))}</title></rect>')
    base = top + len(row_labels) * cell_height + 6
    for column, label in enumerate(column_labels):
        x = left + column * cell_width + cell_width / 2
        style = ' font-weight="bold" text-decoration="underline"' if highlight[column] else ""
        parts.append(f'<text x="{x:.1f}" y="{base}" font-size="10" text-anchor="end" transform="rotate(-50 {x:.1f} {base})"{style}>'
                     f'{escape(label)}</text>')
    parts.append(f'<text x="{left}" y="{height - 26}" font-size="11">{escape(x_label)} (substituted words underlined); darker = larger</text>')
    parts.append(f'<text x="{left}" y="{height - 10}" font-size="11">{escape(caption)}</text>')
    parts.append(f'<text x="12" y="{top + len(row_labels) * cell_height / 2:.1f}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + len(row_labels) * cell_height / 2:.1f})">{escape(y_label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def scatter(title: str, points: list[tuple[float, float]], labels: list[str], groups: list[str], highlight: list[bool],
            x_label: str, y_label: str, caption: str) -> Markup:
    """Labelled points coloured by group (e.g. prompt a / prompt b), highlighted ones ringed."""
    width, height, left, right, top, bottom = 720, 420, 72, 20, 40, 70
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    span_x, span_y = (x_high - x_low) or 1.0, (y_high - y_low) or 1.0
    to_x = lambda v: left + (v - x_low) / span_x * (width - left - right)  # noqa: E731
    to_y = lambda v: top + (y_high - v) / span_y * (height - top - bottom)  # noqa: E731
    names = list(dict.fromkeys(groups))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="{escape(title)}" class="chart">',
             f'<text x="8" y="22" font-size="14" font-weight="bold">{escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="none" stroke="#999"/>']
    for (x, y), label, group, marked in zip(points, labels, groups, highlight):
        colour = PALETTE[names.index(group) % len(PALETTE)]
        ring = ' stroke="#000" stroke-width="2"' if marked else ""
        weight = ' font-weight="bold"' if marked else ""
        parts.append(f'<circle cx="{to_x(x):.1f}" cy="{to_y(y):.1f}" r="5" fill="{colour}"{ring}><title>{escape(group)}: '
                     f'{escape(label)}</title></circle><text x="{to_x(x) + 6:.1f}" y="{to_y(y) - 4:.1f}" font-size="10"'
                     f'{weight}>{escape(label)}</text>')
    for index, name in enumerate(names):
        x = width - right - 160 * (len(names) - index)
        parts.append(f'<circle cx="{x}" cy="16" r="5" fill="{PALETTE[index % len(PALETTE)]}"/>'
                     f'<text x="{x + 9}" y="20" font-size="11">{escape(name)}</text>')
    for value in (x_low, x_high):  # the range of each axis, so a reader can read values off the plot
        parts.append(f'<text x="{to_x(value):.1f}" y="{height - bottom + 14}" font-size="10" text-anchor="middle">'
                     f'{escape(_number(value))}</text>')
    for value in (y_low, y_high):
        parts.append(f'<text x="{left - 4}" y="{to_y(value) + 4:.1f}" font-size="10" text-anchor="end">{escape(_number(value))}</text>')
    parts.append(f'<text x="{left + (width - left - right) / 2:.1f}" y="{height - bottom + 30}" font-size="11" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    parts.append(f'<text x="14" y="{top + (height - top - bottom) / 2:.1f}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + (height - top - bottom) / 2:.1f})">{escape(y_label)}</text>')
    parts.append(f'<text x="{left}" y="{height - 12}" font-size="11">{escape(caption)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
