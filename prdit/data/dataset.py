"""Training data: volumes on disk -> model-space tensors [1, D, H, W] in [-1, 1], and the split into train/val.

Phantoms, preprocessed LIDC-IDRI / RAD-ChestCT and a user's own NIfTI folder all take this one path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from prdit.config import DataConfig
from prdit.data.intensity import IntensityMapping
from prdit.data.phantom import write_phantom_dataset
from prdit.data.sources import resolve_splits
from prdit.data.volume_ops import average_pool
from prdit.errors import DataError
from prdit.io import load_volume


def mapping_from_config(config: DataConfig) -> IntensityMapping:
    return IntensityMapping(
        mode=config.intensity, window=config.hu_window, percentile=config.paper_percentile, scale=config.paper_scale
    )


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
        # Clip (paper: normalise) at full resolution, then pool: the official order, in both modes.
        if self.mapping.mode == "paper":
            hu = average_pool(self.mapping.to_unit(volume.array), self.pool)
        else:
            hu = average_pool(self.mapping.clip(volume.array), self.pool)
        if self.image_size is not None and hu.shape != (self.image_size,) * 3:
            ratio = volume.array.shape[0] / self.image_size
            hint = f"set data.pool={int(ratio)}" if ratio == int(ratio) and ratio >= 1 else "preprocess the data to that size"
            raise DataError(
                f"{self.paths[index]}: volume is {volume.array.shape} (after pool={self.pool}: {hu.shape}), "
                f"but data.image_size={self.image_size}; {hint}"
            )
        sz, sy, sx = volume.spacing
        model = self.mapping.from_unit(hu) if self.mapping.mode == "paper" else self.mapping.to_model(hu)
        loaded = LoadedVolume(np.asarray(model, dtype=np.float32), (sz * self.pool, sy * self.pool, sx * self.pool))
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
            array = np.flip(array, axis=tuple(flips))
        return torch.from_numpy(np.ascontiguousarray(array))[None]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing of the first volume (after pooling): the spacing written into generated volumes."""
        return self.load(0).spacing


def ensure_phantom_data(config: DataConfig, progress: bool = True) -> None:
    """Generate the phantom dataset into ``config.root`` when it has no volumes yet."""
    root = Path(config.root)
    if root.is_dir() and any(root.glob("*.nii*")):
        return
    print(f"[prdit] generating {config.phantom.num} phantom volumes of {config.image_size * config.pool}^3 into {root}")
    write_phantom_dataset(
        root,
        num=config.phantom.num,
        size=config.image_size * config.pool,
        seed=config.phantom.seed,
        spacing_mm=config.phantom.spacing_mm,
        workers=config.phantom.workers,
        progress=progress,
        dense_bone=config.phantom.dense_bone,
    )


def build_datasets(config: DataConfig, seed: int = 0, progress: bool = True) -> tuple[VolumeDataset, VolumeDataset | None]:
    """The training and validation datasets of a config (phantoms are generated on first use)."""
    if config.dataset == "phantom":
        ensure_phantom_data(config, progress=progress)
    train_paths, val_paths = resolve_splits(config)
    mapping = mapping_from_config(config)
    common: dict[str, Any] = dict(mapping=mapping, image_size=config.image_size, pool=config.pool, cache=config.cache)
    train = VolumeDataset(train_paths, flip_axes=tuple(config.flip_axes), seed=seed, **common)
    if config.intensity == "paper":
        mapping.fit([load_volume(p).array for p in train_paths[:64]])
    val = VolumeDataset(val_paths, **common) if val_paths else None
    return train, val
