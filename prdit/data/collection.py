"""Any folder of CT scans -> a clean training set (``prdit data import``).

Reads every scan under a source folder, recursively: NIfTI, NRRD, MHA/MHD (through SimpleITK, whose readers apply a
file's stored rescale, e.g. NIfTI ``scl_slope``/``scl_inter``) and DICOM series (grouped and loaded as by
``prdit data lidc``, one axial series per patient). Each scan is

1. checked for HU: normalised data (a range of a few units, e.g. [0, 1] floats) is refused; data without air
   (nothing below the body threshold, as CT stored without its rescale intercept, or MR) is refused unless
   ``hu_offset`` is given and the shifted values look like CT; CT-like means a body whose median lies between fat
   and soft tissue;
2. resampled (linear) onto the canonical grid of :mod:`prdit.data.preprocess`: a ``size``^3 cube at ``spacing``
   mm with the identity LPS direction, so LPS, RAS and oblique scans all come out alike; the cube is centred on
   the body's bounding box (largest connected region above the body threshold), on the scan's centre, or
   (``crop="none"``) holds the whole scan at a coarser spacing if needed; outside the scan reads air;
3. flagged: near-empty (almost no body in the cube), truncated (the scan covers under half the cube along an
   axis), duplicate (same DICOM series UID or identical pixels as another scan; the first by source path is kept).

With ``labels`` (``--labels DIR``), each scan's label map follows it onto the cube by nearest neighbour, as for
``prdit data lidc|rad`` (:mod:`prdit.data.label_maps`), into ``labels/<case>.nii.gz`` with ``labels.json``.

The output folder gets ``volumes/<case>.nii.gz`` (int16 HU), ``manifest.csv`` (source, original shape, spacing,
orientation, what was done, flags, pixel hash, output checksum), ``skipped.csv`` (every refused scan or file with
its reason) and ``train.txt`` / ``val.txt``: unflagged and truncated volumes, split by patient where DICOM gives
patient IDs (every other scan is its own patient). A rerun skips finished scans; nothing under the source is written.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np

from prdit.data.dicom import DicomCase, load_series, to_sitk_image
from prdit.data.label_maps import LabelOptions, without_suffix
from prdit.data.manifest import STATUS_OK, STATUS_SKIPPED, ManifestRow, read_manifest, split_paths, write_manifest
from prdit.data.preprocess import (
    MANIFEST_NAME,
    VOLUME_DIR,
    CaseResult,
    Jobs,
    PreprocessOptions,
    RunSummary,
    case_labels,
    discover_dicom,
    physical_center,
    resample_cube,
    run_cases,
    with_labels,
    write_case_labels,
)
from prdit.data.volume_ops import body_center
from prdit.errors import DataError
from prdit.hu import AIR_HU, BODY_THRESHOLD_HU, OUT_OF_FIELD_HU, TISSUE_BANDS_HU
from prdit.io import atomic_write_text, ensure_writable, save_nifti, sha256_file, volume_stem

#: File suffixes read through SimpleITK (DICOM files are recognised by their header, whatever their name).
SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
FLAG_DUPLICATE, FLAG_NEAR_EMPTY, FLAG_TRUNCATED = "duplicate", "near-empty", "truncated"
#: Flags that keep a volume out of train.txt / val.txt (a truncated scan is still real anatomy).
EXCLUDING_FLAGS = (FLAG_DUPLICATE, FLAG_NEAR_EMPTY)
NEAR_EMPTY_BODY_FRACTION = 0.02  # of the cube's voxels above the body threshold
TRUNCATED_COVERAGE = 0.5  # of the cube's edge covered by the scan along an axis
VAL_FRACTION = 0.1  # of the patients, at least one when there are two or more
SPLIT_SEED = 42
_STATS_SAMPLE = 1 << 20  # voxels the intensity check looks at


@dataclass(frozen=True)
class ImportOptions:
    """How scans become training volumes (recorded in ``preprocess.json``; a rerun with others needs another --out)."""

    size: int = 128
    spacing: float = 1.5
    crop: Literal["body", "center", "none"] = "body"
    hu_offset: float | None = None
    labels: LabelOptions | None = None

    def __post_init__(self) -> None:
        if self.size < 8:
            raise DataError(f"--size {self.size} must be at least 8")
        if not self.spacing > 0:
            raise DataError(f"--spacing {self.spacing} must be positive")


# ----------------------------------------------------------------------------------------------------------
# Intensity
# ----------------------------------------------------------------------------------------------------------


def _sample(array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    return flat[:: max(1, flat.size // _STATS_SAMPLE)]


def not_ct_reason(hu: np.ndarray) -> str | None:
    """Why (a sample of) HU values do not look like CT, or None: a body must exist and its median lie between fat
    and soft tissue (CT's bulk; bone and lung are smaller shares)."""
    body = hu[hu > BODY_THRESHOLD_HU]
    if body.size == 0:
        return f"no voxel above {BODY_THRESHOLD_HU:g} HU"
    median = float(np.median(body))
    low, high = TISSUE_BANDS_HU["fat"][0], TISSUE_BANDS_HU["soft_tissue"][1]
    if not low <= median < high:
        return f"the body's median is {median:.0f} HU, not fat or soft tissue ({low:g} to {high:g} HU)"
    return None


def hu_offset_for(array: np.ndarray, hu_offset: float | None) -> tuple[float, str]:
    """The offset that turns ``array`` into HU and what it means, or a :class:`DataError` saying why it is not CT."""
    low, high = float(array.min()), float(array.max())
    values = f"values {low:.4g} to {high:.4g}"
    if high - low <= 10:
        raise DataError(f"{values} look normalised (e.g. [0, 1] floats), not HU; the HU scale cannot be recovered")
    if low < BODY_THRESHOLD_HU:
        offset, action = 0.0, "HU as stored"
    elif hu_offset is not None:
        offset, action = float(hu_offset), f"HU offset {hu_offset:+g} applied (--hu-offset)"
    else:
        standard = -1024.0  # DICOM's usual RescaleIntercept for unsigned 12-bit CT
        if not_ct_reason(_sample(array) + standard) is None:
            raise DataError(f"{values}, no air: CT stored without its rescale intercept; rerun with --hu-offset {standard:g}")
        raise DataError(f"{values}, no air and no CT offset fits: not CT (MR-like range?)")
    reason = not_ct_reason(_sample(array) + offset)
    if reason is not None and low < BODY_THRESHOLD_HU and reason.startswith("no voxel"):
        return offset, action  # air only: a near-empty scan, flagged later
    if reason is not None:
        shifted = f", shifted by {offset:+g}" if offset else ""
        raise DataError(f"{values}{shifted}: {reason}; not CT (MR-like range?)")
    return offset, action


# ----------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------


def orientation_code(direction) -> str:
    """Three letters naming where each array axis (x, y, z index) points, e.g. ``LPS`` or ``RAS``; ``oblique`` is
    added when an axis is more than about 2.5 degrees off the nearest anatomical direction."""
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    letters = ""
    for axis in range(3):
        column = matrix[:, axis]
        dominant = int(np.argmax(np.abs(column)))
        letters += ("LPS" if column[dominant] > 0 else "RAI")[dominant]
    oblique = np.abs(matrix).max(axis=0).min() < 0.999
    return f"{letters} oblique" if oblique else letters


def physical_extent(image) -> np.ndarray:
    """Size (mm) of the scan's bounding box in LPS x, y, z (the box of its transformed corners)."""
    size = np.array(image.GetSize()) - 1
    corners = np.array([[i, j, k] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])], dtype=np.float64)
    points = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(c)) for c in corners])
    return points.max(axis=0) - points.min(axis=0) + np.array(image.GetSpacing())


