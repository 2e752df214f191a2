"""DICOM CT series: discovery, axial-series selection, slice ordering, HU conversion and geometry checks.

Rules (the same for LIDC-IDRI and a hospital's own exports):

* **Discovery.** Every file under the source tree is tried as DICOM (headers only). Files that are not DICOM
  (LIDC's XML annotations, READMEs) are ignored; a file named ``.dcm`` that is not DICOM, a header cut short
  and a CT file shorter than its pixel data are reported as corrupt, by name, and left out. Slices are
  grouped by SeriesInstanceUID.
* **Selection.** A slice is usable when it is CT (Modality ``CT``, CT Image Storage SOP class), is not a
  localizer/scout (ImageType), and has ImagePositionPatient, ImageOrientationPatient and PixelSpacing. A series
  is an axial candidate when it keeps at least ``min_slices`` usable slices and its slice normal is within 45°
  of the patient's z axis. One case per patient (PatientID): the candidate with the most slices (ties:
  thinnest slice spacing, then finest pixel spacing, then the smallest UID); the others are fallbacks, tried
  in that order when it cannot be loaded. ``all_series`` makes every candidate its own case.
* **Ordering.** Slices are sorted by ImagePositionPatient projected on the slice normal
  (row direction × column direction), never by file name or InstanceNumber (which only breaks ties).
* **Geometry checks.** Gantry tilt (slice positions not moving along the normal) beyond ``max_tilt_deg`` is
  skipped; duplicate positions keep the slice with the lowest InstanceNumber; gaps up to ``max_gap_factor`` ×
  the median spacing (irregular spacing, a missing slice) are interpolated onto a regular grid, larger gaps
  skip the case. Every such decision is returned as a note or a reason.
* **Intensities.** HU = stored value × RescaleSlope + RescaleIntercept (per slice). Pixels equal to
  PixelPaddingValue and out-of-field values below -1500 HU (scanners write -2000 or -3024) become air (-1000).

The loaded series keeps its DICOM (LPS) geometry; :func:`to_sitk_image` turns it into a SimpleITK image that
:mod:`prdit.data.preprocess` resamples onto the canonical LPS grid.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prdit.errors import DataError
from prdit.hu import AIR_HU, OUT_OF_FIELD_HU

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")  # a file named like this that is not DICOM is reported as corrupt
_POSITION_TOLERANCE_MM = 0.01  # slices closer than this along the normal share one position
_REGULAR_TOLERANCE = 0.02  # relative deviation of a gap from the median that still counts as regular


@dataclass(frozen=True)
class SliceHeader:
    """The header fields of one DICOM file that series selection and ordering need."""

    path: Path
    series_uid: str
    study_uid: str
    patient_id: str
    modality: str
    sop_class_uid: str
    image_type: tuple[str, ...]
    series_description: str
    rows: int
    columns: int
    position: tuple[float, float, float] | None  # ImagePositionPatient (LPS, mm)
    orientation: tuple[float, ...] | None  # ImageOrientationPatient: row direction, column direction
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) = (sy, sx) mm
    instance_number: int | None

    @property
    def normal(self) -> np.ndarray:
        row, col = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])  # type: ignore[index]
        return np.cross(row, col)

    def unusable_reason(self) -> str | None:
        """Why this slice cannot belong to an axial CT volume, or None."""
        if self.modality != "CT":
            return f"modality {self.modality or 'missing'}"
        if self.sop_class_uid and self.sop_class_uid != CT_IMAGE_STORAGE:
            return f"SOP class {self.sop_class_uid} is not CT Image Storage"
        if {"LOCALIZER", "SCOUT"} & {t.upper() for t in self.image_type}:
            return "localizer/scout image"
        if self.position is None or self.orientation is None or self.pixel_spacing is None:
            return "no ImagePositionPatient/ImageOrientationPatient/PixelSpacing"
        return None


@dataclass
class DicomSeries:
    """The usable slices of one SeriesInstanceUID (in discovery order, not yet sorted)."""

    uid: str
    slices: list[SliceHeader]

    @property
    def patient_id(self) -> str:
        return self.slices[0].patient_id

    @property
    def description(self) -> str:
        return self.slices[0].series_description

    @property
    def folder(self) -> Path:
        return Path(os.path.commonpath([str(s.path.parent) for s in self.slices]))

    def slice_spacing(self) -> float:
        """Median distance between neighbouring slice positions along the normal (0 for one slice)."""
        positions = np.sort([np.dot(np.asarray(s.position), self.slices[0].normal) for s in self.slices])
        gaps = np.diff(positions)
        gaps = gaps[gaps > _POSITION_TOLERANCE_MM]
        return float(np.median(gaps)) if gaps.size else 0.0


@dataclass
class DicomCase:
    """One chosen series, the unit of work of the LIDC pipeline (picklable for worker processes).

    ``alternatives`` are the patient's other axial series in rank order, tried when ``series`` cannot be loaded.
    """

    case_id: str
    series: DicomSeries
    alternatives: list[DicomSeries] = field(default_factory=list)


@dataclass
class CTSeries:
    """A loaded series: HU slices ``[n, rows, cols]`` on a regular grid with their DICOM geometry."""

    hu: np.ndarray  # float32 [n, rows, cols], sorted along the normal
    origin: np.ndarray  # LPS position of the first voxel (mm)
    direction: np.ndarray  # 3x3, columns: row direction, column direction, slice normal
    spacing: tuple[float, float, float]  # (sx between columns, sy between rows, sz between slices) mm
    notes: list[str] = field(default_factory=list)
    bad_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


# ----------------------------------------------------------------------------------------------------------
# Discovery
# ----------------------------------------------------------------------------------------------------------


def _floats(value, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _header(path: Path, ds) -> SliceHeader:
    instance = ds.get("InstanceNumber")
    return SliceHeader(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        patient_id=str(ds.get("PatientID", "")),
        modality=str(ds.get("Modality", "")),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        image_type=tuple(str(t) for t in (ds.get("ImageType") or ())),
        series_description=str(ds.get("SeriesDescription", "")),
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        instance_number=int(instance) if instance not in (None, "") else None,
    )


def read_slice_header(path: str | os.PathLike) -> SliceHeader | None:
    """Header of a DICOM file, None when the file is not DICOM; :class:`DataError` when it is corrupt."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRLittleEndian

    path = Path(path)
    try:
        with warnings.catch_warnings():  # cut headers warn about invalid values (read lazily); we raise instead
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            header = _header(path, ds)
            bits = int(ds.get("BitsAllocated", 16) or 16)
            compressed = ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian).is_compressed
    except InvalidDicomError:
        if path.suffix.lower() in DICOM_SUFFIXES:
            raise DataError(f"{path}: named like DICOM but has no DICOM header (truncated or not DICOM)") from None
        return None
    except Exception as error:  # pydicom raises many types for truncated or garbled headers
        raise DataError(f"{path}: corrupt DICOM header ({type(error).__name__}: {error})") from None
    if not header.series_uid:
        raise DataError(f"{path}: DICOM file without SeriesInstanceUID (truncated header?)")
    if header.sop_class_uid == CT_IMAGE_STORAGE:
        # pydicom returns what it parsed before the end of a cut file, so check that the image is all there.
        if header.rows == 0 or header.columns == 0:
            raise DataError(f"{path}: incomplete CT header without Rows/Columns (truncated file?)")
        expected = header.rows * header.columns * bits // 8
        if not compressed and path.stat().st_size < expected:
            size = path.stat().st_size
            raise DataError(f"{path}: file is {size} bytes, shorter than its {expected} bytes of pixels (truncated)")
    return header


