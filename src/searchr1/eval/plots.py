"""Plots as self-contained SVG text (no plotting library): the demo's and the study's curves."""

from __future__ import annotations

from html import escape

COLOURS = ["#1f6fb2", "#e07b00", "#2e9d4c", "#b2331f", "#7b3fb2", "#6b6b6b", "#00a0a0"]


def line_plot_svg(series: dict[str, list[tuple[float, float]]], *, title: str, xlabel: str, ylabel: str,
                  width: int = 640, height: int = 300, y_min: float | None = None,
                  y_max: float | None = None, bands: dict[str, list[tuple[float, float, float]]] | None = None,
                  legend_width: int = 150) -> str:
    """A self-contained SVG line plot: one polyline + markers per series, labelled axes with
    ticks, and a legend. `series[name] = [(x, y), ...]`; None ys are skipped. `bands[name] =
    [(x, low, high), ...]` shades a range around the series of the same name (e.g. min-max over
    seeds)."""
    bands = bands or {}
    left, right, top, bottom = 60, 20, 34, 46
    pts = {k: [(float(x), float(y)) for x, y in v if y is not None] for k, v in series.items()}
    spans = {k: [(float(x), float(lo), float(hi)) for x, lo, hi in v if lo is not None and hi is not None]
             for k, v in bands.items()}
    xs = [x for v in pts.values() for x, _ in v] or [0.0, 1.0]
    ys = [y for v in pts.values() for _, y in v] + [y for v in spans.values() for _, lo, hi in v for y in (lo, hi)]
    ys = ys or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    lo = min(ys) if y_min is None else min(y_min, min(ys))
    hi = max(ys) if y_max is None else max(y_max, max(ys))
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - lo) / (hi - lo)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for i in range(5):  # y ticks and grid
        v = lo + (hi - lo) * i / 4
        y = sy(v)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    ticks = sorted({round(x0 + (x1 - x0) * i / 5) for i in range(6)} & set(range(int(x0), int(x1) + 1))) or [x0, x1]
    for v in ticks:  # x ticks (integer steps)
        x = sx(v)
        out.append(f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 4}" stroke="#999"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{v:g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>')
    for i, (name, v) in enumerate(pts.items()):
        c = COLOURS[i % len(COLOURS)]
        band = sorted(spans.get(name, []))
        if len(band) > 1:
            outline = [(x, hi) for x, _, hi in band] + [(x, lo) for x, lo, _ in reversed(band)]
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in outline)
            out.append(f'<polygon fill="{c}" fill-opacity="0.15" stroke="none" points="{path}"/>')
        if len(v) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in v)
            out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{path}"/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"/>' for x, y in v]
        lx = left + 10 + i * legend_width
        out.append(f'<line x1="{lx}" y1="{top + 12}" x2="{lx + 18}" y2="{top + 12}" stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{lx + 22}" y="{top + 16}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)
