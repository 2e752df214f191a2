"""Label maps of real scans (``prdit data lidc|rad|import --labels DIR``): found by case name, mapped to prdit's
label names, and resampled with nearest neighbour onto exactly the grid each volume is written on.

A case's label map is, in ``DIR``, the file or folder named like the case (its case id, or for ``import`` its path
under ``--src`` without the suffix; a RAD-ChestCT file's name without ``.npz``; for DICOM also the patient ID):

* one **multilabel file** ``DIR/<case>.nii.gz`` (or ``.nii``, ``.nrrd``, ``.mha``; ``.npz``/``.npy`` for
  RAD-ChestCT) holding one integer per structure, such as TotalSegmentator's ``--ml`` output; or
* a **folder** ``DIR/<case>/`` of binary masks, one per structure (``lung_upper_lobe_left.nii.gz`` ...), as
  TotalSegmentator writes by default.

A **mapping** (``--label-map MAP.json`` or ``.yaml``) names, for each prdit label (:data:`PHANTOM_LABELS`: body,
lung, bone, heart, vessel, airway, fat), the source values of multilabel files (integers) and/or the structure
files of mask folders (names without suffix; ``*`` and ``?`` match as in file names)::

    {"lung": ["lung_*"], "airway": ["trachea"], "heart": ["heart"], "bone": ["rib_*", "vertebrae_*", "sternum"],
     "vessel": ["aorta", "pulmonary_vein"]}

Later entries win where structures overlap; source values and files the mapping does not name become 0. A
mapping without ``body`` gets the body from the scan itself: every unlabelled voxel of the filled body (the
largest connected region above -500 HU, holes filled per axial slice), so that, as in prdit's own label maps,
every body voxel is above 0. Without a mapping the values (or the mask files' names) must already be prdit's.

Geometry: the label map must cover the same physical box as its scan (within one voxel); it may lie on another
grid or orientation (it is resampled through physical space), but a map of another region is an error. It goes
through the volume's own steps (reorientation to LPS, resampling, crop, pad, pooling) by one nearest-neighbour
resampling onto the output grid; outside the map is 0. RAD-ChestCT files carry no geometry: scan and map are both
taken as centred on the origin with identity direction (:mod:`prdit.data.rad_chestct`).

Written: ``OUT/labels/<case>.nii.gz`` (uint8, the volume's affine) and ``OUT/labels.json``, which
:class:`prdit.data.dataset.ConditionSource` reads for conditional training (``data.labels`` defaults to
``ROOT/labels``).
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from prdit.data.conditions import LABELS_DIR, LABELS_FILE, PHANTOM_LABELS
from prdit.data.rad_chestct import read_rad_labels
from prdit.data.volume_ops import filled_body
from prdit.errors import DataError
from prdit.hu import BODY_THRESHOLD_HU
from prdit.io import atomic_write_text, save_nifti, volume_stem

#: Suffixes of label map files (``.npz``/``.npy``: RAD-ChestCT arrays without geometry).
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".npz", ".npy")
MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass(frozen=True)
class LabelOptions:
    """``--labels``, ``--label-map`` and ``--missing-labels`` (recorded in ``preprocess.json`` with the run's options)."""

    folder: str
    mapping: str | None = None
    missing: Literal["fail", "skip"] = "fail"


@dataclass(frozen=True)
class LabelMapping:
    """Source values and structure-file patterns -> prdit label values."""

    values: dict[int, int]
    structures: tuple[tuple[str, int], ...]  # (pattern, prdit value), later ones win
    fill_body: bool
    source: str  # the mapping file, for messages
    strict: bool = False  # values it does not name are errors (no mapping: the values must be prdit's)


def read_mapping(path: str | os.PathLike | None) -> LabelMapping:
    """The mapping file (JSON or YAML), or the identity on prdit's values and names when ``path`` is None."""
    if path is None:
        return LabelMapping({v: v for v in PHANTOM_LABELS.values()}, tuple((n, v) for n, v in PHANTOM_LABELS.items()),
                            False, "prdit's label names", strict=True)
    path = Path(path)
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except FileNotFoundError:
        raise DataError(f"--label-map {path}: file not found") from None
    except Exception as error:
        raise DataError(f"--label-map {path}: not readable {path.suffix.lstrip('.').upper() or 'JSON'} ({type(error).__name__})") from None
    known = ", ".join(PHANTOM_LABELS)
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"--label-map {path}: must map prdit label names ({known}) to lists of source values or structure names")
    values: dict[int, int] = {}
    structures: list[tuple[str, int]] = []
    for name, sources in raw.items():
        if name not in PHANTOM_LABELS:
            raise DataError(f"--label-map {path}: unknown label {name!r}; prdit's labels are {known}")
        for item in sources if isinstance(sources, list) else [sources]:
            if isinstance(item, bool) or not isinstance(item, (int, str)) or (isinstance(item, int) and item <= 0):
                raise DataError(f"--label-map {path}: {name}: {item!r} is neither a source value (integer > 0) nor a structure name")
            if isinstance(item, int):
                values[item] = PHANTOM_LABELS[name]
            else:
                structures.append((item, PHANTOM_LABELS[name]))
    return LabelMapping(values, tuple(structures), "body" not in raw, str(path))