def _body_index_center(array: np.ndarray) -> np.ndarray:
    """:func:`body_center` on every n-th voxel of large scans (at most about 2 M voxels: the labelling would
    otherwise dominate the import's time; the centre moves by under n voxels)."""
    step = max(1, int(np.ceil((array.size / 2e6) ** (1 / 3))))
    return body_center(array[::step, ::step, ::step]) * step


# ----------------------------------------------------------------------------------------------------------
# One scan
# ----------------------------------------------------------------------------------------------------------


def check_nifti_complete(path: Path) -> None:
    """ITK reads a cut NIfTI without complaint (the missing voxels read 0): compare the file's length (for
    ``.nii.gz`` the gzip trailer's length) with what its header promises."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except Exception as error:
        raise DataError(f"{path}: cannot read the NIfTI header ({type(error).__name__}); truncated or corrupt?") from None
    header = cast("nib.Nifti1Header", image.header)
    shape, dtype = header.get_data_shape(), header.get_data_dtype()
    expected = int(image.dataobj.offset) + int(np.prod(shape)) * dtype.itemsize  # type: ignore[attr-defined]
    if path.name.lower().endswith(".gz"):
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            stored = int.from_bytes(handle.read(4), "little")  # gzip's ISIZE: the data's length modulo 2^32
        if stored != expected % (1 << 32):
            raise DataError(f"{path}: the gzip stream does not end where the header's {shape} voxels do; truncated or corrupt?")
    elif path.stat().st_size < expected:
        raise DataError(f"{path}: {path.stat().st_size} bytes, shorter than the {expected} its header promises (truncated)")


def _read_image(path: Path):
    import SimpleITK as sitk

    if path.name.lower().endswith((".nii", ".nii.gz")):
        check_nifti_complete(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        detail = detail[detail.find("Description:") + 13:] if "Description:" in detail else detail
        raise DataError(f"{path}: cannot read the file ({detail[:160]}); truncated or corrupt?") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{path}: a {image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} "
                        "value(s) per voxel; a 3D single-channel CT is needed")
    if min(image.GetSize()) < 2:
        raise DataError(f"{path}: size {image.GetSize()} has an axis shorter than 2 voxels")
    return image


def pixel_hash(array: np.ndarray) -> str:
    """Digest of a scan's values and shape (float32), equal for the same pixels saved in two formats."""
    digest = hashlib.blake2b(str(array.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(array, dtype=np.float32).data)
    return digest.hexdigest()


def convert_image(image, row: ManifestRow, out_dir: Path, options: ImportOptions, actions: list[str],
                  labels: Path | None = None) -> ManifestRow:
    """Check, resample and write one SimpleITK image (and its label map ``labels``); fills ``row``'s geometry,
    actions, flags and checksums."""
    import SimpleITK as sitk

    label_map = case_labels(options.labels, labels, image)
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)  # [z, y, x] of the file's index order
    if not np.isfinite(array).all():
        raise DataError(f"{row.source}: {int((~np.isfinite(array)).sum())} NaN/inf voxels")
    sx, sy, sz = image.GetSpacing()
    row.original_shape, row.original_spacing = list(array.shape), [round(s, 6) for s in (sz, sy, sx)]
    row.orientation = orientation_code(image.GetDirection())
    row.pixel_hash = pixel_hash(array)
    offset, action = hu_offset_for(array, options.hu_offset)
    actions.append(action)
    if offset:
        array += offset
    out_of_field = array < OUT_OF_FIELD_HU
    if out_of_field.any():
        array[out_of_field] = AIR_HU
        actions.append(f"{int(out_of_field.sum())} voxels below {OUT_OF_FIELD_HU:g} HU (outside the field of view) set to air")
    hu_image = sitk.GetImageFromArray(array)
    hu_image.CopyInformation(image)
    extent = physical_extent(image)
    spacing = options.spacing
    if options.crop == "none":
        spacing = max(spacing, float(extent.max()) / options.size)
        center = physical_center(image)
    else:
        center = physical_center(image, _body_index_center(array) if options.crop == "body" else None)
    cube = resample_cube(hu_image, options.size, spacing, center)
    actions.append(f"reoriented to LPS, linear resampling to {spacing:.4g} mm, {options.crop} crop to {options.size}^3, air padding")
    flags = []
    body_fraction = float((cube > BODY_THRESHOLD_HU).mean())
    if body_fraction < NEAR_EMPTY_BODY_FRACTION:
        flags.append(f"{FLAG_NEAR_EMPTY}: {100 * body_fraction:.1f}% of the voxels above {BODY_THRESHOLD_HU:g} HU")
    edge = options.size * spacing
    for axis, name in enumerate(("R-L", "A-P", "S-I")):
        if extent[axis] < TRUNCATED_COVERAGE * edge:
            flags.append(f"{FLAG_TRUNCATED}: the scan covers {extent[axis]:.0f} of {edge:.0f} mm along {name}")
    row.flags = "; ".join(flags)
    path = out_dir / VOLUME_DIR / f"{row.case_id}.nii.gz"
    origin = center - (options.size - 1) / 2 * spacing
    if label_map is not None:  # before the volume: a volume on disk always has its label map
        actions.append(write_case_labels(label_map, path, cube, (spacing,) * 3, origin))
    save_nifti(path, cube, (spacing,) * 3, origin=tuple(float(v) for v in origin), dtype=np.int16, overwrite=True)
    row.status, row.normalize, row.output = STATUS_OK, "hu", path.relative_to(out_dir).as_posix()
    row.output_shape, row.output_spacing = [options.size] * 3, [spacing] * 3
    row.hu_min, row.hu_max, row.hu_mean = float(cube.min()), float(cube.max()), float(cube.mean())
    row.hu_p99_9 = float(np.percentile(cube, 99.9))
    row.actions, row.checksum = "; ".join(actions), sha256_file(path)
    return row


