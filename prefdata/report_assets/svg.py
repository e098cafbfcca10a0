"""Hand-built SVG charts for the HTML report: histograms, bars, lines, a heat table.

No plotting dependency and no JavaScript: each chart is a self-contained <svg> string the report
inlines, so the page opens offline, anywhere, with nothing to load and nothing to log to the console."""
from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np

W, H = 460, 260
PAD_L, PAD_R, PAD_T, PAD_B = 52, 14, 30, 42
PALETTE = ["#3b6fb6", "#d9793a", "#4a9a5b", "#a8509e", "#8a8a2e", "#c44b4b", "#4aa3a8", "#6d5fb8"]


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def _nice(x: float) -> str:
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10 or float(x).is_integer():
        return f"{x:.0f}"
    return f"{x:.2g}"


def _frame(title: str, xlabel: str, ylabel: str, inner: str, legend: Sequence[tuple[str, str]] = (), *,
           h: int = H, pad_l: int = PAD_L) -> str:
    leg = "".join(
        f'<rect x="{W - PAD_R - 120}" y="{PAD_T + 4 + 16 * i}" width="10" height="10" fill="{c}"/>'
        f'<text x="{W - PAD_R - 106}" y="{PAD_T + 13 + 16 * i}" font-size="11">{_esc(n)}</text>'
        for i, (n, c) in enumerate(legend))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{W}" height="{h}" viewBox="0 0 {W} {h}" '
            f'font-family="sans-serif"><title>{_esc(title)}</title>'
            f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{_esc(title)}</text>'
            f'<line x1="{pad_l}" y1="{h - PAD_B}" x2="{W - PAD_R}" y2="{h - PAD_B}" stroke="#333"/>'
            f'<line x1="{pad_l}" y1="{PAD_T}" x2="{pad_l}" y2="{h - PAD_B}" stroke="#333"/>'
            f'<text x="{(pad_l + W - PAD_R) / 2}" y="{h - 6}" text-anchor="middle" font-size="11">{_esc(xlabel)}</text>'
            f'<text x="12" y="{(PAD_T + h - PAD_B) / 2}" text-anchor="middle" font-size="11" '
            f'transform="rotate(-90 12 {(PAD_T + h - PAD_B) / 2})">{_esc(ylabel)}</text>'
            f"{inner}{leg}</svg>")


def _axes_ticks(x0: float, x1: float, y1: float) -> str:
    """Three x ticks (min, mid, max) and three y ticks (0, half, max): enough to read the scale."""
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    out = []
    for f in (0.0, 0.5, 1.0):
        x = PAD_L + f * pw
        out.append(f'<text x="{x:.1f}" y="{H - PAD_B + 14}" text-anchor="middle" font-size="10">'
                   f"{_esc(_nice(x0 + f * (x1 - x0)))}</text>")
        y = H - PAD_B - f * ph
        out.append(f'<text x="{PAD_L - 4}" y="{y + 3:.1f}" text-anchor="end" font-size="10">{_esc(_nice(f * y1))}</text>')
        out.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{W - PAD_R}" y2="{y:.1f}" stroke="#ddd"/>')
    return "".join(out)


def empty(title: str, why: str) -> str:
    return _frame(title, "", "", f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" font-size="12" '
                  f'fill="#777">{_esc(why)}</text>')


def histogram(series: dict[str, Sequence[float]], title: str, xlabel: str, bins: int = 30,
              integer_bins: bool = False) -> str:
    """Overlaid histograms over a shared bin grid (semi-transparent so overlap stays visible)."""
    arrays = {k: np.asarray([v for v in vals if v is not None], dtype=float) for k, vals in series.items()}
    arrays = {k: a[np.isfinite(a)] for k, a in arrays.items()}
    allv = np.concatenate([a for a in arrays.values()]) if arrays else np.array([])
    if allv.size == 0:
        return empty(title, "no values")
    lo, hi = float(allv.min()), float(allv.max())
    if integer_bins:
        edges = np.arange(math.floor(lo) - 0.5, math.ceil(hi) + 1.5, 1.0)
    else:
        if hi == lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
    counts = {k: np.histogram(a, bins=edges)[0] for k, a in arrays.items()}
    ymax = max(int(c.max()) for c in counts.values()) or 1
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    bw = pw / (len(edges) - 1)
    rects = []
    for i, (k, c) in enumerate(counts.items()):
        color = PALETTE[i % len(PALETTE)]
        for j, n in enumerate(c):
            if n == 0:
                continue
            h = ph * n / ymax
            rects.append(f'<rect x="{PAD_L + j * bw:.1f}" y="{H - PAD_B - h:.1f}" width="{max(bw - 1, 0.5):.1f}" '
                         f'height="{h:.1f}" fill="{color}" fill-opacity="{0.75 if len(counts) == 1 else 0.5}">'
                         f"<title>{_esc(k)}: [{_nice(edges[j])}, {_nice(edges[j + 1])}) {n}</title></rect>")
    legend = [(k, PALETTE[i % len(PALETTE)]) for i, k in enumerate(counts)] if len(counts) > 1 else []
    return _frame(title, xlabel, "count", _axes_ticks(float(edges[0]), float(edges[-1]), ymax) + "".join(rects),
                  legend)


