"""RAD-ChestCT volumes (``.npz``) and their geometry convention.

The public RAD-ChestCT release (Draelos et al., 2021) stores each scan as a compressed ``.npz`` whose array
``ct`` holds Hounsfield units, already resampled to 0.8 x 0.8 x 0.8 mm and ordered [slices, rows, columns].
The files carry no spacing or orientation. Convention used here (and documented in the manifest): spacing
``RAD_SPACING_MM`` isotropic unless the file has a ``spacing`` entry (sz, sy, sx) or the user passes another,
and the array is taken as ``[z, y, x]`` in our LPS convention (axial slices displayed like a radiology image,
slice index ascending towards the head). Check one volume with ``prdit preview`` before training on a copy
that was exported differently.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from prdit.errors import DataError
from prdit.io import load_volume

RAD_NPZ_KEY = "ct"
RAD_SPACING_MM = 0.8
RAD_LABEL_KEYS = ("labels", "label", "seg", "mask")  # the label map's array in a .npz (prdit data rad --labels)


def _has_spacing_entry(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return "spacing.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def read_rad_volume(
    path: str | os.PathLike, key: str = RAD_NPZ_KEY, spacing_mm: float | None = None
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """HU volume float32 ``[z, y, x]`` and its spacing (sz, sy, sx) from a RAD-ChestCT ``.npz``.

    Spacing: ``spacing_mm`` isotropic when given, else the file's ``spacing`` entry, else 0.8 mm. A missing key,
    a truncated file or a non-3D array is a :class:`DataError` that names the file and the keys it holds.
    """
    path = Path(path)
    if not path.name.lower().endswith(".npz"):
        raise DataError(f"{path}: RAD-ChestCT volumes are .npz files")
    volume = load_volume(path, npz_key=key)
    if spacing_mm is not None:
        spacing = (float(spacing_mm),) * 3
    elif _has_spacing_entry(path):
        spacing = volume.spacing
    else:
        spacing = (RAD_SPACING_MM,) * 3
    return volume.array, spacing


def read_rad_labels(path: str | os.PathLike, scan_spacing: tuple[float, float, float]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A RAD-ChestCT case's label map ``[z, y, x]`` and its spacing (sz, sy, sx), read like its volume: a ``.npz``
    (array ``labels``, ``label``, ``seg`` or ``mask``, or its only array; its ``spacing`` entry, else the scan's
    spacing) or ``.npy`` array in the scan's own axis order, or a NIfTI (its affine's spacing)."""
    path = Path(path)
    key = None
    if path.name.lower().endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as archive:
                key = next((k for k in RAD_LABEL_KEYS if k in archive.files), None)
        except (OSError, ValueError, zipfile.BadZipFile):
            raise DataError(f"{path}: cannot read the .npz (truncated or corrupt?)") from None
    volume = load_volume(path, npz_key=key)
    geometric = path.name.lower().endswith((".nii", ".nii.gz")) or (path.name.lower().endswith(".npz") and _has_spacing_entry(path))
    return volume.array, (tuple(volume.spacing) if geometric else tuple(scan_spacing))  # type: ignore[return-value]
