"""Numpy operations on ``[z, y, x]`` HU volumes shared by preprocessing and the datasets: pooling, cropping,
finding the body, and the paper's per-volume intensity scaling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from prdit.errors import DataError

AIR_HU = -1000.0
BODY_THRESHOLD_HU = -500.0  # soft tissue and bone are above, lung and air below


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


def paper_normalize(hu: np.ndarray, percentile: float, low: float = -1000.0, ceiling: float | None = None) -> np.ndarray:
    """The paper's per-volume intensity scaling: clip to [low, ceiling], clip above the ``percentile``-th
    percentile, then min-max to [0, 1] (float32)."""
    clipped = np.clip(hu, low, ceiling if ceiling is not None else np.inf)
    clipped = np.minimum(clipped, np.percentile(clipped, percentile))
    lo, hi = float(clipped.min()), float(clipped.max())
    if hi <= lo:
        raise DataError(f"constant volume ({lo} HU) cannot be min-max normalised")
    return ((clipped - lo) / (hi - lo)).astype(np.float32)
