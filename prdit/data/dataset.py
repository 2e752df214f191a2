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

from prdit.config import ConditionConfig, DataConfig
from prdit.data.conditions import ATTRIBUTES, LABELS_DIR, LABELS_FILE, check_attribute_names, label_path, measure_attributes, read_label_names
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
    labels: np.ndarray | None = None  # uint8 label map [D, H, W] (conditional datasets)
    attributes: list[float] | None = None  # normalised attributes (conditional datasets)


@dataclass(frozen=True)
class ConditionSource:
    """Where a conditional dataset finds each volume's label map, and which attributes it measures."""

    labels_dir: Path
    label_values: dict[str, int]  # every name of the data's labels.json -> its value
    model_labels: tuple[str, ...] = ()  # the label names the model sees, in channel order
    attributes: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: DataConfig, condition: ConditionConfig) -> ConditionSource:
        check_attribute_names(condition.attributes, "model.condition.attributes")
        labels_dir = Path(config.labels) if config.labels else Path(config.root) / LABELS_DIR
        values = read_label_names(labels_dir)
        missing = [name for name in condition.labels if name not in values]
        if missing:
            raise DataError(
                f"model.condition.labels names {missing[0]!r}, which {labels_dir}'s {LABELS_FILE} does not define "
                f"(it has: {', '.join(values)})"
            )
        needed = [n for a in condition.attributes for n in ATTRIBUTES[a].needs if n not in values]
        if needed:
            raise DataError(f"model.condition.attributes need the label {needed[0]!r}, which {labels_dir}'s {LABELS_FILE} lacks")
        return cls(labels_dir, values, tuple(condition.labels), tuple(condition.attributes))


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
        condition: ConditionSource | None = None,
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
        self.condition = condition
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
        spacing = (sz * self.pool, sy * self.pool, sx * self.pool)
        loaded = LoadedVolume(np.asarray(model, dtype=np.float32), spacing)
        if self.condition is not None:
            loaded.labels = self._load_labels(index, volume.array.shape, hu.shape)
            hu_values = hu if self.mapping.mode == "hu" else average_pool(volume.array, self.pool)
            measured = measure_attributes(self.condition.attributes, hu_values, loaded.labels, self.condition.label_values, spacing)
            loaded.attributes = [ATTRIBUTES[name].normalise(v) for name, v in zip(self.condition.attributes, measured)]
        if self.cache:
            self._cache[index] = loaded
        return loaded

    def _load_labels(self, index: int, shape: tuple[int, ...], pooled: tuple[int, ...]) -> np.ndarray:
        assert self.condition is not None
        path = label_path(self.condition.labels_dir, self.paths[index])
        if not path.is_file():
            raise DataError(f"{self.paths[index]}: no label map {path} (label maps are named like their volumes)")
        labels = load_volume(path).array
        if labels.shape != shape:
            raise DataError(f"{path}: label map is {labels.shape}, its volume {shape}; they must share one grid")
        offset = self.pool // 2  # nearest neighbour of each pooled voxel's centre
        picked = labels[offset :: self.pool, offset :: self.pool, offset :: self.pool][: pooled[0], : pooled[1], : pooled[2]]
        return np.rint(picked).astype(np.uint8)

    def _flips(self, index: int) -> list[int]:
        if not self.flip_axes:
            return []
        digest = hashlib.blake2b(f"{self.seed}:{self.epoch}:{index}".encode(), digest_size=8).digest()
        bits = int.from_bytes(digest, "little")
        return [axis for i, axis in enumerate(self.flip_axes) if bits >> i & 1]

    def _flipped(self, array: np.ndarray, flips: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.flip(array, axis=tuple(flips)) if flips else array))[None]

    def volume(self, index: int) -> torch.Tensor:
        """The model-space volume [1, D, H, W] at ``index`` with its epoch's flips."""
        return self._flipped(self.load(index).array, self._flips(index))

    def __getitem__(self, index: int) -> torch.Tensor | dict[str, torch.Tensor]:
        """The volume (:meth:`volume`); for a conditional dataset ``{"x0", "labels" [1, D, H, W] uint8, "attributes" [A]}``."""
        if self.condition is None:
            return self.volume(index)
        loaded, flips = self.load(index), self._flips(index)
        assert loaded.labels is not None and loaded.attributes is not None
        return {"x0": self._flipped(loaded.array, flips), "labels": self._flipped(loaded.labels, flips),
                "attributes": torch.tensor(loaded.attributes, dtype=torch.float32)}

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing of the first volume (after pooling): the spacing written into generated volumes."""
        return self.load(0).spacing


def ensure_phantom_data(config: DataConfig, progress: bool = True, labels: bool = False) -> None:
    """Generate the phantom dataset into ``config.root`` when it has no volumes (or, with ``labels``, no label maps) yet."""
    root = Path(config.root)
    if root.is_dir() and any(root.glob("*.nii*")) and (not labels or (root / LABELS_FILE).is_file()):
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
        labels=labels,
    )


def build_datasets(
    config: DataConfig, seed: int = 0, progress: bool = True, condition: ConditionConfig | None = None
) -> tuple[VolumeDataset, VolumeDataset | None]:
    """The training and validation datasets of a config (phantoms are generated on first use); with an enabled
    ``condition`` (``model.condition``) their items carry label maps and attributes."""
    conditional = condition is not None and condition.enabled
    if config.dataset == "phantom":
        ensure_phantom_data(config, progress=progress, labels=conditional and not config.labels)
    train_paths, val_paths = resolve_splits(config)
    mapping = mapping_from_config(config)
    source = ConditionSource.from_config(config, condition) if conditional and condition is not None else None
    common: dict[str, Any] = dict(mapping=mapping, image_size=config.image_size, pool=config.pool, cache=config.cache,
                                  condition=source)
    train = VolumeDataset(train_paths, flip_axes=tuple(config.flip_axes), seed=seed, **common)
    if config.intensity == "paper":
        mapping.fit([load_volume(p).array for p in train_paths[:64]])
    val = VolumeDataset(val_paths, **common) if val_paths else None
    return train, val
