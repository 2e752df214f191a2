"""PNG previews of CT volumes: a montage of the central axial, coronal and sagittal slices, and sample grids.

Slices follow the radiological display convention of prdit's LPS ``[z, y, x]`` arrays: axial with anterior at
the top and the patient's right on the left of the image, coronal and sagittal with superior at the top, each
drawn with its physical aspect ratio from the voxel spacing. Figures are built on
:class:`matplotlib.figure.Figure` with the Agg canvas, so no pyplot state is touched (safe in training loops
and worker processes).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from prdit.errors import PrditError
from prdit.io import atomic_write_bytes, load_volume

#: Display windows, name -> (level, width) in HU.
WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinal": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "wide": (0.0, 2000.0),
}

VIEWS = ("axial", "coronal", "sagittal")
DPI = 100


def resolve_window(window: str | tuple[float, float]) -> tuple[float, float]:
    """``(level, width)`` of a named window or of an explicit pair."""
    if isinstance(window, str):
        if window not in WINDOWS:
            raise PrditError(f"unknown window {window!r}: use one of {', '.join(WINDOWS)} or a (level, width) pair in HU")
        return WINDOWS[window]
    try:
        level, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise PrditError(f"window {window!r} must be a name ({', '.join(WINDOWS)}) or a (level, width) pair in HU") from None
    if not width > 0:
        raise PrditError(f"window width {width} must be positive")
    return level, width


def central_slice(volume: np.ndarray, spacing: Sequence[float], view: str) -> tuple[np.ndarray, float]:
    """The central ``view`` slice as a display image (rows top to bottom) and its pixel aspect (height / width).

    axial: rows y (anterior at the top), columns x (patient right on the left);
    coronal: rows z flipped (superior at the top), columns x; sagittal: rows z flipped, columns y (anterior left).
    """
    sz, sy, sx = (float(s) for s in spacing)
    d, h, w = volume.shape
    if view == "axial":
        return volume[d // 2], sy / sx
    if view == "coronal":
        return volume[:, h // 2, :][::-1], sz / sx
    if view == "sagittal":
        return volume[:, :, w // 2][::-1], sz / sy
    raise PrditError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")


def _check_volume(volume: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume, dtype=np.float32)
    while volume.ndim > 3 and volume.shape[0] == 1:  # [1, D, H, W] model outputs
        volume = volume[0]
    if volume.ndim != 3:
        raise PrditError(f"a preview needs a 3D [D, H, W] volume, got shape {volume.shape}")
    return volume


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise PrditError(f"spacing {spacing!r} must be three positive numbers (sz, sy, sx) in mm")
    return values


def _show(axes, image: np.ndarray, aspect: float, level: float, width: float):
    axes.set_facecolor("black")
    axes.set_xticks([]), axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_visible(False)
    return axes.imshow(image, cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=aspect, interpolation="nearest")


def _panel_width(volume: np.ndarray, spacing: tuple[float, float, float], views: Sequence[str]) -> float:
    """Width (inches) of a panel of unit height: the widest physical aspect among the views."""
    ratios = []
    for view in views:
        image, aspect = central_slice(volume, spacing, view)
        ratios.append(image.shape[1] / (image.shape[0] * aspect))
    return max(ratios)


def render_montage(
    volume_hu: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    window: str | tuple[float, float] = "lung",
    title: str | None = None,
) -> Figure:
    """A figure with the central axial, coronal and sagittal slices of an HU volume and an HU colour bar."""
    volume = _check_volume(volume_hu)
    spacing = _check_spacing(spacing)
    level, width = resolve_window(window)
    panel = 3.2
    figure = Figure(figsize=(3 * panel * _panel_width(volume, spacing, VIEWS) + 0.9, panel + 0.7), dpi=DPI, facecolor="black")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(1, 4, width_ratios=[1, 1, 1, 0.06], left=0.01, right=0.93, bottom=0.04, top=0.86, wspace=0.04)
    image = None
    for column, view in enumerate(VIEWS):
        axes = figure.add_subplot(grid[0, column])
        slice_, aspect = central_slice(volume, spacing, view)
        image = _show(axes, slice_, aspect, level, width)
        axes.set_title(view, color="white", fontsize=9)
    assert image is not None  # one image per view
    colorbar = figure.colorbar(image, cax=figure.add_subplot(grid[0, 3]))
    colorbar.set_label("HU", color="white", fontsize=8)
    colorbar.ax.tick_params(colors="white", labelsize=7)
    name = window if isinstance(window, str) else "custom"
    size = "x".join(str(n) for n in volume.shape)
    mm = "x".join(f"{s:g}" for s in spacing)
    header = f"{title}\n" if title else ""
    figure.suptitle(f"{header}{size} @ {mm} mm, {name} window (L {level:g}, W {width:g})", color="white", fontsize=9)
    return figure


def _save(figure: Figure, out_png: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor=figure.get_facecolor())
    out_png = Path(out_png)
    atomic_write_bytes(out_png, buffer.getvalue())  # previews are derived files: overwriting them is fine
    return out_png


def save_montage(
    volume_or_path: np.ndarray | str | os.PathLike,
    out_png: str | os.PathLike,
    window: str | tuple[float, float] = "lung",
    title: str | None = None,
    spacing: Sequence[float] | None = None,
) -> Path:
    """Write :func:`render_montage` of an HU array or a volume file (whose spacing is used unless given)."""
    if isinstance(volume_or_path, (str, os.PathLike)):
        loaded = load_volume(volume_or_path)
        volume, spacing = loaded.array, spacing if spacing is not None else loaded.spacing
    else:
        volume = volume_or_path
    return _save(render_montage(volume, spacing if spacing is not None else (1.0, 1.0, 1.0), window, title), out_png)


def save_grid(
    volumes: Sequence[np.ndarray],
    out_png: str | os.PathLike,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    window: str | tuple[float, float] = "lung",
    titles: Sequence[str] | None = None,
    views: Sequence[str] = ("axial", "coronal"),
) -> Path:
    """One PNG with a column per HU volume and a row per view (sample sets, training previews)."""
    volumes = [_check_volume(v) for v in volumes]
    if not volumes:
        raise PrditError("save_grid needs at least one volume")
    if titles is not None and len(titles) != len(volumes):
        raise PrditError(f"save_grid got {len(titles)} titles for {len(volumes)} volumes")
    spacing = _check_spacing(spacing)
    level, width = resolve_window(window)
    for view in views:
        if view not in VIEWS:
            raise PrditError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")
    panel = 2.4
    aspect_width = max(_panel_width(v, spacing, views) for v in volumes)
    figure = Figure(figsize=(len(volumes) * panel * aspect_width, len(views) * panel + 0.5), dpi=DPI, facecolor="black")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(len(views), len(volumes), left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.03, hspace=0.05)
    for column, volume in enumerate(volumes):
        for row, view in enumerate(views):
            axes = figure.add_subplot(grid[row, column])
            _show(axes, *central_slice(volume, spacing, view), level, width)
            if row == 0 and titles is not None:
                axes.set_title(titles[column], color="white", fontsize=8)
    name = window if isinstance(window, str) else "custom"
    figure.suptitle(f"{', '.join(views)} | {name} window (L {level:g}, W {width:g}) HU", color="white", fontsize=9)
    return _save(figure, out_png)
