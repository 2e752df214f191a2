"""Numpy operations on ``[z, y, x]`` HU volumes shared by preprocessing and the datasets: pooling, cropping and
finding the body (the paper's per-volume intensity scaling is :class:`prdit.data.intensity.IntensityMapping`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prdit.errors import DataError
from prdit.hu import AIR_HU, BODY_THRESHOLD_HU


def average_pool(volume: np.ndarray, factor: int) -> np.ndarray:
    """Integer average pooling of a [D, H, W] volume (the paper's 256^3 -> 128^3 route); trailing voxels are cropped."""
    if factor == 1:
        return volume
    d, h, w = (s // factor for s in volume.shape)
    if min(d, h, w) == 0:
        raise DataError(f"cannot pool a volume of shape {volume.shape} by {factor}")
    cropped = volume[: d * factor, : h * factor, : w * factor]
    return cropped.reshape(d, factor, h, factor, w, factor).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def crop_or_pad(volume: np.ndarray, size: int, start: Sequence[int] | None = None, fill: float = AIR_HU) -> np.ndarray:
    """The ``size``^3 window of ``volume`` starting at index ``start`` (default: centred); outside reads ``fill``."""
    if start is None:
        start = tuple((s - size) // 2 for s in volume.shape)
    out = np.full((size,) * 3, fill, dtype=volume.dtype)
    source, target = [], []
    for begin, extent in zip(start, volume.shape):
        lo, hi = max(begin, 0), min(begin + size, extent)
        source.append(slice(lo, max(hi, lo)))
        target.append(slice(lo - begin, lo - begin + max(hi - lo, 0)))
    out[tuple(target)] = volume[tuple(source)]
    return out


def body_center(hu: np.ndarray, threshold: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """Centre [z, y, x] (index units) of the bounding box of the largest connected region above ``threshold``.

    The largest region is the patient; the table and stray objects are smaller. Falls back to the array centre.
    """
    from scipy import ndimage

    labels, count = ndimage.label(hu > threshold)
    if count == 0:
        return (np.array(hu.shape, dtype=np.float64) - 1) / 2
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    box = ndimage.find_objects(labels)[largest - 1]
    return np.array([(s.start + s.stop - 1) / 2 for s in box], dtype=np.float64)
