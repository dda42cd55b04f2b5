"""Line and bar charts drawn on the server as inline SVG, shown in an html_part (studio.tabs).

Gradio's plots load and run a Vega bundle in the browser: about a second of a core for each page that shows
one (benchmarks/studio_latency.py), which several pages open on a 2-core machine pay at once. These charts
are a few kilobytes of SVG that the browser only lays out. Values are checked to be numbers, so a chart
never draws loss values as category labels.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable

import pandas as pd

WIDTH, HEIGHT = 640, 300  # the viewBox; the SVG scales to its column's width
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 10, 44  # margins for the axes' tick labels and titles
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM  # the plotting area inside them
PALETTE = ["#4f7cff", "#f5a524", "#22c55e", "#e5484d", "#a855f7", "#14b8a6", "#ec4899", "#64748b"]
MAX_POINTS = 600  # per line: longer series are thinned (evenly, keeping the last point) before drawing


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2, 5 times a power of ten apart) covering [low, high]."""
    if not high > low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]
    return [round(t, 12) for t in ticks]


def tick_label(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.3g}"


def empty_chart(title: str, message: str) -> str:
    return (
        f"<div class='chart'><div class='chart-title'>{html.escape(title)}</div>"
        f"<div class='chart-empty'>{html.escape(message)}</div></div>"
    )


def legend(colors: dict[str, str]) -> str:
    items = "".join(
        f"<span class='chart-key'><i style='background:{c}'></i>{html.escape(name)}</span>"
        for name, c in colors.items()
    )
    return f"<div class='chart-legend'>{items}</div>"


def thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = len(points) / MAX_POINTS
    return [points[int(i * stride)] for i in range(MAX_POINTS)] + [points[-1]]


def axes(
    xs: list[float], ys: list[float], x_title: str, y_title: str
) -> tuple[str, Callable[[float], float], Callable[[float], float]]:
    """The grid, tick labels and titles for these values; returns (svg, x -> px, y -> px)."""
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * PLOT_W

    def py(y: float) -> float:
        return TOP + PLOT_H - (y - y0) / (y1 - y0) * PLOT_H

    parts = [value_axis(y_ticks, py)]
    for t in x_ticks:
        parts.append(x_tick(px(t), tick_label(t)))
    parts.append(axis_titles(x_title, y_title))
    return "".join(parts), px, py


def value_axis(ticks: list[float], py: Callable[[float], float]) -> str:
    """Horizontal grid lines at the y ticks, labelled on the left."""
    return "".join(
        f"<line class='grid' x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{py(t):.1f}' y2='{py(t):.1f}'/>"
        f"<text class='tick' x='{LEFT - 6}' y='{py(t) + 4:.1f}' text-anchor='end'>{tick_label(t)}</text>"
        for t in ticks
    )


def x_tick(x: float, label: str) -> str:
    return f"<text class='tick' x='{x:.1f}' y='{TOP + PLOT_H + 16}' text-anchor='middle'>{html.escape(label)}</text>"


def axis_titles(x_title: str, y_title: str) -> str:
    return (
        f"<text class='axis-title' x='{LEFT + PLOT_W / 2}' y='{HEIGHT - 6}' text-anchor='middle'>"
        f"{html.escape(x_title)}</text>"
        f"<text class='axis-title' transform='translate(14 {TOP + PLOT_H / 2}) rotate(-90)' text-anchor='middle'>"
        f"{html.escape(y_title)}</text>"
    )


def framed(title: str, colors: dict[str, str], body: str) -> str:
    """A chart: its title, its legend and the SVG."""
    return f"<div class='chart'><div class='chart-title'>{html.escape(title)}</div>{legend(colors)}{svg(body, title)}</div>"


def svg(body: str, label: str) -> str:
    return (
        f"<svg viewBox='0 0 {WIDTH} {HEIGHT}' width='100%' role='img' aria-label='{html.escape(label, quote=True)}' "
        f"preserveAspectRatio='xMidYMid meet'>{body}</svg>"
    )


def line_chart(
    frame: pd.DataFrame,
    x: str,
    y: str,
    series: str,
    title: str,
    colors: dict[str, str] | None = None,
    empty: str = "No points yet.",
) -> str:
    """One line a value of `series` (y against x), with a legend; `colors` picks a color for a series name
    (others take the palette's in order). A series of a single point shows as a dot."""
    frame = frame.dropna(subset=[x, y])
    if frame.empty:
        return empty_chart(title, empty)
    assert pd.api.types.is_numeric_dtype(frame[x]) and pd.api.types.is_numeric_dtype(frame[y]), frame.dtypes
    names = list(dict.fromkeys(frame[series].astype(str)))
    spare = iter(c for c in PALETTE if c not in (colors or {}).values())
    color = {name: (colors or {}).get(name) or next(spare, PALETTE[-1]) for name in names}
    grid, px, py = axes(frame[x].astype(float).tolist(), frame[y].astype(float).tolist(), x, y)
    lines = []
    for name in names:
        part = frame[frame[series].astype(str) == name].sort_values(x)
        points = thin(list(zip(part[x].astype(float), part[y].astype(float), strict=True)))
        coords = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in points)
        label = html.escape(name, quote=True)
        lines.append(f"<polyline class='line' data-series='{label}' points='{coords}' stroke='{color[name]}'/>")
        if len(points) <= 40:  # few points (validation, a run's start): dots, each with its value on hover
            lines += [
                f"<circle cx='{px(a):.1f}' cy='{py(b):.1f}' r='3' fill='{color[name]}'>"
                f"<title>{label}: {x} {a:g}, {y} {b:.4g}</title></circle>"
                for a, b in points
            ]
    return framed(title, color, grid + "".join(lines))


