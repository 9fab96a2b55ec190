"""Matplotlib, headless: new figures, colours, CDFs, and saving a figure as a PNG.

Holds ``new_figure`` (a ``matplotlib.figure.Figure`` on the Agg canvas: never a pyplot window,
never the pyplot figure registry, so nothing stays open after saving and no display is needed),
``save_png`` (write, then drop the figure's artists), ``colour`` (a fixed colour per position),
``cdf`` (sorted values and their cumulative fractions) and ``shade_windows``.

It draws only what callers hand it; which figures a report holds is decided in
``runreport`` and ``sweepreport``. Imports matplotlib lazily, in the functions.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from testbed.report.document import FigureFile

__all__ = ["DPI", "new_figure", "save_png", "colour", "cdf", "shade_windows", "no_data"]

DPI = 100
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf")


def new_figure(*, width_in: float = 9.0, height_in: float = 4.0, rows: int = 1, cols: int = 1,
               sharex: bool = False, sharey: bool = False) -> tuple[Any, Any]:
    """A figure of ``width_in`` x ``height_in`` inches (at ``DPI``) and its axes, always as a
    2-D array (``axes[row][col]``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, sharex=sharex, sharey=sharey, squeeze=False)
    return fig, axes


def save_png(fig: Any, path: Path, *, caption: str) -> FigureFile:
    """Write ``fig`` to ``path`` as a PNG of exactly its size in pixels, then clear it."""
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    width, height = fig.canvas.get_width_height()
    fig.clear()
    return FigureFile(path=path, caption=caption, width_px=int(width), height_px=int(height))


def colour(i: int) -> str:
    """The ``i``-th colour of a fixed palette (a method, a run or a link keeps its colour across
    the figures of one report)."""
    return _PALETTE[i % len(_PALETTE)]


def cdf(values: Iterable[float]) -> tuple[list[float], list[float]]:
    """``values`` sorted and the fraction of values at or below each."""
    xs = sorted(values)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def shade_windows(ax: Any, windows: Sequence[tuple[float, float]], *, color: str, label: str | None,
                  alpha: float = 0.18) -> None:
    """Shade each ``(start, end)`` span of ``ax``'s x axis; the label is given once."""
    for i, (start, end) in enumerate(windows):
        ax.axvspan(start, end, color=color, alpha=alpha, lw=0, label=label if i == 0 else None)


def no_data(ax: Any, text: str) -> None:
    """Say in the middle of ``ax`` that there is nothing to draw."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777")


def legend(ax: Any, *, loc: str = "best", empty: str | None = None) -> None:
    """A legend on ``ax`` when anything drawn has a label; else, given ``empty``, say so instead."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=loc, fontsize=8)
    elif empty is not None:
        no_data(ax, empty)