def bars(labels: Sequence[object], values: Sequence[float], title: str, xlabel: str, ylabel: str = "count") -> str:
    if not len(values):
        return empty(title, "no values")
    ymax = max(values) or 1
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    bw = pw / len(values)
    out = []
    for i, (lab, v) in enumerate(zip(labels, values, strict=True)):
        h = ph * v / ymax
        x = PAD_L + i * bw
        out.append(f'<rect x="{x + bw * 0.1:.1f}" y="{H - PAD_B - h:.1f}" width="{bw * 0.8:.1f}" height="{h:.1f}" '
                   f'fill="{PALETTE[0]}"><title>{_esc(lab)}: {_esc(_nice(v))}</title></rect>'
                   f'<text x="{x + bw / 2:.1f}" y="{H - PAD_B + 14}" text-anchor="middle" font-size="10">'
                   f"{_esc(lab)}</text>"
                   f'<text x="{x + bw / 2:.1f}" y="{H - PAD_B - h - 3:.1f}" text-anchor="middle" font-size="10">'
                   f"{_esc(_nice(v))}</text>")
    ticks = "".join(f'<line x1="{PAD_L}" y1="{H - PAD_B - f * ph:.1f}" x2="{W - PAD_R}" y2="{H - PAD_B - f * ph:.1f}" '
                    f'stroke="#ddd"/>' for f in (0.5, 1.0))
    return _frame(title, xlabel, ylabel, ticks + "".join(out))


def lines(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str, ylabel: str) -> str:
    pts = {k: (np.asarray(x, float), np.asarray(y, float)) for k, (x, y) in series.items() if len(x)}
    if not pts:
        return empty(title, "no values")
    xs = np.concatenate([x for x, _ in pts.values()])
    ys = np.concatenate([y for _, y in pts.values()])
    ok = np.isfinite(ys)
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = float(min(0.0, ys[ok].min())) if ok.any() else 0.0, float(ys[ok].max()) if ok.any() else 1.0
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    out = []
    for i, (k, (x, y)) in enumerate(pts.items()):
        good = np.isfinite(y)
        p = " ".join(f"{PAD_L + (a - x0) / (x1 - x0) * pw:.1f},{H - PAD_B - (b - y0) / (y1 - y0) * ph:.1f}"
                     for a, b in zip(x[good], y[good], strict=True))
        out.append(f'<polyline points="{p}" fill="none" stroke="{PALETTE[i % len(PALETTE)]}" stroke-width="1.6">'
                   f"<title>{_esc(k)}</title></polyline>")
    ticks = []
    for f in (0.0, 0.5, 1.0):
        ticks.append(f'<text x="{PAD_L + f * pw:.1f}" y="{H - PAD_B + 14}" text-anchor="middle" font-size="10">'
                     f"{_esc(_nice(x0 + f * (x1 - x0)))}</text>")
        ticks.append(f'<text x="{PAD_L - 4}" y="{H - PAD_B - f * ph + 3:.1f}" text-anchor="end" font-size="10">'
                     f"{_esc(_nice(y0 + f * (y1 - y0)))}</text>")
        ticks.append(f'<line x1="{PAD_L}" y1="{H - PAD_B - f * ph:.1f}" x2="{W - PAD_R}" y2="{H - PAD_B - f * ph:.1f}" '
                     f'stroke="#ddd"/>')
    legend = [(k, PALETTE[i % len(PALETTE)]) for i, k in enumerate(pts)] if len(pts) > 1 else []
    return _frame(title, xlabel, ylabel, "".join(ticks) + "".join(out), legend)


