"""Real CT -> training volumes: resampling, crop/pad, pooling, paper normalisation and the parallel case runner.

Output folder layout (never touches the sources)::

    OUT/volumes/<case>.nii.gz   one volume per case, real LPS geometry (see prdit.io), [z, y, x] arrays
    OUT/manifest.csv            one row per case: source, series UID, shapes, spacings, HU stats, status, reason
    OUT/skipped.csv             every case, series and file that was left out, with the reason
    OUT/preprocess.json         the options of the run (a rerun with other options must use another OUT)
    OUT/labels/<case>.nii.gz    with ``--labels DIR``: each case's label map on its volume's grid, and
    OUT/labels.json             the names of its values (:mod:`prdit.data.label_maps`)

Canonical grid: a cube of ``size`` voxels at ``spacing`` mm with identity LPS direction, so ``vol[k]`` is an
axial slice with anterior at the top and the patient's right on the left, and ``k`` ascends towards the head.
Intensities: ``hu`` stores int16 HU (the dataset maps them to [-1, 1] when loading); ``paper`` reproduces the
official scripts step for step and stores their per-volume float32 [0, 1] volumes (train them with
``data.intensity=paper``):

* LIDC-IDRI (official ``scripts/preproc_lidc_idri.py``): cubic-spline zoom of the whole series to ``spacing``
  mm (scipy, order 3, mode nearest; the zoom maps first to first and last to last voxel, so the spacing is
  ``spacing`` only approximately, and it is recorded exactly), centre crop, clip below at -1000 HU, clip above at
  the cube's own ``percentile`` (99.9), min-max to [0, 1]; then ``pool``.
* RAD-ChestCT (official ``scripts/preproc_rad_chestct.py``): clip to [-1000, 1000] HU, centre crop of
  ``paper_crop`` (256) voxels, trilinear zoom to ``size`` when it differs, clip above the result's
  ``percentile`` (99.5), min-max to [0, 1].

A rerun skips every case whose manifest row says ok and whose output exists, so an interrupted run resumes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from prdit.data.dicom import (
    DicomCase,
    group_series,
    load_series,
    scan_headers,
    select_cases,
    to_sitk_image,
)
from prdit.data.intensity import IntensityMapping
from prdit.data.label_maps import (
    CaseLabels,
    Geometry,
    LabelOptions,
    label_output,
    load_case_labels,
    match_cases,
    without_suffix,
    write_labels_json,
)
from prdit.data.manifest import STATUS_OK, STATUS_SKIPPED, ManifestRow, read_manifest, write_manifest
from prdit.data.rad_chestct import RAD_NPZ_KEY, read_rad_volume
from prdit.data.volume_ops import average_pool, body_center, crop_or_pad
from prdit.errors import DataError
from prdit.hu import AIR_HU, OUT_OF_FIELD_HU, PAPER_RAD_CEILING_HU
from prdit.io import atomic_write_text, centered_origin, ensure_writable, save_nifti, volume_stem

VOLUME_DIR = "volumes"
MANIFEST_NAME = "manifest.csv"
SKIPPED_NAME = "skipped.csv"
OPTIONS_NAME = "preprocess.json"
_MANIFEST_INTERVAL_S = 5.0  # how often a long run checkpoints its manifest


@dataclass(frozen=True)
class PreprocessOptions:
    """How cases become training volumes. ``spacing=None`` keeps the source grid (the paper's RAD-ChestCT route)."""

    size: int = 256
    spacing: float | None = 1.0
    normalize: Literal["hu", "paper"] = "hu"
    percentile: float = 99.9  # paper normalisation: upper clip (99.9 LIDC-IDRI, 99.5 RAD-ChestCT)
    hu_ceiling: float | None = None  # paper normalisation: clip above this HU first (1000 for RAD-ChestCT)
    pool: int = 1
    crop: Literal["center", "body"] = "center"
    interpolation: Literal["linear", "bspline"] = "linear"
    skip_small: bool = False  # the paper drops volumes smaller than the crop; we pad them by default
    paper_crop: int = 256  # RAD-ChestCT paper route: the cube cut before zooming to ``size`` (the official 256)
    # DICOM
    all_series: bool = False
    min_slices: int = 10
    max_gap_factor: float = 2.0
    max_tilt_deg: float = 0.5
    # RAD-ChestCT
    npz_key: str = RAD_NPZ_KEY
    source_spacing: float | None = None
    # label maps beside the scans (--labels DIR)
    labels: LabelOptions | None = None

    def __post_init__(self) -> None:
        if self.pool < 1 or self.size < 2 or self.size % self.pool:
            raise DataError(f"--size {self.size} must be at least 2 and a multiple of --pool {self.pool} (at least 1)")
        if self.spacing is not None and self.spacing <= 0:
            raise DataError(f"--spacing {self.spacing} must be positive")
        if not 50.0 < self.percentile <= 100.0:
            raise DataError(f"--percentile {self.percentile} must be in (50, 100]")


# ----------------------------------------------------------------------------------------------------------
# Volume operations
# ----------------------------------------------------------------------------------------------------------


def resample_cube(image, size: int, spacing: float, center_lps: np.ndarray, interpolation: str = "linear") -> np.ndarray:
    """Resample a SimpleITK image onto a ``size``^3 LPS-aligned grid centred at ``center_lps``; [z, y, x] float32.

    Voxels outside the image read -1000 HU (air), so small scans are padded rather than dropped.
    """
    import SimpleITK as sitk

    interpolator = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}[interpolation]
    origin = np.asarray(center_lps, dtype=np.float64) - (size - 1) / 2 * spacing
    resampled = sitk.Resample(
        image,
        [size] * 3,
        sitk.Transform(),
        interpolator,
        tuple(float(v) for v in origin),
        (float(spacing),) * 3,
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        AIR_HU,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(resampled)


def physical_center(image, index_center: np.ndarray | None = None) -> np.ndarray:
    """LPS point (x, y, z) of a continuous [z, y, x] index of ``image`` (default: the centre of the image)."""
    if index_center is None:
        index_center = (np.array(image.GetSize()[::-1], dtype=np.float64) - 1) / 2
    return np.array(image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in index_center[::-1])))


