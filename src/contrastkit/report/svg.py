"""Line charts as inline SVG text, for the self-contained run page (``report.html``).

No plotting library and no script: a chart is a string that a browser draws as it is, so the page
needs nothing from the network and shows its curves even with scripts off.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np

# Colours of successive series (and of classes on the embedding map): Tableau's ten.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
           "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")

WIDTH, HEIGHT = 520, 260
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 58, 12, 26, 36
MAX_POINTS_PER_SERIES = 1000  # longer series are thinned evenly: the page stays small


def colour(index: int) -> str:
    """The palette's colour ``index``; beyond ten, evenly spread hues."""
    if index < len(PALETTE):
        return PALETTE[index]
    return f"hsl({(index * 137.508) % 360:.0f},55%,50%)"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round numbers (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + 1e-9 * step:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _thin(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(xs) <= MAX_POINTS_PER_SERIES:
        return xs, ys
    keep = np.unique(np.linspace(0, len(xs) - 1, MAX_POINTS_PER_SERIES).round().astype(int))
    return xs[keep], ys[keep]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str,
               x_label: str = "step", y_label: str = "", width: int = WIDTH, height: int = HEIGHT) -> str:
    """An SVG chart of ``series`` = [(name, xs, ys)], one polyline each, with axes, ticks and a
    legend when there are several. Non-finite points are dropped."""
    cleaned = []
    for name, xs, ys in series:
        xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        finite = np.isfinite(xs) & np.isfinite(ys)
        if finite.any():
            cleaned.append((name, *_thin(xs[finite], ys[finite])))
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="{html.escape(title)}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" class="chart-title">{html.escape(title)}</text>']
    if not cleaned:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no values</text></svg>')
        return "".join(parts)
    x_low = min(float(xs.min()) for _, xs, _ in cleaned)
    x_high = max(float(xs.max()) for _, xs, _ in cleaned)
    y_low = min(float(ys.min()) for _, _, ys in cleaned)
    y_high = max(float(ys.max()) for _, _, ys in cleaned)
    if x_high == x_low:
        x_low, x_high = x_low - 0.5, x_high + 0.5
    if y_high == y_low:
        pad = abs(y_low) * 0.05 or 0.5
        y_low, y_high = y_low - pad, y_high + pad
    plot_w = width - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = height - MARGIN_TOP - MARGIN_BOTTOM

    def px(x: float) -> float:
        return MARGIN_LEFT + (x - x_low) / (x_high - x_low) * plot_w

    def py(y: float) -> float:
        return MARGIN_TOP + (1 - (y - y_low) / (y_high - y_low)) * plot_h

    bottom = MARGIN_TOP + plot_h
    parts.append(f'<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_w}" height="{plot_h}" class="plot-area"/>')
    for tick in nice_ticks(y_low, y_high):
        y = py(tick)
        parts.append(f'<line x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{MARGIN_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_label(tick)}</text>')
    for tick in nice_ticks(x_low, x_high):
        x = px(tick)
        parts.append(f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle" class="tick">{_label(tick)}</text>')
    parts.append(f'<text x="{MARGIN_LEFT + plot_w / 2}" y="{height - 4}" text-anchor="middle" class="axis">'
                 f'{html.escape(x_label)}</text>')
    if y_label:
        parts.append(f'<text x="12" y="{MARGIN_TOP + plot_h / 2}" text-anchor="middle" class="axis" '
                     f'transform="rotate(-90 12 {MARGIN_TOP + plot_h / 2})">{html.escape(y_label)}</text>')
    for index, (name, xs, ys) in enumerate(cleaned):
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=True))
        stroke = colour(index)
        if len(xs) == 1:
            parts.append(f'<circle cx="{px(xs[0]):.1f}" cy="{py(ys[0]):.1f}" r="3" fill="{stroke}"/>')
        else:
            parts.append(f'<polyline points="{points}" fill="none" stroke="{stroke}" stroke-width="1.5">'
                         f'<title>{html.escape(name)}</title></polyline>')
    if len(cleaned) > 1:
        for index, (name, _, _) in enumerate(cleaned):
            y = MARGIN_TOP + 12 + 14 * index
            parts.append(f'<rect x="{MARGIN_LEFT + 8}" y="{y - 8}" width="10" height="10" fill="{colour(index)}"/>'
                         f'<text x="{MARGIN_LEFT + 22}" y="{y + 1}" class="legend">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
