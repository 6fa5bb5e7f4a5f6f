"""The segment report's charts: matplotlib figures rendered to inline SVG (text kept as
text, no script, nothing fetched), so the page opens offline and can be mailed as a file.

Every chart labels segments by name and dimensions in words (`humanise`), and is drawn
with the object-oriented API (no pyplot state), so rendering is safe in any process.
"""

from __future__ import annotations

import html
import io
import re
import textwrap

import matplotlib
import numpy as np
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

# Colours per segment, in the order segments are listed (size, descending).
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f")
# Words for names that "replace _ with a space" would leave unclear.
WORDS = {
    "nps": "NPS",
    "pct": "%",
    "avg": "average",
    "qty": "quantity",
    "t12m": "last 12 months",
    "yoy": "year on year",
}

matplotlib.rcParams.update(
    {
        "svg.fonttype": "none",  # text stays text: readable, searchable, small
        "svg.hashsalt": "needseg",  # the same report twice gives the same SVG
        "font.size": 10,
        "font.family": "sans-serif",
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
)


def humanise(name: str) -> str:
    """`lost_on_price_share` -> `Lost on price share`, `nps` -> `NPS`."""
    words = [WORDS.get(w, w) for w in re.split(r"[_\s]+", str(name).strip()) if w]
    text = " ".join(words)
    return text[:1].upper() + text[1:] if text else ""


def _wrap(label: str, width: int = 22) -> str:
    return "\n".join(textwrap.wrap(label, width)) or label


def to_svg(figure: Figure, label: str) -> str:
    """The figure as an inline <svg> inside a <figure> named for screen readers."""
    buffer = io.StringIO()
    FigureCanvasSVG(figure)
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = svg.replace("<svg ", f'<svg role="img" aria-label="{html.escape(label)}" ', 1)
    return f'<figure class="chart">{svg}</figure>'


def size_bars(names: list[str], surveyed: list[int], inferred: list[int], colours: dict[str, str]) -> str:
    figure = Figure(figsize=(6.4, 0.5 * len(names) + 0.9))
    ax = figure.add_subplot()
    y = np.arange(len(names))[::-1]
    for i, name in enumerate(names):
        ax.barh(y[i], surveyed[i], color=colours[name], label="surveyed" if i == 0 else None)
        ax.barh(y[i], inferred[i], left=surveyed[i], color=colours[name], alpha=0.45, label="inferred from behaviour" if i == 0 else None)
        ax.text(surveyed[i] + inferred[i], y[i], f"  {surveyed[i] + inferred[i]:,}", va="center")
    ax.set_yticks(y, [_wrap(n, 26) for n in names])
    ax.set_xlabel("customers")
    ax.margins(x=0.12)
    ax.legend(loc="lower right", frameon=False, fontsize=9)
    return to_svg(figure, "customers per segment, surveyed and inferred")


def heatmap(rows: list[str], columns: list[str], values: dict[tuple[str, str], float], fmt: str, label: str, legend: str) -> str:
    """Segments x dimensions, blue above everyone's average, red below, white at zero."""
    matrix = np.array([[values.get((r, c), np.nan) for c in columns] for r in rows], dtype=float)
    limit = float(np.nanmax(np.abs(matrix))) if np.isfinite(matrix).any() else 1.0
    figure = Figure(figsize=(max(4.5, 0.95 * len(columns) + 2.2), 0.55 * len(rows) + 1.9))
    ax = figure.add_subplot()
    image = ax.imshow(matrix, cmap="RdBu", norm=TwoSlopeNorm(0.0, -limit or -1, limit or 1), aspect="auto")
    ax.set_xticks(range(len(columns)), [_wrap(humanise(c), 12) for c in columns], rotation=0, fontsize=9)
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(rows)), [_wrap(r, 28) for r in rows])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    for (i, j), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            strong = abs(value) > 0.6 * limit
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=9, color="white" if strong else "#222")
    bar = figure.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label(legend, fontsize=9)
    return to_svg(figure, label)


def size_lines(runs: list, by_segment: dict[str, list[int]], colours: dict[str, str]) -> str:
    figure = Figure(figsize=(6.4, 3.2))
    ax = figure.add_subplot()
    x = np.arange(len(runs))
    for name, sizes in by_segment.items():
        ax.plot(x, sizes, marker="o", markersize=3, color=colours.get(name, "#777"), label=f"{name} ({sizes[-1]:,})")
    step = max(1, len(runs) // 8)
    ax.set_xticks(x[::step], [str(r)[:7] for r in runs][::step])
    ax.set_ylabel("customers")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=9)
    return to_svg(figure, "customers per segment over the runs")


def transitions(rows: list[str], columns: list[str], moves: dict[tuple[str, str], int]) -> str:
    """Previous segment (rows) x segment now (columns): customers who stayed in grey on the
    diagonal, moves in orange, darker for more customers."""
    counts = np.array([[moves.get((r, c), 0) for c in columns] for r in rows], dtype=float)
    moved = np.array([[r != c for c in columns] for r in rows])
    largest_move = max(float(counts[moved].max()) if moved.any() else 0.0, 1.0)
    figure = Figure(figsize=(max(4.5, 1.2 * len(columns) + 2.4), 0.6 * len(rows) + 1.9))
    ax = figure.add_subplot()
    colours = np.ones((*counts.shape, 4))
    oranges = matplotlib.colormaps["Oranges"]
    for (i, j), value in np.ndenumerate(counts):
        if not moved[i, j]:
            colours[i, j] = (0.93, 0.93, 0.93, 1.0)
        elif value > 0:
            colours[i, j] = oranges(0.25 + 0.75 * value / largest_move)
    ax.imshow(colours, aspect="auto")
    for (i, j), value in np.ndenumerate(counts):
        if value > 0:
            dark = moved[i, j] and value > 0.6 * largest_move
            ax.text(j, i, f"{int(value):,}", ha="center", va="center", fontsize=9, color="white" if dark else "#222")
    ax.set_xticks(range(len(columns)), [_wrap(c, 14) for c in columns], fontsize=9)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("segment now")
    ax.set_yticks(range(len(rows)), [_wrap(r, 28) for r in rows])
    ax.set_ylabel("segment before")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return to_svg(figure, "transitions between segments since the previous run")
