"""A messy CT collection for the import tests: mixed formats, spacings 0.6-5 mm, LPS/RAS/oblique geometry,
int16/uint16/float, a stored rescale, a truncated file, a duplicate, non-CT ranges and a near-empty scan.

Every scan samples one analytic body in LPS millimetres: a linear HU ramp inside an ellipsoid, air outside.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from tests.dicom_factory import write_series

CENTER = np.array([6.0, -9.0, 14.0])  # LPS mm
RADII = np.array([55.0, 40.0, 60.0])


def truth_hu(points: np.ndarray) -> np.ndarray:
    """HU at LPS points [..., 3]: a ramp (soft tissue, every axis different) inside the ellipsoid, air outside."""
    x, y, z = (points[..., i] for i in range(3))
    ramp = 30.0 + 1.1 * x - 0.7 * y + 0.9 * z
    return np.where(level(points, 0.0) < 1.0, ramp, -1000.0)


def level(points: np.ndarray, margin: float) -> np.ndarray:
    return (((points - CENTER) / (RADII - margin)) ** 2).sum(axis=-1)


def grid_points(shape_zyx, spacing_xyz, origin, direction) -> np.ndarray:
    """LPS points [z, y, x, 3] of an image's voxels."""
    d, h, w = shape_zyx
    k, j, i = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    index = np.stack([i, j, k], axis=-1) * np.asarray(spacing_xyz)
    return index @ np.asarray(direction).reshape(3, 3).T + np.asarray(origin)


def sitk_scan(path: Path, shape, spacing, direction=np.eye(3), dtype=np.int16, offset=0.0) -> np.ndarray:
    """Write the truth on a grid centred on the body (any SimpleITK format); returns the stored array."""
    spacing, direction = np.asarray(spacing, dtype=float), np.asarray(direction, dtype=float)
    extent = (np.array(shape[::-1]) - 1) * spacing
    origin = CENTER - direction @ (extent / 2)
    hu = truth_hu(grid_points(shape, spacing, origin, direction)) + offset
    stored = np.rint(hu).astype(dtype) if np.issubdtype(dtype, np.integer) else hu.astype(dtype)
    image = sitk.GetImageFromArray(stored)
    image.SetSpacing(tuple(spacing))
    image.SetOrigin(tuple(origin))
    image.SetDirection(tuple(direction.ravel()))
    sitk.WriteImage(image, str(path))
    return stored


def ras_nifti(path: Path, shape_xyz, spacing, dtype=np.int16, slope=None, inter=None) -> None:
    """A NIfTI stored as nibabel users write it: data axes R, A, S (x and y reversed against LPS)."""
    affine = np.diag([*spacing, 1.0])
    extent = (np.array(shape_xyz) - 1) * np.asarray(spacing)
    ras_center = CENTER * np.array([-1, -1, 1])
    affine[:3, 3] = ras_center - extent / 2
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape_xyz), indexing="ij")
    ras = np.stack([i, j, k], axis=-1) * np.asarray(spacing) + affine[:3, 3]
    hu = truth_hu(ras * np.array([-1, -1, 1]))
    stored = np.rint(hu if slope is None else (hu - inter) / slope).astype(dtype)
    image = nib.Nifti1Image(stored, affine)
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    nib.save(image, str(path))


def rotation_z(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def rotation_x(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])



#: Scans that import cleanly (case ids), and those the importer must refuse.
GOOD = ("ras_int16", "a__lps_float", "a__b__oblique", "offset_uint16", "rescaled_uint16", "P7")
REFUSED = ("truncated", "mr_like", "normalised")


def write_messy_collection(src: Path) -> Path:
    """Write the collection into ``src`` (offset_uint16 needs --hu-offset -1024)."""
    (src / "a" / "b").mkdir(parents=True)
    ras_nifti(src / "ras_int16.nii.gz", (190, 140, 26), (0.6, 0.6, 5.0))
    sitk_scan(src / "a" / "lps_float.nrrd", (52, 40, 46), (2.5, 2.5, 2.5), dtype=np.float32)
    sitk_scan(src / "a" / "b" / "oblique.mha", (64, 50, 62), (2.0, 2.0, 2.0), direction=rotation_z(20.0) @ rotation_x(8.0))
    sitk_scan(src / "offset_uint16.mhd", (42, 32, 38), (3.0, 3.0, 3.0), dtype=np.uint16, offset=1024.0)
    ras_nifti(src / "rescaled_uint16.nii", (40, 30, 26), (3.0, 3.0, 5.0), dtype=np.uint16, slope=1.0, inter=-1024.0)
    shutil.copy(src / "a" / "lps_float.nrrd", src / "copy_of_lps.nrrd")
    hu = truth_hu(grid_points((30, 96, 120), (1.0, 1.0, 4.0), CENTER - np.array([59.5, 47.5, 58.0]), np.eye(3)))
    write_series(src / "dicom" / "P7", np.rint(hu), spacing=(4.0, 1.0, 1.0), origin=tuple(CENTER - [59.5, 47.5, 58.0]),
                 patient_id="P7", slices=None)
    data = (src / "ras_int16.nii.gz").read_bytes()
    (src / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    rng = np.random.default_rng(0)
    mr = sitk.GetImageFromArray((np.abs(rng.normal(300, 200, (20, 24, 24)))).astype(np.float32))
    sitk.WriteImage(mr, str(src / "mr_like.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(rng.random((16, 20, 20)).astype(np.float32)), str(src / "normalised.nrrd"))
    empty = np.full((20, 24, 24), -1000, dtype=np.int16)
    empty[10, 12, 12] = 40
    sitk.WriteImage(sitk.GetImageFromArray(empty), str(src / "empty.mha"))
    (src / "notes.txt").write_text("not a scan\n")
    return src