def write_labels_json(out_dir: Path) -> None:
    atomic_write_text(out_dir / LABELS_FILE, json.dumps(PHANTOM_LABELS) + "\n")


def label_output(out_dir: Path, case_id: str) -> Path:
    return out_dir / LABELS_DIR / f"{case_id}.nii.gz"


# ----------------------------------------------------------------------------------------------------------
# Finding each case's map
# ----------------------------------------------------------------------------------------------------------


def without_suffix(relative: Path) -> str:
    """``sub/case.nii.gz`` -> ``sub/case``: the name a scan's label map may have under ``--labels``."""
    return (relative.parent / volume_stem(relative.name)).as_posix()


def find_label_source(folder: Path, keys: list[str]) -> Path | None:
    """The multilabel file ``folder/<key><suffix>`` or mask folder ``folder/<key>/`` of the first key that has one."""
    for key in dict.fromkeys(k for k in keys if k):
        for suffix in LABEL_SUFFIXES:
            if (folder / f"{key}{suffix}").is_file():
                return folder / f"{key}{suffix}"
        if (folder / key).is_dir():
            return folder / key
    return None


def match_cases(options: LabelOptions, keys: dict[str, list[str]]) -> tuple[dict[str, Path], dict[str, str]]:
    """Each case's label source, and why the others have none. With ``missing="fail"`` a case without one is a
    :class:`DataError` before any work is done; with ``"skip"`` those cases are returned to be skipped."""
    folder = Path(options.folder)
    if not folder.is_dir():
        raise DataError(f"--labels {folder}: folder not found")
    read_mapping(options.mapping)  # a bad mapping fails now, not once per case
    found: dict[str, Path] = {}
    tried: dict[str, str] = {}
    for case_id, names in keys.items():
        source = find_label_source(folder, [case_id, *names])
        if source is None:
            tried[case_id] = " or ".join(f"{n}.nii.gz, {n}/" for n in dict.fromkeys([case_id, *names]) if n)
        else:
            found[case_id] = source
    if tried and options.missing == "fail":
        named = sorted(tried)
        first = ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")
        raise DataError(f"--labels {folder}: {len(named)} of {len(keys)} case(s) have no label map: {first} (for {named[0]}: "
                        f"looked for {tried[named[0]]}); name them like the cases, or pass --missing-labels skip to leave "
                        "those cases out")
    missing = {case_id: f"no label map in {folder} (looked for {names})" for case_id, names in tried.items()}
    return found, missing


# ----------------------------------------------------------------------------------------------------------
# Reading, checking, resampling
# ----------------------------------------------------------------------------------------------------------


