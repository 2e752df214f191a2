"""What a restore writes: the HU NIfTI with its geometry, a JSON sidecar and a PNG that shows the whole story
(measurement, classical baseline, restoration, uncertainty and, with a truth, the errors of both)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from prdit.io import atomic_write_bytes, atomic_write_text, save_nifti
from prdit.preview import VIEWS, central_slice, resolve_window

#: Display range (HU) of the error rows: 0 to this.
ERROR_RANGE = 300.0


def upsampled_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """The affine of a volume ``factor`` times finer on the same field of view (voxel f*i + (f-1)/2 sits at coarse i)."""
    to_coarse = np.diag([1.0 / factor] * 3 + [1.0])
    to_coarse[:3, 3] = -(factor - 1) / (2 * factor)
    return np.asarray(affine, dtype=np.float64) @ to_coarse


def _panel(figure: Figure, cell, image: np.ndarray, aspect: float, cmap: str, vmin: float, vmax: float):
    axes = figure.add_subplot(cell)
    axes.set_facecolor("black")
    axes.set_xticks([]), axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_visible(False)
    return axes, axes.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect, interpolation="nearest")


def render_restoration(
    rows: list[tuple[str, np.ndarray, str]], spacing: tuple[float, float, float], projections: np.ndarray | None = None,
    window: str = "lung", title: str | None = None, uncertainty_max: float | None = None,
) -> Figure:
    """A figure with one row per ``(label, HU volume [D, H, W], kind)`` (kind: ``hu``, ``std`` or ``error``) and the
    central axial, coronal and sagittal slices as columns; ``projections`` [A, D, U] (X-ray) become a first row."""
    level, width = resolve_window(window)
    n_rows = len(rows) + (projections is not None)
    panel = 2.3
    figure = Figure(figsize=(3 * panel + 2.2, n_rows * panel + 0.6), dpi=100, facecolor="black")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(n_rows, 4, width_ratios=[1, 1, 1, 0.05], left=0.13, right=0.9, bottom=0.01, top=0.93,
                               wspace=0.04, hspace=0.08)
    row = 0
    if projections is not None:
        shown = projections[: len(VIEWS)]
        low, high = float(projections.min()), float(projections.max()) or 1.0
        first = None
        for column, image in enumerate(shown):
            axes, mappable = _panel(figure, grid[row, column], image[::-1], spacing[0] / spacing[2], "gray", low, high)
            axes.set_title(f"view {column + 1}/{len(projections)}", color="white", fontsize=8)
            first = axes if column == 0 else first
        _label(figure, grid, row, first, "measured\nX-ray views", mappable, "line integral")
        row += 1
    for label, volume, kind in rows:
        if kind == "hu":
            cmap, vmin, vmax, unit = "gray", level - width / 2, level + width / 2, "HU"
        elif kind == "std":
            cmap, vmin, vmax, unit = "magma", 0.0, uncertainty_max or max(float(np.nanmax(volume)), 1.0), "HU (std)"
        else:
            cmap, vmin, vmax, unit = "inferno", 0.0, ERROR_RANGE, "|HU error|"
        for column, view in enumerate(VIEWS):
            image, aspect = central_slice(volume, spacing, view)
            axes, mappable = _panel(figure, grid[row, column], image, aspect, cmap, vmin, vmax)
            first = axes if column == 0 else first
            if row == 0:
                axes.set_title(view, color="white", fontsize=9)
        _label(figure, grid, row, first, label, mappable, unit)
        row += 1
    if title:
        figure.suptitle(title, color="white", fontsize=9)
    return figure


def _label(figure: Figure, grid, row: int, first, text: str, mappable, unit: str) -> None:
    first.text(-0.06, 0.5, text, transform=first.transAxes, color="white", fontsize=8, ha="right", va="center")
    colorbar = figure.colorbar(mappable, cax=figure.add_subplot(grid[row, 3]))
    colorbar.set_label(unit, color="white", fontsize=7)
    colorbar.ax.tick_params(colors="white", labelsize=6)


def save_figure(figure: Figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, facecolor=figure.get_facecolor())
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def write_restoration(
    out_dir: Path, restored: np.ndarray, affine: np.ndarray, sidecar: dict, figure: Figure, std: np.ndarray | None = None,
    baseline: np.ndarray | None = None, overwrite: bool = False,
) -> dict[str, Path]:
    """Write restored.nii.gz (int16 HU), restored_std.nii.gz, baseline.nii.gz, restored.json and restored.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "restored.nii.gz"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it or choose another --out")
    paths = {"restored": save_nifti(target, restored, affine=affine, dtype=np.int16, overwrite=overwrite)}
    for name, volume in (("restored_std", std), ("baseline", baseline)):
        if volume is not None:
            paths[name] = save_nifti(out_dir / f"{name}.nii.gz", volume, affine=affine, dtype=np.int16, overwrite=True)
    paths["sidecar"] = out_dir / "restored.json"
    atomic_write_text(paths["sidecar"], json.dumps(sidecar, indent=2) + "\n")
    paths["figure"] = save_figure(figure, out_dir / "restored.png")
    return paths
