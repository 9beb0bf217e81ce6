"""Draw a FigureSpec (bench/figures.py) as a PNG with matplotlib, without pyplot.

`matplotlib.figure.Figure` + `savefig` into a buffer uses the Agg renderer directly: no global
backend is switched, no window is opened, no figure is left registered (pyplot's state would
leak figures across reports).
"""

from __future__ import annotations

import io

import numpy as np

from bench.figures import FigureSpec
from rt2edge.optional import require

WIDTH, HEIGHT, DPI = 7.0, 3.6, 100


def _short(label: str, width: int = 28) -> str:
    return label if len(label) <= width else "..." + label[-(width - 3):]


def _bars(ax, spec: FigureSpec, stacked: bool) -> None:
    x = np.arange(len(spec.categories))
    n = max(1, len(spec.series))
    width = 0.8 if stacked else 0.8 / n
    bottom = np.zeros(len(spec.categories))
    for i, s in enumerate(spec.series):
        values = np.asarray(s.y, dtype=float)
        if stacked:
            ax.bar(x, values, width, bottom=bottom, label=s.name)
            bottom += values
        else:
            ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=_short(s.name))
    ax.set_xticks(x)
    ax.set_xticklabels([_short(c, 22) for c in spec.categories], rotation=15, ha="right", fontsize=8)


def _draw(ax, spec: FigureSpec) -> None:
    if spec.kind == "box":
        data = [s.y for s in spec.series]
        ax.boxplot(data, positions=np.arange(1, len(data) + 1), widths=0.5)
        ax.set_xticks(np.arange(1, len(data) + 1))
        ax.set_xticklabels([_short(s.name, 22) for s in spec.series], rotation=15, ha="right", fontsize=8)
        ax.set_yscale("log")
    elif spec.kind in ("scatter", "pareto"):
        for s in spec.series:
            if s.name == "Pareto front":
                ax.plot(s.x, s.y, "k--", lw=1, label=s.name)
            else:
                ax.scatter(s.x, s.y, s=40, label=_short(s.name))
        if spec.kind == "scatter":
            ax.set_yscale("log")
        else:  # accuracies are fractions: a fixed [0, 1] axis keeps reports comparable
            ax.set_ylim(-0.02, 1.05)
    elif spec.kind == "line":
        for s in spec.series:
            if s.y:
                ax.plot(s.x, s.y, marker="o", label=_short(s.name))
    elif spec.kind in ("stacked", "grouped"):
        _bars(ax, spec, stacked=spec.kind == "stacked")
    else:
        raise ValueError(f"unknown figure kind {spec.kind!r}")
    if spec.kind != "box" and spec.series:
        ax.legend(fontsize=7, loc="best")
    if ax.get_yscale() == "log":  # plain numbers (12, 30) read better than 1.2x10^1 on a ms axis
        from matplotlib.ticker import ScalarFormatter

        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="y", which="minor", labelsize=7)


def render_png(spec: FigureSpec) -> bytes:
    """PNG bytes of one figure."""
    require("matplotlib", extra="toolkit", purpose="the plots of the bench report")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, HEIGHT), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    _draw(ax, spec)
    ax.set_title(spec.title, fontsize=10)
    ax.set_xlabel(spec.xlabel, fontsize=9)
    ax.set_ylabel(spec.ylabel, fontsize=9)
    ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