def heat_table(names: Sequence[str], matrix: dict[tuple[str, str], float | None], title: str) -> str:
    """Symmetric agreement matrix (0..1) as coloured cells; None cells stay grey."""
    n = len(names)
    if n < 2:
        return empty(title, "needs two or more scorers")
    size = min(60, (W - 150) // n)
    width, height = 150 + n * size, 60 + n * size + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
           f'font-family="sans-serif"><title>{_esc(title)}</title>'
           f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{_esc(title)}</text>']
    for i, a in enumerate(names):
        out.append(f'<text x="145" y="{60 + i * size + size / 2 + 4}" text-anchor="end" font-size="10">{_esc(a)}</text>')
        out.append(f'<text x="{150 + i * size + size / 2}" y="52" text-anchor="middle" font-size="10">{_esc(a[:10])}</text>')
        for j, b in enumerate(names):
            v = 1.0 if a == b else matrix.get((a, b), matrix.get((b, a)))
            fill = "#ccc" if v is None else f"rgb({int(255 - 160 * v)},{int(255 - 90 * v)},{int(255 - 40 * v)})"
            label = "–" if v is None else f"{v:.2f}"
            out.append(f'<rect x="{150 + j * size}" y="{60 + i * size}" width="{size - 2}" height="{size - 2}" '
                       f'fill="{fill}"><title>{_esc(a)} vs {_esc(b)}: {label}</title></rect>'
                       f'<text x="{150 + j * size + size / 2 - 1}" y="{60 + i * size + size / 2 + 3}" '
                       f'text-anchor="middle" font-size="10">{label}</text>')
    out.append("</svg>")
    return "".join(out)


def points(labels: Sequence[str], series: dict[str, Sequence[float | None]], title: str, xlabel: str, *,
           intervals: dict[str, Sequence[tuple[float, float] | None]] | None = None, ref: float | None = None,
           x_range: tuple[float, float] | None = None) -> str:
    """Horizontal dot plot: one row per label, one coloured dot per series (None = no dot), optional interval
    whiskers per dot and a dashed reference line (e.g. a 0.5 win rate). Values are printed next to single-series
    dots; every dot has a tooltip with its value and interval."""
    intervals = intervals or {}
    vals = [float(v) for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    vals += [float(e) for iv in intervals.values() for pair in iv if pair is not None for e in pair]
    if not labels or not vals:
        return empty(title, "no values")
    if x_range is not None:
        x0, x1 = x_range
    else:
        x0, x1 = min(vals + ([ref] if ref is not None else [])), max(vals + ([ref] if ref is not None else []))
        span = (x1 - x0) or 1.0
        x0, x1 = x0 - 0.08 * span, x1 + 0.08 * span
    row_h, pad_l = 30, 120
    n_series = len(series)
    top = PAD_T + (22 if n_series > 1 else 8)      # a one-line legend above the rows, never over the dots
    h = max(150, top + row_h * len(labels) + PAD_B)
    pw = W - pad_l - PAD_R

    def X(v: float) -> float:
        return pad_l + (v - x0) / (x1 - x0) * pw

    out = []
    for f in (0.0, 0.25, 0.5, 0.75, 1.0):
        v = x0 + f * (x1 - x0)
        out.append(f'<line x1="{X(v):.1f}" y1="{PAD_T}" x2="{X(v):.1f}" y2="{h - PAD_B}" stroke="#eee"/>'
                   f'<text x="{X(v):.1f}" y="{h - PAD_B + 14}" text-anchor="middle" font-size="10">'
                   f"{_esc(_nice(v))}</text>")
    if ref is not None:
        out.append(f'<line x1="{X(ref):.1f}" y1="{PAD_T}" x2="{X(ref):.1f}" y2="{h - PAD_B}" stroke="#888" '
                   f'stroke-dasharray="4 3"/>')
    for j, name in enumerate(series if n_series > 1 else []):
        out.append(f'<rect x="{pad_l + 8 + 120 * j}" y="{PAD_T}" width="10" height="10" '
                   f'fill="{PALETTE[j % len(PALETTE)]}"/><text x="{pad_l + 22 + 120 * j}" y="{PAD_T + 9}" '
                   f'font-size="11">{_esc(name)}</text>')
    for i, label in enumerate(labels):
        yc = top + row_h * (i + 0.5)
        out.append(f'<text x="{pad_l - 6}" y="{yc + 4:.1f}" text-anchor="end" font-size="11">{_esc(label)}</text>')
        for j, (name, vs) in enumerate(series.items()):
            v = vs[i]
            if v is None or not math.isfinite(v):
                continue
            color = PALETTE[j % len(PALETTE)]
            y = yc + (j - (n_series - 1) / 2) * 8
            iv = (intervals.get(name) or [None] * len(labels))[i]
            tip = f"{label} · {name}: {v:.4g}" + (f" [{iv[0]:.4g}, {iv[1]:.4g}]" if iv else "")
            if iv:
                out.append(f'<line x1="{X(iv[0]):.1f}" y1="{y:.1f}" x2="{X(iv[1]):.1f}" y2="{y:.1f}" '
                           f'stroke="{color}" stroke-width="2"/>'
                           + "".join(f'<line x1="{X(e):.1f}" y1="{y - 5:.1f}" x2="{X(e):.1f}" y2="{y + 5:.1f}" '
                                     f'stroke="{color}" stroke-width="2"/>' for e in iv))
            out.append(f'<circle cx="{X(v):.1f}" cy="{y:.1f}" r="4.5" fill="{color}"><title>{_esc(tip)}</title>'
                       "</circle>")
            if n_series == 1:
                out.append(f'<text x="{X(v):.1f}" y="{y - 8:.1f}" text-anchor="middle" font-size="10">'
                           f"{_esc(f'{v:.3g}')}</text>")
    return _frame(title, xlabel, "", "".join(out), h=h, pad_l=pad_l)
