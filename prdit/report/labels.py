"""Label maps drawn as contours over the report's slices: where a volume's label map comes from (the condition
mask its sidecar records, or ``prdit report --labels``), the checks (SHA256, grid), and the contour pixels.

A voxel is on the contour of its label in a plane when it is labelled (value > 0) and one of its four in-plane
neighbours inside the volume holds another value; the volume's own border is not a boundary. For every voxel the
faces it shares with such a neighbour are stored as bits (:data:`FACE_BITS`, two per axis); the viewer draws a
line along each, so two touching labels show as two thin lines of their colours, and each plane reads the bits of
its own two axes (a slice through a cube's top face is a filled square in 3D terms but an outline on screen).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prdit.data.conditions import LABELS_DIR, PHANTOM_LABELS, read_label_names
from prdit.errors import DataError, PrditError
from prdit.io import load_volume, sha256_file

#: Bit of each voxel face ``(axis of [z, y, x], -1 | +1)`` whose neighbour across it holds another label.
FACE_BITS = {(axis, side): 1 << (2 * axis + (side > 0)) for axis in range(3) for side in (-1, 1)}
#: The two array axes spanning each display plane.
PLANE_AXES = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}

#: Colours of prdit's label names (docs/conditional.md); other names take :data:`OTHER_COLOURS` by value.
LABEL_COLOURS = {"body": "#7ee787", "lung": "#4fb3ff", "bone": "#f0f0f0", "heart": "#ff5c5c", "vessel": "#c678dd",
                 "airway": "#3fd0c0", "fat": "#ffa657"}
OTHER_COLOURS = ("#e3b341", "#ff7eb6", "#a5d6ff", "#d2a8ff", "#ffd33d", "#56d364", "#f778ba", "#79c0ff")


@dataclass
class LabelOverlay:
    """A label map as the viewer draws it: values and contour bits ``[z, y, x]`` on the shown grid."""

    key: str  # the file's SHA256
    source: str
    labels: np.ndarray  # uint8
    edges: np.ndarray  # uint8 FACE_BITS: the faces of each voxel on its label's boundary
    names: dict[str, int]  # name -> value, only values present in the map
    colours: dict[str, str]  # name -> CSS colour

    @property
    def ident(self) -> tuple[str, tuple[int, ...]]:
        """Volumes whose overlays share this embed one copy of it."""
        return self.key, tuple(self.labels.shape)


def contour_faces(labels: np.ndarray) -> np.ndarray:
    """For every labelled voxel, the :data:`FACE_BITS` of the faces across which its neighbour has another value."""
    labels = np.asarray(labels)
    edges = np.zeros(labels.shape, dtype=np.uint8)
    for axis in range(labels.ndim):
        differs = (labels[_cut(axis, 1, None)] != labels[_cut(axis, None, -1)]).astype(np.uint8)  # voxel i+1 vs i
        edges[_cut(axis, 1, None)] |= differs * FACE_BITS[(axis, -1)]
        edges[_cut(axis, None, -1)] |= differs * FACE_BITS[(axis, 1)]
    edges[labels == 0] = 0
    return edges


def on_contour(edges: np.ndarray, plane: str) -> np.ndarray:
    """Where :func:`contour_faces` puts a voxel on its label's outline in the slices of ``plane``."""
    bits = sum(FACE_BITS[(axis, side)] for axis in PLANE_AXES[plane] for side in (-1, 1))
    return (edges & bits) != 0


def _cut(axis: int, start: int | None, stop: int | None) -> tuple[slice, ...]:
    return tuple(slice(start, stop) if a == axis else slice(None) for a in range(3))


def label_colours(names: dict[str, int]) -> dict[str, str]:
    return {name: LABEL_COLOURS.get(name, OTHER_COLOURS[value % len(OTHER_COLOURS)]) for name, value in names.items()}


def _names(path: Path, values: list[int]) -> dict[str, int]:
    """The names of a map's values from the ``labels.json`` beside it (or one folder up); unnamed values are
    ``label N``, and without any file the values of prdit's own label maps are assumed when they fit."""
    try:
        named = read_label_names(path.parent)
    except DataError:
        named = PHANTOM_LABELS if set(values) <= set(PHANTOM_LABELS.values()) else {}
    by_value = {v: n for n, v in named.items()}
    return {by_value.get(v, f"label {v}"): v for v in values}


def load_overlay(path: Path, shape: tuple[int, ...], spacing: tuple[float, ...], factor: int, owner: str) -> LabelOverlay:
    """The label map ``path`` of the volume ``owner`` (full ``shape`` and ``spacing``), reduced by ``factor`` as
    the volume was: nearest neighbour at each block's centre voxel. Another grid is a one-line error."""
    volume = load_volume(path)
    if volume.array.shape != tuple(shape) or not np.allclose(volume.spacing, spacing, rtol=0.01):
        raise PrditError(
            f"{path}: label map is {volume.array.shape} voxels at {_mm(volume.spacing)} mm but {owner} is {tuple(shape)} at "
            f"{_mm(spacing)} mm; pass the label map of that volume (resample it with nearest neighbour to its grid)")
    array = volume.array
    if np.any(array != np.rint(array)) or array.min() < 0 or array.max() > 255:
        raise PrditError(f"{path}: a label map holds integer values 0-255")
    labels = np.ascontiguousarray(array.astype(np.uint8)[tuple(slice(factor // 2, (n // factor) * factor, factor) for n in shape)])
    names = _names(path, sorted(int(v) for v in np.unique(labels) if v))
    return LabelOverlay(sha256_file(path), str(path), labels, contour_faces(labels), names, label_colours(names))


def _mm(spacing) -> str:
    return "×".join(f"{float(s):g}" for s in spacing)


def recorded_mask(volume_path: Path, sidecar: dict, notes: list[str]) -> Path | None:
    """The condition mask a sample's sidecar records, if it is still there; a changed file is drawn with a
    warning (it is not the map the volume was sampled from), a missing one is a note."""
    condition = sidecar.get("condition") or {}
    if not condition.get("mask"):
        return None
    recorded = Path(condition["mask"])
    # the sidecar keeps the path as given to `prdit sample`: relative to where it ran, which may be elsewhere
    candidates = [recorded] if recorded.is_absolute() else [recorded, volume_path.parent / recorded,
                                                           volume_path.parent.parent / recorded]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        notes.append(f"{volume_path.name}: its condition mask {recorded} is not found here; "
                     "pass --labels FILE_OR_DIR to draw it")
        return None
    expected = condition.get("mask_sha256")
    actual = sha256_file(path) if expected else ""
    if expected and actual != expected:
        message = (f"{volume_path.name}: {path} has changed since sampling (SHA256 {actual[:12]}…, the "
                   f"sidecar records {expected[:12]}…); its contours are not the mask this volume was sampled from")
        warnings.warn(message, stacklevel=2)
        notes.append("⚠ " + message)
    return path


def given_mask(labels: str | os.PathLike, volume_path: Path) -> Path | None:
    """``--labels``: one label file for every volume, or a folder holding ``labels/<volume name>`` (a data folder of
    ``prdit data``) or ``<volume name>`` (a folder of label maps; never the volume itself)."""
    labels = Path(labels)
    if labels.is_file():
        return labels
    for candidate in (labels / LABELS_DIR / volume_path.name, labels / volume_path.name):
        if candidate.is_file() and not candidate.samefile(volume_path):
            return candidate
    return None