class Geometry(NamedTuple):
    """Where a voxel grid lies: size (x, y, z), spacing (x, y, z), origin (LPS), direction (row-major 3x3)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image) -> Geometry:
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    @classmethod
    def centred(cls, shape_zyx, spacing_zyx) -> Geometry:
        """The RAD-ChestCT convention: identity direction, centre at the origin (:func:`prdit.io.centered_origin`)."""
        from prdit.io import centered_origin

        shape = tuple(int(n) for n in shape_zyx)
        spacing = tuple(float(s) for s in spacing_zyx)
        return cls(shape[::-1], spacing[::-1], centered_origin(shape, spacing), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))  # type: ignore[arg-type]

    def same(self, other: Geometry) -> bool:
        return self.size == other.size and all(np.allclose(a, b, atol=1e-4) for a, b in zip(self[1:], other[1:]))

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """Low and high LPS corners of the region the voxels cover (voxel centres ± half a voxel)."""
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        spacing = np.asarray(self.spacing, dtype=np.float64)
        corners = np.array([[i, j, k] for i in (-0.5, self.size[0] - 0.5) for j in (-0.5, self.size[1] - 0.5)
                            for k in (-0.5, self.size[2] - 0.5)])
        points = np.asarray(self.origin) + (corners * spacing) @ direction.T
        return points.min(axis=0), points.max(axis=0)


def check_same_region(labels: Geometry, scan: Geometry, label_path: Path, scan_name: str) -> None:
    """A label map must cover its scan's physical box (to one voxel of the coarser grid); any grid will do."""
    (lo, hi), (scan_lo, scan_hi) = labels.box(), scan.box()
    tolerance = max(max(labels.spacing), max(scan.spacing)) + 1e-3
    if np.abs(lo - scan_lo).max() > tolerance or np.abs(hi - scan_hi).max() > tolerance:
        def mm(a, b):
            return " x ".join(f"[{x:.0f}, {y:.0f}]" for x, y in zip(a, b))
        raise DataError(f"{label_path}: label map covers LPS {mm(lo, hi)} mm but {scan_name} covers {mm(scan_lo, scan_hi)} mm; "
                        "it is not on this scan's space (another crop, scan or affine?): export it on the scan's grid")


def _read_image(path: Path, rad_spacing: tuple[float, float, float] | None):
    """A label file as a SimpleITK image; RAD-ChestCT arrays (``rad_spacing`` given) get the centred geometry."""
    import SimpleITK as sitk

    if rad_spacing is not None:
        array, spacing = read_rad_labels(path, rad_spacing)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        geometry = Geometry.centred(array.shape, spacing)
        image.SetSpacing(geometry.spacing)
        image.SetOrigin(geometry.origin)
        return image
    if path.name.lower().endswith((".npz", ".npy")):
        raise DataError(f"{path}: a .npz/.npy label map has no geometry; only RAD-ChestCT's (prdit data rad) are read that way")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise DataError(f"{path}: cannot read the label map (truncated or not an image?)") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{path}: a label map is one 3D integer image")
    return image


def _integers(array: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.integer):
        if not np.isfinite(array).all() or np.any(array != np.rint(array)):
            raise DataError(f"{path}: a label map holds integer values")
    if array.size and array.min() < 0:
        raise DataError(f"{path}: negative label value {int(array.min())}")
    return array.astype(np.int64)