def _guarded(row: ManifestRow, work) -> ManifestRow:
    """Run ``work()``; a failure becomes a skipped row with a one-line reason (one odd scan must not end the run)."""
    try:
        return work()
    except DataError as error:
        row.reason = str(error) if str(error).startswith(row.source) else f"{row.source}: {error}"
    except Exception as error:
        row.reason = f"{row.source}: unexpected {type(error).__name__}: {' '.join(str(error).split())[:200]}"
    row.status, row.output = STATUS_SKIPPED, ""
    return row


def import_file(path: Path, case_id: str, out_dir: Path, options: ImportOptions, labels: Path | None = None) -> CaseResult:
    """One NIfTI/NRRD/MHA/MHD file (and its label map) -> one volume (or a skipped row with the reason)."""
    row = ManifestRow(case_id, STATUS_SKIPPED, str(path))
    return CaseResult(_guarded(row, lambda: convert_image(_read_image(path), row, out_dir, options, [], labels)), [])


def import_dicom(case: DicomCase, out_dir: Path, options: ImportOptions, labels: Path | None = None) -> CaseResult:
    """One DICOM series (HU from its stored rescale) -> one volume."""
    row = ManifestRow(case.case_id, STATUS_SKIPPED, str(case.series.folder), series_uid=case.series.uid,
                      series_description=case.series.description, patient_id=case.series.patient_id)
    bad: list[tuple[str, str]] = []

    def work() -> ManifestRow:
        ct = load_series(case.series)
        bad.extend(ct.bad_files)
        row.notes = "; ".join(ct.notes)
        return convert_image(to_sitk_image(ct), row, out_dir, options, ["DICOM rescale slope/intercept applied"], labels)

    return CaseResult(_guarded(row, work), bad)