def scan_headers(root: str | os.PathLike, recursive: bool = True) -> tuple[list[SliceHeader], list[tuple[str, str]]]:
    """Headers of every DICOM file under ``root`` (in its subfolders too when ``recursive``) and the (path, reason)
    of corrupt ones."""
    root = Path(root)
    if root.is_file():
        files = [root]
    else:
        files = sorted(p for p in (root.rglob("*") if recursive else root.iterdir()) if p.is_file())
    headers, corrupt = [], []
    for path in files:
        try:
            header = read_slice_header(path)
        except DataError as error:
            corrupt.append((str(path), str(error)))
            continue
        if header is not None:
            headers.append(header)
    return headers, corrupt


def group_series(headers: list[SliceHeader]) -> tuple[list[DicomSeries], list[tuple[str, str]]]:
    """Usable slices grouped by SeriesInstanceUID, and (series, reason) for every series that is not a candidate."""
    by_uid: dict[str, list[SliceHeader]] = {}
    for header in headers:
        by_uid.setdefault(header.series_uid, []).append(header)
    series, rejected = [], []
    for uid in sorted(by_uid):
        members = by_uid[uid]
        usable = [h for h in members if h.unusable_reason() is None]
        if not usable:
            rejected.append((_series_label(members), members[0].unusable_reason() or "no usable slices"))
            continue
        series.append(DicomSeries(uid, sorted(usable, key=lambda h: str(h.path))))
    return series, rejected


