"""Training curves of a run as one inline SVG (matplotlib's SVG backend: no script, no network, text kept as text)."""

from __future__ import annotations

import io
import math
from typing import Any

from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure

# Each panel: title, y label, [(record key, legend label)], log scale.
PANELS = (
    ("loss", "loss", [("loss", "training loss"), ("val_mse", "validation MSE of x0_hat")], True),
    ("learning rate", "lr", [("lr", "learning rate")], False),
    ("speed", "steps / s", [("steps_per_s", "training speed")], False),
)
COLOURS = ("#4fb3ff", "#f0883e", "#3fb950")
TEXT, MUTED, GRID, BACKGROUND = "#e6edf3", "#8b949e", "#2a313c", "#161b22"


def series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in records
              if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and not r.get("skipped_step")]
    return [p[0] for p in points], [p[1] for p in points]


def curves_svg(records: list[dict], title: str = "") -> str | None:
    """The run's loss (with validation), learning rate and speed against step; None when nothing was logged."""
    panels = [(name, unit, [(label, *series(records, key)) for key, label in keys], log)
              for name, unit, keys, log in PANELS]
    panels = [(name, unit, [line for line in lines if line[1]], log) for name, unit, lines, log in panels]
    panels = [panel for panel in panels if panel[2]]
    if not panels:
        return None
    figure = Figure(figsize=(3.3 * len(panels), 2.5), dpi=100, facecolor=BACKGROUND)
    FigureCanvasSVG(figure)
    for index, (name, unit, lines, log) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1, facecolor=BACKGROUND)
        for colour, (label, steps, values) in zip(COLOURS, lines):
            style: dict[str, Any] = {"marker": "o", "markersize": 3} if len(steps) < 30 else {}
            axes.plot(steps, values, color=colour, linewidth=1.4, label=label, **style)
        if log and all(v > 0 for _, _, values in lines for v in values):
            axes.set_yscale("log")
        axes.set_title(name, color=TEXT, fontsize=10)
        axes.set_xlabel("step", color=MUTED, fontsize=8)
        axes.set_ylabel(unit, color=MUTED, fontsize=8)
        axes.tick_params(colors=MUTED, labelsize=7)
        axes.grid(color=GRID, linewidth=0.6, which="both")
        for spine in axes.spines.values():
            spine.set_color(GRID)
        if len(lines) > 1:
            axes.legend(fontsize=7, facecolor=BACKGROUND, edgecolor=GRID, labelcolor=TEXT)
    if title:
        figure.suptitle(title, color=TEXT, fontsize=10)
    figure.tight_layout()
    buffer = io.StringIO()
    with _text_as_text():
        figure.savefig(buffer, format="svg", facecolor=BACKGROUND)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML


def _text_as_text():
    import matplotlib

    return matplotlib.rc_context({"svg.fonttype": "none"})
