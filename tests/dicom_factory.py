"""Synthetic CT series written with pydicom (CT Image Storage, realistic tags) for the data tests.

The test volumes are analytic: HU = ``ramp_hu(x, y, z)`` at every LPS point (mm), a linear function that
trilinear interpolation reproduces exactly and that differs along every axis, so an orientation, spacing or
origin error anywhere shows up as a wrong value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RAMP = (400.0, 15.0, -8.0, 12.0)  # HU = a + bx*x + by*y + bz*z


def ramp_hu(x, y, z):
    a, bx, by, bz = RAMP
    return a + bx * np.asarray(x) + by * np.asarray(y) + bz * np.asarray(z)


def ramp_volume(shape=(16, 32, 32), spacing=(2.5, 0.7, 0.7), origin=None):
    """Integer HU volume [z, y, x] of the ramp sampled on an LPS grid; returns (hu, origin (x, y, z))."""
    d, h, w = shape
    sz, sy, sx = spacing
    if origin is None:
        origin = (-(w - 1) * sx / 2, -(h - 1) * sy / 2, -(d - 1) * sz / 2)
    axes = (np.arange(d) * sz + origin[2], np.arange(h) * sy + origin[1], np.arange(w) * sx + origin[0])
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return np.rint(ramp_hu(x, y, z)).astype(np.float32), tuple(float(v) for v in origin)


def write_series(
    folder,
    hu,
    spacing=(2.5, 0.7, 0.7),
    origin=(0.0, 0.0, 0.0),
    *,
    series_uid=None,
    patient_id="PAT-0001",
    study_uid="1.2.3.4",
    description="CHEST 2.5mm",
    intercept=-1024.0,
    slope=1.0,
    signed=False,
    row_direction=1.0,
    padding_value=None,
    tilt_deg=0.0,
    shuffle_seed=0,
    slices=None,
    prefix="IMG",
) -> tuple[str, list[Path]]:
    """Write ``hu`` [z, y, x] (LPS, voxel [0,0,0] at ``origin`` (x, y, z)) as one DICOM file per slice.

    Files get shuffled names and InstanceNumber counts from the head down (as scanners do). ``row_direction=-1``
    stores the columns right-to-left (ImageOrientationPatient -1\\0\\0\\0\\1\\0). ``tilt_deg`` shifts each slice
    along y as a tilted gantry does. ``slices`` limits which z indices are written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    d, h, w = hu.shape
    sz, sy, sx = spacing
    indices = list(range(d)) if slices is None else list(slices)
    names = np.random.default_rng(shuffle_seed).permutation(len(indices))
    paths = []
    for rank, k in enumerate(indices):
        image = hu[k][:, ::-1] if row_direction < 0 else hu[k]
        x0 = origin[0] + ((w - 1) * sx if row_direction < 0 else 0.0)
        position = (x0, origin[1] + k * sz * np.tan(np.deg2rad(tilt_deg)), origin[2] + k * sz)
        stored = np.rint((image - intercept) / slope)
        if padding_value is not None:
            stored[:2, :2] = padding_value  # outside the reconstructed field of view
        path = folder / f"{prefix}{names[rank]:04d}.dcm"
        _write_slice(
            path, stored.astype(np.int16 if signed else np.uint16), position, (row_direction, 0, 0, 0, 1, 0), (sy, sx), sz,
            series_uid=series_uid, patient_id=patient_id, study_uid=study_uid, description=description, instance=d - k,
            intercept=intercept, slope=slope, padding_value=padding_value,
        )
        paths.append(path)
    return series_uid, paths


def _write_slice(path, stored, position, orientation, pixel_spacing, thickness, *, series_uid, patient_id, study_uid,
                 description, instance, intercept=-1024.0, slope=1.0, padding_value=None,
                 image_type=("ORIGINAL", "PRIMARY", "AXIAL")):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.ImageType = list(image_type)
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.SliceThickness = thickness
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = slope
    if padding_value is not None:
        ds.PixelPaddingValue = int(padding_value)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_localizer(folder, patient_id="PAT-0001", study_uid="1.2.3.4") -> Path:
    """A single coronal scout image in its own series."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / "SCOUT0001.dcm"
    _write_slice(
        path, np.full((32, 32), 1024, np.uint16), (-100.0, 0.0, 200.0), (1, 0, 0, 0, 0, -1), (1.0, 1.0), 1.0,
        series_uid=generate_uid(), patient_id=patient_id, study_uid=study_uid, description="SCOUT", instance=1,
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    return path


def truncate(path, keep_fraction=0.5) -> Path:
    """Cut a file to a fraction of its size, as an interrupted download does."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep_fraction)])
    return Path(path)


def read_instance(path) -> int:
    return int(pydicom.dcmread(path, stop_before_pixels=True).InstanceNumber)