def bar_chart(
    labels: list[str], stacks: dict[str, list[int]], colors: dict[str, str], title: str, x_title: str, y_title: str
) -> str:
    """Stacked bars: one bar a label, one stacked part a key of `stacks` (its counts, in label order)."""
    assert all(len(counts) == len(labels) for counts in stacks.values()), "a count for every label"
    totals = [sum(counts[i] for counts in stacks.values()) for i in range(len(labels))]
    y_ticks = nice_ticks(0, max(max(totals, default=0), 5))  # counts: whole-number ticks
    slot = PLOT_W / max(1, len(labels))

    def py(v: float) -> float:
        return TOP + PLOT_H - v / y_ticks[-1] * PLOT_H

    parts = [value_axis(y_ticks, py)]
    for i, label in enumerate(labels):
        base, left = 0, LEFT + i * slot + slot * 0.12
        for key, counts in stacks.items():
            if counts[i]:
                top = py(base + counts[i])
                parts.append(
                    f"<rect class='bar' x='{left:.1f}' y='{top:.1f}' width='{slot * 0.76:.1f}' "
                    f"height='{py(base) - top:.1f}' fill='{colors[key]}'><title>{html.escape(label)}: "
                    f"{counts[i]} ({html.escape(key)})</title></rect>"
                )
                base += counts[i]
        parts.append(x_tick(LEFT + (i + 0.5) * slot, label))
    parts.append(axis_titles(x_title, y_title))
    return framed(title, colors, "".join(parts))


def grouped_bar_chart(
    groups: list[str],
    bars: dict[str, list[tuple[float, float] | None]],
    lines: list[float],
    title: str,
    y_title: str,
    line_label: str,
) -> str:
    """Bars side by side in each group (one a key of `bars`, in its palette color), each (value, error) drawn
    with an error bar of ± error (None: no bar), and a dashed line across each group at lines[i]."""
    assert all(len(values) == len(groups) for values in bars.values()) and len(lines) == len(groups)
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(bars)}
    tops = [v + e for values in bars.values() for v, e in filter(None, values)] + lines
    y_ticks = nice_ticks(0, max(tops, default=1.0))
    slot, width = PLOT_W / max(1, len(groups)), PLOT_W / max(1, len(groups)) * 0.8 / max(1, len(bars))

    def py(v: float) -> float:
        return TOP + PLOT_H - v / y_ticks[-1] * PLOT_H

    parts = [value_axis(y_ticks, py)]
    for i, group in enumerate(groups):
        left = LEFT + i * slot + slot * 0.1
        for j, (name, values) in enumerate(bars.items()):
            if values[i] is not None:
                parts.append(error_bar(left + j * width, width, values[i], py, colors[name], f"{name}, {group}"))
        y = py(lines[i])
        parts.append(
            f"<line class='chance' x1='{left - slot * 0.05:.1f}' x2='{left + slot * 0.85:.1f}' y1='{y:.1f}' "
            f"y2='{y:.1f}' stroke='#64748b' stroke-dasharray='4 3'><title>{html.escape(line_label)}: "
            f"{lines[i]:.3g}</title></line>"
        )
        parts.append(x_tick(LEFT + (i + 0.5) * slot, group))
    parts.append(axis_titles("", y_title))
    return framed(title, {**colors, line_label: "#64748b"}, "".join(parts))


def error_bar(
    x: float, width: float, bar: tuple[float, float], py: Callable[[float], float], color: str, name: str
) -> str:
    """One bar from 0 to value with a whisker from value - error to value + error, its figures on hover."""
    value, error = bar
    top, low, high, middle = py(value), py(max(0.0, value - error)), py(value + error), x + width * 0.45
    return (
        f"<rect class='bar' x='{x:.1f}' y='{top:.1f}' width='{width * 0.9:.1f}' height='{py(0) - top:.1f}' "
        f"fill='{color}'><title>{html.escape(name)}: {value:.3f} ± {error:.3f}</title></rect>"
        f"<line class='whisker' x1='{middle:.1f}' x2='{middle:.1f}' y1='{low:.1f}' "
        f"y2='{high:.1f}' stroke='#1e293b' stroke-width='1.5'/>"
    )
