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


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected region of a boolean mask (face connectivity); all False when the mask is empty.

    Above the body threshold it is the patient: the scanner table and stray objects are smaller regions.
    """
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def filled_body(hu: np.ndarray, threshold: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """The body of a HU volume ``[z, y, x]``: its :func:`largest_component` above ``threshold``, holes (the lungs,
    airways) filled in each axial slice."""
    from scipy import ndimage

    return np.stack([ndimage.binary_fill_holes(axial) for axial in largest_component(hu > threshold)])


def body_center(hu: np.ndarray, threshold: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """Centre [z, y, x] (index units) of the bounding box of the largest connected region above ``threshold``
    (:func:`largest_component`); falls back to the array centre."""
    body = largest_component(hu > threshold)
    if not body.any():
        return (np.array(hu.shape, dtype=np.float64) - 1) / 2
    box = [np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    return np.array([(index[0] + index[-1]) / 2 for index in box], dtype=np.float64)
