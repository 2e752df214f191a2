"""Volume and file I/O: NIfTI with real geometry, .npy/.npz volumes, atomic writes, file hashes.

Array convention (everywhere in prdit): a volume is a numpy array ``[D, H, W] = [z, y, x]`` in LPS order
(x -> patient Left, y -> Posterior, z -> Superior), so an axial slice ``vol[k]`` displays like a radiology
image (anterior at the top, the patient's right on the left). Spacing tuples follow the array axes:
``(sz, sy, sx)`` in millimetres. On disk, NIfTI stores the array as ``(x, y, z)`` with a RAS+ world affine,
which is what 3D Slicer, ITK-SNAP and nibabel expect.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io as _io
import itertools
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Sequence, cast

import numpy as np

from prdit.errors import DataError, StorageError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy", ".npz")
NPZ_VOLUME_KEYS = ("ct", "volume", "image", "arr_0")


def volume_suffix(path: str | os.PathLike) -> str | None:
    """The volume suffix of ``path`` (``.nii.gz``, ``.nii``, ``.npy``, ``.npz``) or None."""
    name = os.fspath(path).lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def volume_stem(path: str | os.PathLike) -> str:
    """File name without its volume suffix: ``case_001.nii.gz`` -> ``case_001``."""
    name = Path(path).name
    suffix = volume_suffix(name)
    return name[: -len(suffix)] if suffix else Path(name).stem


TEMP_PREFIX = ".tmp-"  # atomic writes go through TEMP_PREFIX<id>-<name> in the target's folder
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _megabytes(size: float) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{max(size, 1) / 1e3:.0f} kB"


def storage_error(error: BaseException, path: str | os.PathLike, size: int | None = None) -> StorageError | None:
    """A one-line :class:`StorageError` when ``error`` (or what caused it: torch wraps the OSError of a full disk
    in a RuntimeError) means the disk is full or ``path`` is not writable; None for any other error."""
    cause: BaseException | None = error
    while cause is not None and not (isinstance(cause, OSError) and cause.errno in _FULL + _NOT_WRITABLE):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    assert isinstance(cause, OSError)
    if cause.errno in _NOT_WRITABLE:
        return StorageError(f"cannot write {path} ({cause.strerror}); choose a writable location")
    folder = Path(path).parent
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    needed = f"needed about {_megabytes(size)}, " if size else ""
    return StorageError(f"no space left on device while writing {path} ({needed}{_megabytes(free)} free); free some space and rerun")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", overwrite: bool = True, size: int | None = None) -> Iterator[IO]:
    """Write ``path`` through a temporary file in the same folder, fsync it, then rename it into place.

    A crash or an exception leaves any previous file untouched and no partial file behind; a full disk or a
    read-only folder becomes a one-line :class:`StorageError` (``size``: the expected bytes, for its message).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; pass overwrite=True (or --overwrite) to replace it")
    tmp = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception as error:
        if (storage := storage_error(error, path, size)) is not None:
            raise storage from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> None:
    with atomic_write(path, "wb", overwrite=overwrite, size=len(data)) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def remove_temp_files(*folders: str | os.PathLike) -> list[Path]:
    """Delete what interrupted atomic writes left in ``folders`` (``.tmp-*`` files; not recursive)."""
    stale = [p for folder in folders if Path(folder).is_dir() for p in Path(folder).glob(f"{TEMP_PREFIX}*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def ensure_writable(folder: str | os.PathLike, option: str = "--out") -> Path:
    """Create ``folder`` if needed and prove a file can be written in it, before any long work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{TEMP_PREFIX}probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise StorageError(f"{folder}: output folder is not writable ({error.strerror}); choose another {option}") from None
    return folder


def unused_path(path: str | os.PathLike) -> Path:
    """``path`` when nothing is there, else the first free ``NAME-2.EXT``, ``NAME-3.EXT``, ..."""
    path = Path(path)
    suffix = volume_suffix(path) or path.suffix
    stem = path.name[: len(path.name) - len(suffix)]
    candidates = (path.with_name(f"{stem}-{n}{suffix}") for n in itertools.count(2))
    return path if not path.exists() else next(p for p in candidates if not p.exists())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file; of a folder (a sharded checkpoint), of its files' relative names and contents in name order."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------------


def centered_origin(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[float, float, float]:
    """LPS position (x, y, z) of voxel [0, 0, 0] that puts the volume's centre at the world origin."""
    sz, sy, sx = spacing
    d, h, w = shape
    return (-(w - 1) * sx / 2, -(h - 1) * sy / 2, -(d - 1) * sz / 2)


def nifti_affine(spacing: Sequence[float], origin_lps: Sequence[float]) -> np.ndarray:
    """RAS+ affine of a NIfTI whose data array is our ``[z, y, x]`` LPS volume transposed to ``(x, y, z)``."""
    sz, sy, sx = spacing
    ox, oy, oz = origin_lps
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [-ox, -oy, oz]  # LPS -> RAS flips x and y
    return affine


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (sz, sy, sx) of a NIfTI affine whose data axes are (x, y, z)."""
    sx, sy, sz = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return (round(float(sz), 6), round(float(sy), 6), round(float(sx), 6))


@dataclass
class Volume:
    """A 3D volume in our array convention with its geometry."""

    array: np.ndarray  # float32 [D, H, W]
    spacing: tuple[float, float, float]  # (sz, sy, sx) mm
    affine: np.ndarray  # 4x4 RAS+ affine of the LPS-ordered NIfTI data array (x, y, z)
    path: Path | None = None


def save_nifti(
    path: str | os.PathLike,
    volume: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    affine: np.ndarray | None = None,
    origin: Sequence[float] | None = None,
    dtype: np.dtype | type | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a ``[D, H, W]`` LPS volume as NIfTI (atomically) with a real affine.

    The affine is ``affine`` when given, otherwise built from ``spacing`` and ``origin`` (LPS position of voxel
    [0, 0, 0]; default: the volume centred on the world origin). ``dtype=np.int16`` rounds and clips, as for HU.
    """
    import nibabel as nib

    path = Path(path)
    if volume_suffix(path) not in (".nii", ".nii.gz"):
        raise ValueError(f"{path}: a NIfTI path must end in .nii or .nii.gz")
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise DataError(f"{path}: expected a 3D [D, H, W] volume, got shape {volume.shape}")
    if affine is None:
        affine = nifti_affine(spacing, origin if origin is not None else centered_origin(volume.shape, spacing))
    if dtype is not None and np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        volume = np.clip(np.rint(volume), info.min, info.max)
    data = np.ascontiguousarray(volume.astype(dtype or np.float32).transpose(2, 1, 0))
    image = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; pass overwrite=True (or --overwrite) to replace it")
    buffer = _io.BytesIO()
    file_map = image.make_file_map({"image": buffer, "header": buffer})
    image.to_file_map(file_map)
    payload = buffer.getvalue()
    if path.name.lower().endswith(".gz"):
        import gzip

        payload = gzip.compress(payload, compresslevel=1, mtime=0)
    atomic_write_bytes(path, payload)
    return path


def _to_lps_zyx(image) -> tuple[np.ndarray, np.ndarray]:
    """Reorient a nibabel image to LPS and return (array [z, y, x], affine of the LPS (x, y, z) array)."""
    from nibabel import orientations

    current = orientations.io_orientation(image.affine)
    transform = orientations.ornt_transform(current, orientations.axcodes2ornt(("L", "P", "S")))
    reoriented = image.as_reoriented(transform)
    data = np.asanyarray(reoriented.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return data.transpose(2, 1, 0), reoriented.affine


def _not_3d(path: Path, shape: tuple[int, ...]) -> DataError:
    return DataError(f"{path} is {len(shape)}D ({'x'.join(map(str, shape)) or 'a scalar'}); a 3D volume is needed")


def _validate(array: np.ndarray, path: Path) -> np.ndarray:
    array = np.asarray(array)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if len(core := tuple(s for s in array.shape if s != 1)) < 3:  # one slice, or less
        raise _not_3d(path, core)
    if array.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got an array of shape {array.shape}")
    if min(array.shape) < 2:
        raise DataError(f"{path}: volume shape {array.shape} has an axis shorter than 2 voxels")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise DataError(f"{path}: expected a real-valued numeric volume, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{path}: volume contains {bad} NaN/inf voxels; fix or remove the file")
    return array


def _npz_spacing(entry: np.ndarray, path: Path) -> tuple[float, float, float]:
    values = np.asarray(entry).ravel()
    if values.size != 3 or not np.issubdtype(values.dtype, np.number) or not (np.isfinite(values) & (values > 0)).all():
        raise DataError(f"{path}: the 'spacing' entry must be 3 positive numbers (sz, sy, sx) in mm, got {values.tolist()[:6]}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def load_volume(path: str | os.PathLike, npz_key: str | None = None) -> Volume:
    """Load a NIfTI (.nii/.nii.gz), .npy or .npz volume as a float32 ``[D, H, W]`` LPS :class:`Volume`.

    NIfTI is reoriented to LPS from its affine. .npy/.npz carry no geometry: spacing (1, 1, 1) mm unless the
    .npz holds a ``spacing`` entry (sz, sy, sx). For .npz the array is ``npz_key`` or the first of
    ``ct``, ``volume``, ``image``, ``arr_0`` or the only array in the file. Every failure is a
    :class:`DataError` that names the file.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    suffix = volume_suffix(path)
    if suffix is None:
        raise DataError(f"{path}: not a volume file (expected one of {', '.join(VOLUME_SUFFIXES)})")
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    try:
        if suffix in (".nii", ".nii.gz"):
            import nibabel as nib
            from nibabel.imageglobals import LoggingOutputSuppressor
            from nibabel.spatialimages import SpatialImage

            with LoggingOutputSuppressor():  # header repairs are logged to stderr; a bad file raises anyway
                image = cast(SpatialImage, nib.load(str(path)))  # a NIfTI file loads as a spatial image
                if len(image.shape) < 3:  # nibabel's reorientation would fail with a puzzling OrientationError
                    raise _not_3d(path, image.shape)
                array, affine = _to_lps_zyx(image)
            array = _validate(array, path)
            return Volume(array, spacing_from_affine(affine), affine, path)
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                key = npz_key or next((k for k in NPZ_VOLUME_KEYS if k in keys), None)
                if key is None and len([k for k in keys if k != "spacing"]) == 1:
                    key = next(k for k in keys if k != "spacing")
                if key is None or key not in keys:
                    wanted = repr(npz_key) if npz_key else " or ".join(repr(k) for k in NPZ_VOLUME_KEYS)
                    raise DataError(f"{path}: no volume array {wanted} in the .npz (it holds {keys}); pass the key to use")
                array = archive[key]
                if "spacing" in keys:
                    spacing = _npz_spacing(archive["spacing"], path)
    except DataError:
        raise
    except Exception as error:  # numpy, zipfile and nibabel raise many types for corrupt files
        detail = " ".join(str(error).split())[:300]  # nibabel's messages span lines
        raise DataError(f"{path}: cannot read the file ({type(error).__name__}: {detail}); is it truncated or corrupt?") from None
    array = _validate(array, path)
    return Volume(array, spacing, nifti_affine(spacing, centered_origin(array.shape, spacing)), path)
