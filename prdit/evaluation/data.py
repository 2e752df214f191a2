"""Real and generated volume sets for evaluation: loading, intensity convention, sizes, and a feature cache.

A set is a folder of volumes (NIfTI, .npy, .npz; searched recursively), a list/manifest file (one path a line,
relative to the list), a single .npy/.npz holding a stack ``[N, D, H, W]`` (or ``[N, 1, D, H, W]``), or an
in-memory list of arrays/paths. Files are either in Hounsfield units (``space="hu"``) or in a model's own space
(``space="model"``: ``prdit sample --save-raw`` files), mapped back to HU with that model's intensity mapping,
read from each file's JSON sidecar (``sample_<seed>.json`` beside ``sample_<seed>_raw.nii.gz``) or given. Every
set is held in HU, float32, ``[N, D, H, W]``. The feature networks then see every set through one fixed mapping
(:data:`FEATURE_INPUT`, the evaluation protocol's), whatever model made it.

Sizes: all volumes of both sets must share one shape. ``size=S`` asks for S^3; volumes of another shape are an
error unless ``resize="trilinear"`` (torch trilinear interpolation, ``align_corners=False``, in HU), and the
policy is recorded in the protocol.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from prdit.data.intensity import IntensityMapping
from prdit.data.sources import find_volumes
from prdit.errors import DataError
from prdit.hu import EVALUATION_WINDOW_HU
from prdit.io import atomic_write, load_volume, volume_stem, volume_suffix

Space = Literal["hu", "model"]
ResizePolicy = Literal["error", "trilinear"]
#: What the feature networks and MS-SSIM see: HU through one fixed window, the same for every model's samples.
FEATURE_INPUT = IntensityMapping(mode="hu", window=EVALUATION_WINDOW_HU)
INTENSITY_LABEL = f"HU clipped to [{EVALUATION_WINDOW_HU[0]:g}, {EVALUATION_WINDOW_HU[1]:g}] and mapped linearly to [-1, 1]"
SIDECAR_SUFFIXES = ("_raw", "_x0")  # prdit sample --save-raw / --save-x0 files share the volume's sidecar
DEFAULT_CACHE_DIR = Path(os.environ.get("PRDIT_CACHE_DIR", Path.home() / ".cache" / "prdit"))


@dataclass
class VolumeSet:
    """A set of volumes in HU, ``[N, D, H, W]`` float32, with where they came from."""

    volumes: np.ndarray
    source: str
    files: list[Path]  # empty for in-memory arrays
    resized_from: list[tuple[int, int, int]]  # original shapes of the volumes that were resized
    mapping: IntensityMapping | None = field(default=None)  # the generating model's, when its sidecars say

    def __len__(self) -> int:
        return len(self.volumes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.volumes.shape[1:])

    def model_space(self) -> np.ndarray:
        """The volumes as the feature networks see them (:data:`FEATURE_INPUT`), in [-1, 1]."""
        return FEATURE_INPUT.to_model(self.volumes)

    def fingerprint(self) -> str | None:
        """Hash of the file list (paths, sizes, modification times); None for in-memory sets."""
        if not self.files:
            return None
        digest = hashlib.sha256()
        for path in self.files:
            stat = path.stat()
            digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def _stack_file(path: Path) -> np.ndarray | None:
    """A single .npy/.npz file holding several volumes, as [N, D, H, W]; None if it holds one volume."""
    if volume_suffix(path) not in (".npy", ".npz"):
        return None
    try:
        if volume_suffix(path) == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as archive:
                keys = [k for k in archive.keys() if k != "spacing"]
                array = archive[keys[0]] if len(keys) == 1 else None
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read the file ({error})") from None
    if array is None:
        return None
    if array.ndim == 5 and array.shape[1] == 1:
        array = array[:, 0]
    return np.asarray(array, dtype=np.float32) if array.ndim == 4 else None


def sidecar_mapping(path: Path) -> IntensityMapping | None:
    """The intensity mapping in a volume file's JSON sidecar (``prdit sample`` writes one), or None."""
    stem = volume_stem(path)
    for suffix in SIDECAR_SUFFIXES:
        stem = stem.removesuffix(suffix)
    sidecar = path.with_name(f"{stem}.json")
    if not sidecar.is_file():
        return None
    try:
        return IntensityMapping.from_dict(json.loads(sidecar.read_text())["intensity"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{sidecar}: unreadable sample sidecar (no intensity mapping); fix or remove it") from None


def _sidecar_mappings(files: list[Path], label: str) -> IntensityMapping | None:
    """The one mapping the files' sidecars name (None when they have none); a set mixing models is an error."""
    found = {path: sidecar_mapping(path) for path in files}
    mappings = {m.definition(): m for m in found.values() if m is not None}
    if len(mappings) > 1:
        raise DataError(f"{label}: the files' sidecars name {len(mappings)} different intensity mappings "
                        f"({'; '.join(m.describe() for m in mappings.values())}); evaluate one model's samples at a time")
    return next(iter(mappings.values()), None)


def _resize(volume: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(volume))[None, None]
    return F.interpolate(tensor, size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()


def load_volume_set(
    source: str | os.PathLike | Sequence[np.ndarray | str | os.PathLike],
    space: Space = "hu",
    size: int | None = None,
    resize: ResizePolicy = "error",
    limit: int | None = None,
    name: str = "set",
    mapping: IntensityMapping | None = None,
) -> VolumeSet:
    """Load a set of volumes (see the module docstring) as HU ``[N, D, H, W]``; ``limit`` keeps the first N.

    ``mapping``: the generating model's intensity mapping; by default the one the files' sidecars record (needed
    for ``space="model"``).
    """
    if space not in ("hu", "model"):
        raise DataError(f"{name}: intensity space must be 'hu' or 'model', got {space!r}")
    if resize not in ("error", "trilinear"):
        raise DataError(f"{name}: resize policy must be 'error' or 'trilinear', got {resize!r}")
    files: list[Path] = []
    if isinstance(source, (str, os.PathLike)):
        label = str(source)
        stack = _stack_file(Path(source)) if Path(source).is_file() else None
        if stack is not None:
            arrays: list[np.ndarray] = list(stack[:limit])
            files = [Path(source)]
        else:
            files = find_volumes(source)[:limit]
            arrays = [load_volume(p).array for p in files]
    else:
        label = f"{len(source)} in-memory volume(s)"
        items = list(source)[:limit]
        arrays = [load_volume(item).array if isinstance(item, (str, os.PathLike)) else np.asarray(item, dtype=np.float32) for item in items]
        files = [Path(item) for item in items if isinstance(item, (str, os.PathLike))]
        if len(files) != len(items):
            files = []  # a mixed or in-memory set has no stable fingerprint
    if not arrays:
        raise DataError(f"{name} ({label}): the set is empty")
    target = (size, size, size) if size else tuple(arrays[0].shape)
    resized = []
    for index, array in enumerate(arrays):
        if array.ndim != 3:
            raise DataError(f"{name} ({label}): volume {index} has shape {array.shape}, expected 3D [D, H, W]")
        if array.shape != target:
            if resize == "error":
                where = files[index] if len(files) == len(arrays) else f"volume {index}"
                raise DataError(f"{name}: {where} has shape {array.shape}, expected {target}; pass --resize trilinear (or resize='trilinear') to resample")
            resized.append(tuple(array.shape))
            arrays[index] = _resize(array, target)
    volumes = np.stack(arrays).astype(np.float32, copy=False)
    mapping = mapping or _sidecar_mappings(files, f"{name} ({label})")
    if space == "model":
        if mapping is None:
            raise DataError(f"{name} ({label}): model-space files map back to HU only through their model's intensity "
                            "mapping: keep the samples' JSON sidecars beside them, or pass --intensity-from CHECKPOINT "
                            "(or a sample's .json)")
        bottom, top = mapping.model_range
        margin = 0.5 * (top - bottom)  # a raw sample may overshoot (to_hu clips it); HU values are far outside
        if volumes.min() < bottom - margin or volumes.max() > top + margin:
            raise DataError(f"{name} ({label}): values span [{volumes.min():.3g}, {volumes.max():.3g}], not model space "
                            f"[{bottom:g}, {top:g}]; use --space hu")
        volumes = mapping.to_hu(volumes)
    return VolumeSet(volumes, label, files, resized, mapping)


def check_same_shape(real: VolumeSet, fake: VolumeSet) -> None:
    if real.shape != fake.shape:
        raise DataError(f"real volumes are {real.shape} but generated ones are {fake.shape}; pass --img_size S (with --resize trilinear) to compare at one size")


# ----------------------------------------------------------------------------------------------------------
# Real-set feature cache
# ----------------------------------------------------------------------------------------------------------


def cache_key(volume_set: VolumeSet, protocol: dict) -> str | None:
    """Key of a set's cached features: its file fingerprint plus every protocol field that changes the features."""
    fingerprint = volume_set.fingerprint()
    if fingerprint is None:
        return None
    return hashlib.sha256((fingerprint + json.dumps(protocol, sort_keys=True)).encode()).hexdigest()[:24]


def load_cached_features(cache_dir: Path, key: str | None) -> np.ndarray | None:
    if key is None:
        return None
    path = Path(cache_dir) / f"features-{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive["features"].astype(np.float64)
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache entry is recomputed and replaced


def save_cached_features(cache_dir: Path, key: str | None, features: np.ndarray, protocol: dict) -> None:
    if key is None:
        return
    with atomic_write(Path(cache_dir) / f"features-{key}.npz") as handle:
        np.savez(handle, features=np.asarray(features, dtype=np.float32), protocol=json.dumps(protocol, sort_keys=True))