def _series_label(slices: list[SliceHeader]) -> str:
    first = slices[0]
    description = first.series_description or "no description"
    return f"{first.patient_id or '?'} series {first.series_uid} ({description}) in {first.path.parent}"


def axial_rejection_reason(series: DicomSeries, min_slices: int = 10) -> str | None:
    """Why ``series`` is not an axial CT volume, or None."""
    if len(series.slices) < min_slices:
        return f"{len(series.slices)} usable slice(s), fewer than {min_slices}"
    normal = series.slices[0].normal
    if abs(normal[2]) < np.cos(np.deg2rad(45.0)):
        return f"not axial (slice normal {np.round(normal, 3).tolist()})"
    return None


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unknown"


def select_cases(
    series: list[DicomSeries], all_series: bool = False, min_slices: int = 10
) -> tuple[list[DicomCase], list[tuple[str, str]]]:
    """The axial CT series to convert (one per patient unless ``all_series``) and (series, reason) for the rest."""
    candidates, rejected = [], []
    for item in series:
        reason = axial_rejection_reason(item, min_slices)
        if reason is None:
            candidates.append(item)
        else:
            rejected.append((_series_label(item.slices), reason))
    by_patient: dict[str, list[DicomSeries]] = {}
    for item in candidates:
        by_patient.setdefault(item.patient_id or item.uid, []).append(item)
    cases = []
    for patient in sorted(by_patient):
        ranked = sorted(
            by_patient[patient],
            key=lambda s: (-len(s.slices), s.slice_spacing(), min(s.slices[0].pixel_spacing or (0.0,)), s.uid),
        )
        if all_series:
            for item in ranked:
                suffix = f"_{item.uid.rsplit('.', 1)[-1]}" if len(ranked) > 1 else ""
                cases.append(DicomCase(_safe_id(patient) + suffix, item))
            continue
        cases.append(DicomCase(_safe_id(patient), ranked[0], ranked[1:]))
        for item in ranked[1:]:
            rejected.append((_series_label(item.slices), f"patient has a larger axial series ({ranked[0].uid}); kept as a fallback"))
    return cases, rejected


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def _slice_hu(path: Path) -> np.ndarray:
    """HU pixels of one slice: modality rescale, padding and out-of-field values set to air."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
    except Exception as error:  # truncated pixel data, unsupported compression, garbled file
        hint = "; install pylibjpeg or gdcm for compressed DICOM" if "decompress" in str(error).lower() else ""
        raise DataError(f"{path}: cannot read pixel data ({type(error).__name__}: {error}){hint}") from None
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        hu = stored.astype(np.float64) * slope + intercept
    if not np.isfinite(hu).all() or np.abs(hu).max(initial=0) > 1e6:
        raise DataError(f"{path}: RescaleSlope {slope} and RescaleIntercept {intercept} give impossible HU values")
    hu = hu.astype(np.float32)
    padding = ds.get("PixelPaddingValue")
    if padding is not None:
        hu[stored == int(padding)] = AIR_HU
    hu[hu < OUT_OF_FIELD_HU] = AIR_HU
    return hu


def _check_consistent(slices: list[SliceHeader]) -> None:
    first = slices[0]
    for other in slices[1:]:
        if (other.rows, other.columns) != (first.rows, first.columns):
            raise DataError(f"{other.path}: slice size {other.rows}x{other.columns} differs from {first.rows}x{first.columns}")
        if not np.allclose(other.orientation, first.orientation, atol=1e-3):  # type: ignore[arg-type]
            raise DataError(f"{other.path}: ImageOrientationPatient differs from the rest of the series")
        if not np.allclose(other.pixel_spacing, first.pixel_spacing, rtol=1e-3):  # type: ignore[arg-type]
            raise DataError(f"{other.path}: PixelSpacing differs from the rest of the series")


def _regular_grid(hu: np.ndarray, positions: np.ndarray, step: float) -> np.ndarray:
    """Linear interpolation of slices at ascending ``positions`` onto a grid with spacing ``step`` from the first."""
    count = int(np.floor((positions[-1] - positions[0]) / step + 1e-6)) + 1
    targets = positions[0] + step * np.arange(count)
    upper = np.clip(np.searchsorted(positions, targets, side="right"), 1, len(positions) - 1)
    lower = upper - 1
    weight = ((targets - positions[lower]) / (positions[upper] - positions[lower])).astype(np.float32)
    weight = np.clip(weight, 0.0, 1.0)[:, None, None]
    return (1.0 - weight) * hu[lower] + weight * hu[upper]


def load_series(series: DicomSeries, max_gap_factor: float = 2.0, max_tilt_deg: float = 0.5) -> CTSeries:
    """Read, order and check a series; :class:`DataError` with the reason when it cannot become a volume."""
    _check_consistent(series.slices)
    first = series.slices[0]
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])  # type: ignore[index]
    normal = np.cross(row, col)

    # Order from the headers, then read the pixels straight into their place (one copy of a large series).
    slices = sorted(series.slices, key=lambda h: (float(np.dot(np.asarray(h.position), normal)), h.instance_number or 0))
    hu = np.empty((len(slices), first.rows, first.columns), dtype=np.float32)
    readable = np.ones(len(slices), dtype=bool)
    bad_files = []
    for k, header in enumerate(slices):
        try:
            hu[k] = _slice_hu(header.path)
        except (DataError, ValueError) as error:  # ValueError: pixel array shape differs from Rows x Columns
            readable[k] = False
            bad_files.append((str(header.path), str(error)))
    if readable.sum() < 2:
        raise DataError(f"{series.folder}: fewer than 2 readable slices in series {series.uid}")
    if not readable.all():
        hu = hu[readable]
        slices = [h for h, ok in zip(slices, readable) if ok]
    positions = np.array([h.position for h in slices])
    projections = positions @ normal

    notes = [f"skipped unreadable file {Path(path).name}" for path, _ in bad_files]
    keep = np.concatenate([[True], np.diff(projections) > _POSITION_TOLERANCE_MM])
    if not keep.all():
        notes.append(f"dropped {int((~keep).sum())} slice(s) duplicating a position")
        hu, projections, positions = hu[keep], projections[keep], positions[keep]
    if len(projections) < 2:
        raise DataError(f"{series.folder}: all slices of series {series.uid} share one position")

    travel = positions[-1] - positions[0]
    tilt = np.degrees(np.arccos(np.clip(abs(np.dot(travel, normal)) / np.linalg.norm(travel), 0.0, 1.0)))
    if tilt > max_tilt_deg:
        raise DataError(
            f"{series.folder}: gantry tilt of {tilt:.1f} degrees (limit {max_tilt_deg}); tilted series are not supported"
        )

    gaps = np.diff(projections)
    step = float(np.median(gaps))
    if np.abs(gaps - step).max() <= _REGULAR_TOLERANCE * step:
        step = float(gaps.mean())
    elif gaps.max() <= max_gap_factor * step * (1 + _REGULAR_TOLERANCE):
        missing = int(np.clip(np.round(gaps / step) - 1, 0, None).sum())
        what = f"{missing} missing slice(s)" if missing else f"irregular spacing {gaps.min():.3g}-{gaps.max():.3g} mm"
        notes.append(f"{what}: interpolated onto a regular {step:.3g} mm grid")
        hu = _regular_grid(hu, projections, step)
    else:
        where = int(np.argmax(gaps))
        raise DataError(
            f"{series.folder}: gap of {gaps[where]:.3g} mm after slice position {projections[where]:.3g} mm is more than "
            f"{max_gap_factor} x the {step:.3g} mm slice spacing (missing slices)"
        )
    sy, sx = first.pixel_spacing  # type: ignore[misc]
    return CTSeries(
        hu=hu.astype(np.float32, copy=False),
        origin=positions[0].astype(np.float64),
        direction=np.column_stack([row, col, normal]),
        spacing=(float(sx), float(sy), step),
        notes=notes,
        bad_files=bad_files,
    )


def to_sitk_image(series: CTSeries):
    """The series as a SimpleITK image with its DICOM geometry (x = columns, y = rows, z = slices)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(series.hu)
    image.SetSpacing(series.spacing)
    image.SetOrigin(tuple(float(v) for v in series.origin))
    image.SetDirection(tuple(float(v) for v in series.direction.ravel()))
    return image