def official_zoom(hu: np.ndarray, factors: tuple[float, float, float], order: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """scipy's zoom as the official scripts call it (float64, corner-aligned); returns it and the scale of the
    new voxel steps in old ones per [z, y, x] axis ((n_in - 1) / (n_out - 1))."""
    from scipy import ndimage

    zoomed = ndimage.zoom(hu.astype(np.float64), factors, order=order, mode=mode, cval=AIR_HU)
    steps = np.array([(n - 1) / max(m - 1, 1) for n, m in zip(hu.shape, zoomed.shape)])
    return zoomed, steps


def canonical_axes(ct) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A loaded series flipped onto the identity LPS direction: ([z, y, x] HU, origin LPS, spacing (x, y, z)).

    The paper route resamples the voxel grid itself (as the official script does), which needs an axis-aligned
    series; flips are undone so that the crop and the written geometry are canonical.
    """
    direction = np.asarray(ct.direction, dtype=np.float64)
    if not np.allclose(np.abs(direction), np.eye(3), atol=1e-3):
        raise DataError("--normalize paper resamples the voxel grid like the official script and needs an axis-aligned "
                        "series; use --normalize hu (and data.intensity=paper when training) for this one")
    hu, origin, spacing = ct.hu, np.asarray(ct.origin, dtype=np.float64), np.asarray(ct.spacing, dtype=np.float64)
    for axis in range(3):  # x, y, z; array axes are z, y, x
        if direction[axis, axis] < 0:
            origin = origin + direction[:, axis] * (hu.shape[2 - axis] - 1) * spacing[axis]
            hu = np.flip(hu, axis=2 - axis)
    return hu, origin, spacing


def _finish(
    hu: np.ndarray, spacing, origin: np.ndarray, options: PreprocessOptions, path: Path, row: ManifestRow,
    labels: CaseLabels | None = None,
) -> ManifestRow:
    """Normalise, pool and write a [z, y, x] HU cube whose voxel [0, 0, 0] sits at ``origin`` (LPS x, y, z);
    ``spacing`` is one isotropic value or per [z, y, x] axis. ``labels`` follow onto the written grid."""
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    row.hu_min, row.hu_max, row.hu_mean = float(hu.min()), float(hu.max()), float(hu.mean())
    row.hu_p99_9 = float(np.percentile(hu, 99.9))
    if options.normalize == "paper":
        paper = IntensityMapping(mode="paper", percentile=options.percentile, ceiling=options.hu_ceiling)
        volume = paper.to_unit(hu).astype(np.float32)
    else:
        volume = hu
    if options.pool > 1:
        volume = average_pool(volume, options.pool)
        origin = origin + (options.pool - 1) / 2 * spacing[::-1]  # a pooled voxel's centre is its block's centre
        spacing = spacing * options.pool
    dtype = np.float32 if options.normalize == "paper" else np.int16
    spacing_zyx = tuple(float(v) for v in spacing)
    if labels is not None:  # before the volume: a volume on disk always has its label map
        hu_on_grid = volume if options.normalize != "paper" else average_pool(hu, options.pool)  # for the body fill
        done = write_case_labels(labels, path, hu_on_grid, spacing_zyx, origin)
        row.actions = "; ".join(a for a in (row.actions, done) if a)
    save_nifti(path, volume, spacing_zyx, origin=tuple(float(v) for v in origin), dtype=dtype, overwrite=True)  # type: ignore[arg-type]
    row.status, row.normalize = STATUS_OK, options.normalize
    row.output_shape, row.output_spacing = list(volume.shape), list(spacing_zyx)
    return row


def write_case_labels(labels: CaseLabels, volume_path: Path, hu: np.ndarray, spacing_zyx, origin) -> str:
    """The case's label map onto the grid of the volume to be written at ``volume_path`` (``hu`` on that grid);
    returns what was done, for the manifest."""
    labels.write(label_output(volume_path.parent.parent, volume_stem(volume_path)), hu, spacing_zyx, origin)
    done = f"label map {labels.source.name} resampled onto the volume's grid (nearest neighbour)"
    return done + (", unlabelled body voxels set to body" if labels.fill_body else "")


def case_labels(options: LabelOptions | None, source: Path | None, image=None, geometry: Geometry | None = None,
                rad_spacing=None) -> CaseLabels | None:
    """The label map of a case whose scan is ``image`` (SimpleITK) or has ``geometry`` (None without --labels)."""
    if options is None or source is None:
        return None
    scan = geometry if geometry is not None else Geometry.of(image)
    return load_case_labels(options, source, scan, "its scan", rad_spacing)


def with_labels(jobs: Jobs, options: LabelOptions | None, keys: dict[str, tuple[str, list[str]]], out_dir: Path) -> Jobs:
    """``jobs`` with each case's label source as the last argument. ``keys``: case id -> (its source, the other
    names its label map may have). With ``--missing-labels skip`` the cases without one become skipped rows
    (their reason names the folder). Writes OUT/labels.json."""
    if options is None:
        return jobs
    found, missing = match_cases(options, {case_id: keys[case_id][1] for case_id in jobs})
    out = {case_id: (function, (*args, found[case_id])) for case_id, (function, args) in jobs.items() if case_id in found}
    for case_id, reason in missing.items():
        out[case_id] = (skipped_case, (case_id, keys[case_id][0], reason))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_labels_json(out_dir)
    return out


def skipped_case(case_id: str, source: str, reason: str) -> CaseResult:
    return CaseResult(ManifestRow(case_id, STATUS_SKIPPED, source, reason=reason), [])


# ----------------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------------


@dataclass
class CaseResult:
    row: ManifestRow
    bad_files: list[tuple[str, str]]


Jobs = dict[str, tuple[Callable[..., CaseResult], tuple]]  # case id -> (function, its arguments)


def process_dicom_case(case: DicomCase, out_dir: Path, options: PreprocessOptions, labels: Path | None = None) -> CaseResult:
    """One DICOM series -> one canonical volume (errors become a skipped row with the reason)."""
    row = ManifestRow(case.case_id, STATUS_SKIPPED, str(case.series.folder), series_uid=case.series.uid)
    bad_files: list[tuple[str, str]] = []
    failures: list[str] = []
    try:
        for series in [case.series, *case.alternatives]:  # the patient's axial series, best first
            try:
                ct = load_series(series, max_gap_factor=options.max_gap_factor, max_tilt_deg=options.max_tilt_deg)
                break
            except DataError as error:
                failures.append(f"series {series.uid} not usable: {error}")
        else:
            raise DataError("; ".join(failures))
        row.source, row.series_uid, row.series_description = str(series.folder), series.uid, series.description
        bad_files, row.notes = ct.bad_files, "; ".join(failures + ct.notes)
        sx, sy, sz = ct.spacing
        row.original_shape, row.original_spacing = list(ct.hu.shape), [sz, sy, sx]
        spacing = float(options.spacing if options.spacing is not None else min(ct.spacing))
        extent = np.array(ct.hu.shape) * np.array([sz, sy, sx])
        if options.skip_small and (extent < options.size * spacing).any():
            raise DataError(
                f"{series.folder}: scan extent {np.round(extent).tolist()} mm is smaller than the {options.size}^3 crop (--skip-small)"
            )
        path = out_dir / VOLUME_DIR / f"{case.case_id}.nii.gz"
        row.output = path.relative_to(out_dir).as_posix()
        geometry = Geometry(ct.hu.shape[::-1], tuple(ct.spacing), tuple(ct.origin), tuple(np.ravel(ct.direction)))
        label_map = case_labels(options.labels, labels, geometry=geometry)
        if options.normalize == "paper":  # the official route: cubic zoom of the voxel grid, then an index crop
            hu, origin, source_spacing = canonical_axes(ct)
            zoomed, steps = official_zoom(hu, tuple(source_spacing[::-1] / spacing), order=3, mode="nearest")
            start = np.array([(n - options.size) // 2 for n in zoomed.shape])
            if options.crop == "body":
                start = np.round(body_center(zoomed) - (options.size - 1) / 2).astype(int)
            cube = crop_or_pad(zoomed, options.size, tuple(int(v) for v in start))
            new_spacing = steps * source_spacing[::-1]  # [z, y, x]
            return CaseResult(_finish(cube, new_spacing, origin + (start * new_spacing)[::-1], options, path, row, label_map), bad_files)
        image = to_sitk_image(ct)
        center = physical_center(image, body_center(ct.hu) if options.crop == "body" else None)
        hu = resample_cube(image, options.size, spacing, center, options.interpolation)
        return CaseResult(_finish(hu, spacing, center - (options.size - 1) / 2 * spacing, options, path, row, label_map), bad_files)
    except DataError as error:
        row.reason, row.output = str(error), ""
    except Exception as error:  # one odd case must not end a run over a thousand scans
        row.reason, row.output = f"{row.source}: unexpected {type(error).__name__}: {error}", ""
    return CaseResult(row, bad_files)


def process_rad_case(source: Path, case_id: str, out_dir: Path, options: PreprocessOptions, labels: Path | None = None) -> CaseResult:
    """One RAD-ChestCT .npz -> one volume: the paper's clip -> centre crop (or pad) -> normalise route."""
    row = ManifestRow(case_id, STATUS_SKIPPED, str(source))
    try:
        hu, source_spacing = read_rad_volume(source, options.npz_key, options.source_spacing)
        row.original_shape, row.original_spacing = list(hu.shape), list(source_spacing)
        label_map = case_labels(options.labels, labels, geometry=Geometry.centred(hu.shape, source_spacing), rad_spacing=source_spacing)
        hu[hu < OUT_OF_FIELD_HU] = AIR_HU
        if options.hu_ceiling is not None:
            hu = np.clip(hu, AIR_HU, options.hu_ceiling)
        path = out_dir / VOLUME_DIR / f"{case_id}.nii.gz"
        if options.normalize == "paper":  # the official route: centre crop of paper_crop, then a trilinear zoom
            hu = np.clip(hu, AIR_HU, options.hu_ceiling if options.hu_ceiling is not None else PAPER_RAD_CEILING_HU)
            crop = options.paper_crop
            if options.skip_small and any(n < crop for n in hu.shape):
                raise DataError(f"{source}: volume {hu.shape} is smaller than the {crop}^3 crop (--skip-small)")
            start = np.array([(n - crop) // 2 for n in hu.shape])
            cube = crop_or_pad(hu, crop, tuple(int(v) for v in start))
            steps = np.ones(3)
            if options.size != crop:
                cube, steps = official_zoom(cube, (options.size / crop,) * 3, order=1, mode="constant")
            new_spacing = steps * np.asarray(source_spacing, dtype=np.float64)
            origin = np.array(centered_origin(hu.shape, source_spacing)) + (start * np.asarray(source_spacing))[::-1]
            row.output = path.relative_to(out_dir).as_posix()
            return CaseResult(_finish(cube, new_spacing, origin, options, path, row, label_map), [])
        spacing = options.spacing if options.spacing is not None else min(source_spacing)
        extent = np.array(hu.shape) * np.array(source_spacing)
        if options.skip_small and (extent < options.size * spacing - 1e-6).any():
            raise DataError(f"{source}: volume {hu.shape} is smaller than the {options.size}^3 crop (--skip-small)")
        origin_lps = np.array(centered_origin(hu.shape, source_spacing))
        if options.spacing is None and len(set(source_spacing)) == 1:
            # The paper crops the source grid itself: no interpolation.
            start = np.array([(s - options.size) // 2 for s in hu.shape])
            if options.crop == "body":
                start = np.round(body_center(hu) - (options.size - 1) / 2).astype(int)
            cube = crop_or_pad(hu, options.size, tuple(int(v) for v in start))
            origin = origin_lps + start[::-1] * spacing
        else:
            import SimpleITK as sitk

            image = sitk.GetImageFromArray(hu)
            image.SetSpacing(tuple(float(s) for s in source_spacing[::-1]))
            image.SetOrigin(tuple(float(v) for v in origin_lps))
            center = physical_center(image, body_center(hu) if options.crop == "body" else None)
            cube = resample_cube(image, options.size, spacing, center, options.interpolation)
            origin = center - (options.size - 1) / 2 * spacing
        row.output = path.relative_to(out_dir).as_posix()
        return CaseResult(_finish(cube, float(spacing), origin, options, path, row, label_map), [])
    except DataError as error:
        row.reason, row.output = str(error), ""
    except Exception as error:  # one odd case must not end the run
        row.reason, row.output = f"{source}: unexpected {type(error).__name__}: {error}", ""
    return CaseResult(row, [])


# ----------------------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    processed: int
    ok: int
    skipped: int
    kept: int  # finished by an earlier run
    manifest: Path
    report: Path
    reasons: list[str]  # why each case of this run was skipped


def _single_threaded_worker() -> None:
    """Worker processes already fill the cores: keep SimpleITK from starting a thread per core in each."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _check_options(out_dir: Path, options: PreprocessOptions, overwrite: bool) -> None:
    """Refuse to mix volumes made with other options in one output folder."""
    path = out_dir / OPTIONS_NAME
    wanted = asdict(options)
    if path.exists() and not overwrite:
        previous = json.loads(path.read_text())
        changed = {k: (previous.get(k), v) for k, v in wanted.items() if previous.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
            raise DataError(
                f"{out_dir} was preprocessed with other options ({detail}); use another --out, or --overwrite to redo it"
            )
    atomic_write_text(path, json.dumps(wanted, indent=1) + "\n")


def _write_report(path: Path, entries: list[tuple[str, str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["kind", "item", "reason"])
    writer.writerows(sorted(entries))
    atomic_write_text(path, buffer.getvalue())


def run_cases(
    jobs: Jobs,
    out_dir: str | os.PathLike,
    options: PreprocessOptions,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    report: list[tuple[str, str, str]] | None = None,
) -> RunSummary:
    """Run ``jobs`` (case id -> (function, args); each call returns a :class:`CaseResult`) into ``out_dir``.

    Cases finished by an earlier run (manifest row ok, output present) are kept unless ``overwrite``. The
    manifest is rewritten as cases finish, so an interrupted run loses at most the last few seconds.
    ``report`` holds (kind, item, reason) entries found before the run (corrupt files, rejected series).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST_NAME
    if not overwrite and not manifest_path.exists() and any((out_dir / VOLUME_DIR).glob("*")):
        raise DataError(f"{out_dir / VOLUME_DIR} holds files but {manifest_path} is missing; use an empty --out or --overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_options(out_dir, options, overwrite)
    rows = {r.case_id: r for r in read_manifest(manifest_path)} if manifest_path.exists() else {}
    done = {
        case_id
        for case_id, row in rows.items()
        if not overwrite and row.status == STATUS_OK and row.output and (out_dir / row.output).exists() and case_id in jobs
    }
    todo = [case_id for case_id in sorted(jobs) if case_id not in done]
    entries = list(report or [])
    last_write = time.monotonic()

    def record(result: CaseResult) -> None:
        nonlocal last_write
        rows[result.row.case_id] = result.row
        entries.extend(("file", path, reason) for path, reason in result.bad_files)
        if result.row.status != STATUS_OK:
            entries.append(("case", result.row.case_id, result.row.reason))
        if time.monotonic() - last_write > _MANIFEST_INTERVAL_S:
            write_manifest(manifest_path, list(rows.values()))
            last_write = time.monotonic()

    bar = tqdm(total=len(todo), desc="preprocessing", unit="case", disable=not progress)
    try:
        if workers <= 1:
            for case_id in todo:
                function, args = jobs[case_id]
                record(function(*args))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=_single_threaded_worker) as pool:
                futures = [pool.submit(jobs[c][0], *jobs[c][1]) for c in todo]
                try:
                    for future in as_completed(futures):
                        record(future.result())
                        bar.update()
                except BaseException:  # Ctrl-C: drop the queued cases instead of waiting for all of them
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    finally:  # an interrupted run keeps every finished case
        bar.close()
        write_manifest(manifest_path, list(rows.values()))
    # Repairs of finished cases (this run's and earlier runs'): unreadable files, duplicates, interpolated gaps.
    entries.extend(("note", c, rows[c].notes) for c in sorted(jobs) if rows[c].status == STATUS_OK and rows[c].notes)
    report_path = out_dir / SKIPPED_NAME
    _write_report(report_path, entries)
    finished = [rows[c] for c in todo]
    ok = sum(r.status == STATUS_OK for r in finished)
    reasons = [f"{r.case_id}: {r.reason}" for r in finished if r.status != STATUS_OK]
    return RunSummary(len(todo), ok, len(finished) - ok, len(done), manifest_path, report_path, reasons)


# ----------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------


def discover_dicom(
    src: str | os.PathLike, workers: int = 1, options: PreprocessOptions = PreprocessOptions(), progress: bool = True
) -> tuple[list[DicomCase], list[tuple[str, str, str]]]:
    """The cases under a DICOM tree and (kind, item, reason) report entries for what was left out.

    Header reading is spread over ``workers`` processes, one folder (a series, in LIDC's layout) per task.
    """
    from tqdm.auto import tqdm

    src = Path(src)
    if not src.exists():
        raise DataError(f"{src}: source folder not found")
    folders = [src] if src.is_file() else sorted(Path(d) for d, _, files in os.walk(src) if files)
    bar = dict(total=len(folders), desc="reading DICOM headers", unit="folder", disable=not progress)
    scan = partial(scan_headers, recursive=False)
    if workers <= 1:
        results = list(tqdm(map(scan, folders), **bar))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(tqdm(pool.map(scan, folders, chunksize=8), **bar))
    headers = [header for found, _ in results for header in found]
    corrupt = [entry for _, bad in results for entry in bad]
    if not headers and corrupt:
        named = "; ".join(reason if path in reason else f"{path}: {reason}" for path, reason in corrupt[:3])
        more = f" (and {len(corrupt) - 3} more)" if len(corrupt) > 3 else ""
        raise DataError(f"{src}: no readable DICOM file; {len(corrupt)} unreadable: {named}{more}")
    if not headers:
        raise DataError(f"{src}: no DICOM files found under this folder")
    series, rejected = group_series(headers)
    cases, not_chosen = select_cases(series, all_series=options.all_series, min_slices=options.min_slices)
    report = [("file", path, reason) for path, reason in corrupt]
    report += [("series", label, reason) for label, reason in rejected + not_chosen]
    if not cases:
        reasons = "; ".join(f"{item}: {reason}" for _, item, reason in report[:3])
        raise DataError(f"{src}: no axial CT series found among {len(series) + len(rejected)} series ({reasons})")
    return cases, report


def preprocess_lidc(
    src: str | os.PathLike, out_dir: str | os.PathLike, options: PreprocessOptions = PreprocessOptions(),
    workers: int = 1, overwrite: bool = False, progress: bool = True,
) -> RunSummary:
    """LIDC-IDRI (or any DICOM tree) -> canonical NIfTI volumes, manifest and skip report in ``out_dir``."""
    ensure_writable(out_dir)
    cases, report = discover_dicom(src, workers, options, progress)
    out_dir = Path(out_dir)
    jobs: Jobs = {case.case_id: (process_dicom_case, (case, out_dir, options)) for case in cases}
    keys = {case.case_id: (str(case.series.folder), [case.series.patient_id, case.series.uid]) for case in cases}
    jobs = with_labels(jobs, options.labels, keys, out_dir)
    return run_cases(jobs, out_dir, options, workers, overwrite, progress, report)


def preprocess_rad(
    src: str | os.PathLike, out_dir: str | os.PathLike, options: PreprocessOptions | None = None,
    workers: int = 1, overwrite: bool = False, progress: bool = True,
) -> RunSummary:
    """RAD-ChestCT ``.npz`` files under ``src`` -> volumes, manifest and skip report in ``out_dir``."""
    options = options or replace(PreprocessOptions(), spacing=None, percentile=99.5)
    src = Path(src)
    if not src.exists():
        raise DataError(f"{src}: source folder not found")
    ensure_writable(out_dir)
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*.npz") if p.is_file())
    if not files:
        raise DataError(f"{src}: no .npz files found")
    out_dir = Path(out_dir)
    base = src.parent if src.is_file() else src
    jobs: Jobs = {}
    keys = {}
    for path in files:
        case_id = volume_stem(path.relative_to(base).as_posix().replace("/", "__"))
        jobs[case_id] = (process_rad_case, (path, case_id, out_dir, options))
        keys[case_id] = (str(path), [without_suffix(path.relative_to(base))])
    jobs = with_labels(jobs, options.labels, keys, out_dir)
    return run_cases(jobs, out_dir, options, workers, overwrite, progress)