def read_label_image(source: Path, mapping: LabelMapping, rad_spacing: tuple[float, float, float] | None = None):
    """A case's label source (multilabel file or mask folder) as a uint8 SimpleITK image of prdit values."""
    import SimpleITK as sitk

    if source.is_dir():
        masks = sorted(p for p in source.iterdir() if p.is_file() and p.name.lower().endswith(MASK_SUFFIXES))
        stems = {p: p.name[: -len(next(s for s in MASK_SUFFIXES if p.name.lower().endswith(s)))] for p in masks}
        wanted = [(p, value) for pattern, value in mapping.structures for p in masks if fnmatch.fnmatchcase(stems[p], pattern)]
        if not wanted:
            raise DataError(f"{source}: no structure file matches {mapping.source} "
                            f"({', '.join(p for p, _ in mapping.structures[:4])}...); pass --label-map naming these files")
        reference = _read_image(wanted[0][0], rad_spacing)
        combined = np.zeros(sitk.GetArrayViewFromImage(reference).shape, dtype=np.uint8)
        for path, value in wanted:  # mapping order: later entries win
            image = _read_image(path, rad_spacing)
            if not Geometry.of(image).same(Geometry.of(reference)):
                raise DataError(f"{path}: on another grid than {wanted[0][0].name} in the same folder; masks of one case share one grid")
            combined[_integers(sitk.GetArrayViewFromImage(image), path) > 0] = value
        out = sitk.GetImageFromArray(combined)
        out.CopyInformation(reference)
        return out
    image = _read_image(source, rad_spacing)
    array = _integers(sitk.GetArrayFromImage(image), source)
    present = np.unique(array)
    if mapping.strict:
        unknown = [int(v) for v in present if v and int(v) not in mapping.values]
        if unknown:
            known = ", ".join(f"{n}={v}" for n, v in PHANTOM_LABELS.items())
            raise DataError(f"{source}: label value {unknown[0]} is not one of prdit's ({known}); "
                            "pass --label-map to map this file's values")
    lookup = np.zeros(int(present.max()) + 1 if present.size else 1, dtype=np.uint8)
    for value, target in mapping.values.items():
        if value < lookup.size:
            lookup[value] = target
    out = sitk.GetImageFromArray(lookup[array])
    out.CopyInformation(image)
    return out


def resample_labels(image, shape_zyx, spacing_zyx, origin_lps) -> np.ndarray:
    """Nearest-neighbour resampling of a label image onto an identity-direction grid; [z, y, x] uint8, 0 outside."""
    import SimpleITK as sitk

    resampled = sitk.Resample(
        image, [int(n) for n in shape_zyx[::-1]], sitk.Transform(), sitk.sitkNearestNeighbor,
        tuple(float(v) for v in origin_lps), tuple(float(s) for s in spacing_zyx[::-1]),
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), 0, sitk.sitkUInt8,
    )
    return sitk.GetArrayFromImage(resampled)


@dataclass
class CaseLabels:
    """One case's label map, read and checked against its scan, ready to follow the volume onto its grid."""

    image: object  # SimpleITK image of prdit values
    fill_body: bool
    source: Path

    def write(self, path: Path, hu: np.ndarray, spacing_zyx, origin_lps) -> np.ndarray:
        """Resample onto the grid of the volume ``hu`` (its shape, ``spacing_zyx``, voxel [0, 0, 0] at
        ``origin_lps``), fill the body from ``hu`` when the mapping has none, and write it; returns the map."""
        labels = resample_labels(self.image, hu.shape, spacing_zyx, origin_lps)
        if self.fill_body:
            labels[(labels == 0) & filled_body(hu)] = PHANTOM_LABELS["body"]
        save_nifti(path, labels, tuple(float(s) for s in spacing_zyx), origin=tuple(float(v) for v in origin_lps),  # type: ignore[arg-type]
                   dtype=np.uint8, overwrite=True)
        return labels


def load_case_labels(options: LabelOptions, source: Path, scan: Geometry, scan_name: str,
                     rad_spacing: tuple[float, float, float] | None = None) -> CaseLabels:
    """Read ``source`` through the run's mapping and check that it covers the scan ``scan``."""
    mapping = read_mapping(options.mapping)
    image = read_label_image(source, mapping, rad_spacing)
    check_same_region(Geometry.of(image), scan, source, scan_name)
    return CaseLabels(image, mapping.fill_body, source)
