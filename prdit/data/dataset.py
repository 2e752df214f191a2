"""Training data: volumes on disk -> model-space tensors [1, D, H, W] in [-1, 1], and the split into train/val.

Phantoms, preprocessed LIDC-IDRI / RAD-ChestCT and a user's own NIfTI folder all take this one path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from prdit.config import DataConfig
from prdit.data.intensity import IntensityMapping
from prdit.errors import DataError
from prdit.io import find_volumes, load_volume


def average_pool(volume: np.ndarray, factor: int) -> np.ndarray:
    """Integer average pooling of a [D, H, W] volume (the paper's 256^3 -> 128^3 route); trailing voxels are cropped."""
    if factor == 1:
        return volume
    d, h, w = (s // factor for s in volume.shape)
    if min(d, h, w) == 0:
        raise DataError(f"cannot pool a volume of shape {volume.shape} by {factor}")
    cropped = volume[: d * factor, : h * factor, : w * factor]
    return cropped.reshape(d, factor, h, factor, w, factor).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def mapping_from_config(config: DataConfig) -> IntensityMapping:
    return IntensityMapping(mode=config.intensity, window=tuple(config.hu_window), percentile=config.paper_percentile)


@dataclass
class LoadedVolume:
    array: np.ndarray  # model space, [D, H, W]
    spacing: tuple[float, float, float]


class VolumeDataset(Dataset):
    """Volumes -> float32 tensors [1, D, H, W] in model space.

    ``image_size`` is checked after pooling (a mismatch is an error that says which ``pool`` would fit).
    Flips along ``flip_axes`` are drawn from a hash of (seed, epoch, index), so augmentation is reproducible
    across workers, ranks and resumed runs; call :meth:`set_epoch` every epoch.
    """

    def __init__(
        self,
        paths: list[Path],
        mapping: IntensityMapping,
        image_size: int | None = None,
        pool: int = 1,
        flip_axes: tuple[int, ...] = (),
        cache: bool = True,
        seed: int = 0,
    ) -> None:
        if not paths:
            raise DataError("the dataset is empty: no volume files were given")
        self.paths = list(paths)
        self.mapping = mapping
        self.image_size = image_size
        self.pool = pool
        self.flip_axes = tuple(flip_axes)
        self.cache = cache
        self.seed = seed
        self.epoch = 0
        self._cache: dict[int, LoadedVolume] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, index: int) -> LoadedVolume:
        """The volume at ``index`` in model space (no augmentation)."""
        if index in self._cache:
            return self._cache[index]
        volume = load_volume(self.paths[index])
        hu = average_pool(volume.array, self.pool)
        if self.image_size is not None and hu.shape != (self.image_size,) * 3:
            ratio = volume.array.shape[0] / self.image_size
            hint = f"set data.pool={int(ratio)}" if ratio == int(ratio) and ratio >= 1 else "preprocess the data to that size"
            raise DataError(
                f"{self.paths[index]}: volume is {volume.array.shape} (after pool={self.pool}: {hu.shape}), "
                f"but data.image_size={self.image_size}; {hint}"
            )
        spacing = tuple(s * self.pool for s in volume.spacing)
        loaded = LoadedVolume(self.mapping.to_model(hu).astype(np.float32), spacing)  # type: ignore[arg-type]
        if self.cache:
            self._cache[index] = loaded
        return loaded

    def _flips(self, index: int) -> list[int]:
        if not self.flip_axes:
            return []
        digest = hashlib.blake2b(f"{self.seed}:{self.epoch}:{index}".encode(), digest_size=8).digest()
        bits = int.from_bytes(digest, "little")
        return [axis for i, axis in enumerate(self.flip_axes) if bits >> i & 1]

    def __getitem__(self, index: int) -> torch.Tensor:
        array = self.load(index).array
        flips = self._flips(index)
        if flips:
            array = np.flip(array, axis=flips)
        return torch.from_numpy(np.ascontiguousarray(array))[None]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing of the first volume (after pooling): the spacing written into generated volumes."""
        return self.load(0).spacing

    def hu_volumes(self, limit: int | None = None) -> list[np.ndarray]:
        """HU arrays of the first ``limit`` volumes (for fitting paper-mode mappings and for evaluation)."""
        return [self.mapping.to_hu(self.load(i).array) for i in range(min(len(self), limit or len(self)))]


def _list_or_none(root: Path, explicit: str | None, default_name: str) -> Path | None:
    if explicit:
        path = Path(explicit)
        path = path if path.is_absolute() or path.exists() else root / path
        if not path.exists():
            raise DataError(f"{explicit}: list file not found (looked at {path})")
        return path
    candidate = root / default_name if root.is_dir() else None
    return candidate if candidate is not None and candidate.exists() else None


def split_paths(paths: list[Path], val_count: int, seed: int = 42) -> tuple[list[Path], list[Path]]:
    """Deterministic shuffle with ``seed``; the first ``val_count`` are validation."""
    order = np.random.default_rng(seed).permutation(len(paths))
    shuffled = [paths[i] for i in order]
    return sorted(shuffled[val_count:]), sorted(shuffled[:val_count])


def ensure_phantom_data(config: DataConfig, progress: bool = True) -> None:
    """Generate the phantom dataset into ``config.root`` when it has no volumes yet."""
    root = Path(config.root)
    if root.is_dir() and any(root.glob("*.nii*")):
        return
    from prdit.data.phantom import write_phantom_dataset

    print(f"[prdit] generating {config.phantom.num} phantom volumes of {config.image_size * config.pool}^3 into {root}")
    write_phantom_dataset(
        root,
        num=config.phantom.num,
        size=config.image_size * config.pool,
        seed=config.phantom.seed,
        spacing_mm=config.phantom.spacing_mm,
        workers=config.phantom.workers,
        progress=progress,
    )


def resolve_splits(config: DataConfig) -> tuple[list[Path], list[Path]]:
    """Training and validation files: explicit lists, ROOT/train.txt + ROOT/val.txt, or a seeded split."""
    root = Path(config.root)
    train_list = _list_or_none(root, config.train_list, "train.txt")
    val_list = _list_or_none(root, config.val_list, "val.txt")
    if train_list is not None:
        train = find_volumes(train_list)
        val = find_volumes(val_list) if val_list is not None else []
        return train, val
    paths = find_volumes(root)
    val_count = min(200, len(paths) // 10)
    return split_paths(paths, val_count)


def build_datasets(config: DataConfig, seed: int = 0, progress: bool = True) -> tuple[VolumeDataset, VolumeDataset | None]:
    """The training and validation datasets of a config (phantoms are generated on first use)."""
    if config.dataset == "phantom":
        ensure_phantom_data(config, progress=progress)
    train_paths, val_paths = resolve_splits(config)
    mapping = mapping_from_config(config)
    common = dict(mapping=mapping, image_size=config.image_size, pool=config.pool, cache=config.cache)
    train = VolumeDataset(train_paths, flip_axes=tuple(config.flip_axes), seed=seed, **common)  # type: ignore[arg-type]
    if config.intensity == "paper":
        mapping.fit([load_volume(p).array for p in train_paths[:64]])
    val = VolumeDataset(val_paths, **common) if val_paths else None  # type: ignore[arg-type]
    return train, val