# ----------------------------------------------------------------------------------------------------------
# The folder
# ----------------------------------------------------------------------------------------------------------


def is_scan_file(path: Path) -> bool:
    return path.name.lower().endswith(SCAN_SUFFIXES) and not path.name.startswith(".")


def find_scans(src: Path, workers: int, progress: bool) -> tuple[list[Path], list[DicomCase], list[tuple[str, str, str]]]:
    """The image files and DICOM series under ``src``, and (kind, item, reason) entries for what cannot be read."""
    files = sorted(p for p in src.rglob("*") if p.is_file() and is_scan_file(p))
    raw = {p.with_suffix(".raw") for p in files if p.suffix.lower() == ".mhd"}  # MetaImage data files
    others = [p for p in src.rglob("*") if p.is_file() and not is_scan_file(p) and p not in raw]
    if not others:
        return files, [], []
    try:
        cases, report = discover_dicom(src, workers, PreprocessOptions(), progress)
    except DataError as error:
        if "no DICOM files found" in str(error):
            return files, [], []
        if not files:
            raise
        return files, [], [("dicom", str(src), str(error))]
    return files, cases, report


def _case_id(path: Path, src: Path) -> str:
    return volume_stem(path.relative_to(src).as_posix().replace("/", "__"))


def flag_duplicates(rows: list[ManifestRow]) -> None:
    """Mark every ok row whose series UID or pixel hash an earlier row (by source path) has, naming that row."""
    seen: dict[str, str] = {}
    for row in sorted((r for r in rows if r.status == STATUS_OK), key=lambda r: r.source):
        flags = [f for f in row.flags.split("; ") if f and not f.startswith(FLAG_DUPLICATE)]
        keys = [f"uid:{row.series_uid}"] * bool(row.series_uid) + [f"pixels:{row.pixel_hash}"] * bool(row.pixel_hash)
        first = next((seen[key] for key in keys if key in seen), None)
        if first is not None:
            what = "series UID" if f"uid:{row.series_uid}" in seen and row.series_uid else "pixels"
            flags.append(f"{FLAG_DUPLICATE}: same {what} as {first}")
        for key in keys:
            seen.setdefault(key, row.case_id)
        row.flags = "; ".join(flags)


def write_patient_split(out_dir: Path, rows: list[ManifestRow]) -> tuple[int, int]:
    """train.txt / val.txt of the usable volumes, whole patients on one side; returns their sizes."""
    usable = [r for r in rows if r.status == STATUS_OK and r.output and not any(r.flags.startswith(f) or f"; {f}" in r.flags
                                                                                for f in EXCLUDING_FLAGS)]
    patients = sorted({r.patient_id or f"case:{r.case_id}" for r in usable})
    val_count = max(1, round(VAL_FRACTION * len(patients))) if len(patients) >= 2 else 0
    _, val_patients = split_paths(patients, val_count, SPLIT_SEED)
    chosen = set(val_patients)
    lists: dict[str, list[str]] = {"train.txt": [], "val.txt": []}
    for row in sorted(usable, key=lambda r: r.output):
        lists["val.txt" if (row.patient_id or f"case:{row.case_id}") in chosen else "train.txt"].append(row.output)
    for name, entries in lists.items():
        atomic_write_text(out_dir / name, "".join(f"{entry}\n" for entry in entries))
    return len(lists["train.txt"]), len(lists["val.txt"])


def import_collection(
    src: str | os.PathLike, out_dir: str | os.PathLike, options: ImportOptions = ImportOptions(),
    workers: int = 1, overwrite: bool = False, progress: bool = True,
) -> tuple[RunSummary, tuple[int, int]]:
    """Every CT scan under ``src`` -> ``out_dir`` (see the module docstring); returns the run summary and the sizes
    of train.txt and val.txt."""
    src, out = Path(src).resolve(), Path(out_dir).resolve()
    if not src.is_dir():
        raise DataError(f"--src {src}: folder not found")
    if out == src or src in out.parents:
        raise DataError(f"--out {out} is inside --src {src}; nothing is ever written into the source: choose another folder")
    ensure_writable(out)
    files, cases, report = find_scans(src, workers, progress)
    if not files and not cases:
        raise DataError(f"{src}: no CT scans found (NIfTI, NRRD, MHA/MHD or DICOM)")
    jobs: Jobs = {}
    keys: dict[str, tuple[str, list[str]]] = {}
    for path in files:
        jobs[_case_id(path, src)] = (import_file, (path, _case_id(path, src), out, options))
        keys[_case_id(path, src)] = (str(path), [without_suffix(path.relative_to(src))])
    for case in cases:
        case_id = case.case_id if case.case_id not in jobs else f"{case.case_id}__dicom"
        jobs[case_id] = (import_dicom, (DicomCase(case_id, case.series, case.alternatives), out, options))
        keys[case_id] = (str(case.series.folder), [case.case_id, case.series.patient_id, case.series.uid])
    jobs = with_labels(jobs, options.labels, keys, out)
    summary = run_cases(jobs, out, options, workers, overwrite, progress, report)  # type: ignore[arg-type]
    rows = read_manifest(out / MANIFEST_NAME)
    flag_duplicates(rows)
    write_manifest(out / MANIFEST_NAME, rows)
    return summary, write_patient_split(out, rows)
