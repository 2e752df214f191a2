"""Maps between Hounsfield units and the model's intensity space, and back.

Two conventions:

* ``hu`` (default): a fixed window ``[low, high]`` HU -> [-1, 1] (clipped). Invertible for every volume, so
  generated volumes come back in true HU. A dataset clips to the window before it pools, as ``paper`` does.
* ``paper``: the official PRDiT preprocessing, step for step. Each volume at full resolution is clipped below
  at -1000 HU (and above at ``ceiling``, 1000 HU in the official RAD-ChestCT script), then above at its own
  ``percentile`` (taken after those clips: 99.9 for LIDC-IDRI, 99.5 for RAD-ChestCT), min-max scaled to [0, 1] (its own minimum and maximum), and only then average-pooled (the
  caller pools); ``scale="signed"`` finally maps to [-1, 1] (2x - 1, the official LIDC loader and the paper's
  text), ``scale="unit"`` keeps [0, 1] (what the official RAD loader trains on: its normalise flag is never
  passed on). A volume that is already in [0, 1] (a file the official scripts or ``prdit data ... --normalize
  paper`` wrote) is taken as it is. The mapping is not invertible for a generated volume (its own minimum and
  maximum are unknown), so :meth:`to_hu` uses the median range of the training volumes, recorded by :meth:`fit`
  (or :data:`prdit.hu.OFFICIAL_HU_RANGE` when the training files carry no HU).

A trained model's mapping is part of its checkpoint and of every sample's sidecar (:meth:`to_dict`); read it from
there with :meth:`from_dict`, never assume a window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
import torch

from prdit.errors import DataError
from prdit.hu import DEFAULT_HU_WINDOW, OFFICIAL_HU_RANGE, PAPER_FLOOR_HU, UNRECORDED_HU_WINDOW

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _clip(x: ArrayT, low: float, high: float) -> ArrayT:
    return x.clamp(low, high) if isinstance(x, torch.Tensor) else np.clip(x, low, high)


def is_unit_normalised(volume: np.ndarray) -> bool:
    """Whether a volume already holds [0, 1] intensities (no CT volume in HU does: air is -1000)."""
    return bool(volume.min() >= 0.0 and volume.max() <= 1.0)


@dataclass
class IntensityMapping:
    """HU <-> model space. ``mode`` is ``hu`` (fixed window) or ``paper`` (the official per-volume min-max)."""

    mode: Literal["hu", "paper"] = "hu"
    window: tuple[float, float] = DEFAULT_HU_WINDOW
    percentile: float = 99.9
    reference_range: tuple[float, float] | None = field(default=None)
    scale: Literal["signed", "unit"] = "signed"
    ceiling: float | None = None  # paper: clip above this HU before the percentile (the official RAD-ChestCT 1000)

    def __post_init__(self) -> None:
        if self.mode not in ("hu", "paper"):
            raise ValueError(f"intensity mode must be 'hu' or 'paper', got {self.mode!r}")
        if self.scale not in ("signed", "unit"):
            raise ValueError(f"paper intensity scale must be 'signed' ([-1, 1]) or 'unit' ([0, 1]), got {self.scale!r}")
        low, high = self.window
        if not high > low:
            raise ValueError(f"intensity window must have high > low, got {self.window}")

    @property
    def model_range(self) -> tuple[float, float]:
        """The interval model-space volumes lie in."""
        return (0.0, 1.0) if self.mode == "paper" and self.scale == "unit" else (-1.0, 1.0)

    def volume_range(self, hu: np.ndarray) -> tuple[float, float]:
        """The (min, max) HU that map to the ends of the model range for this volume."""
        if self.mode == "hu":
            return (float(self.window[0]), float(self.window[1]))
        clipped = np.clip(hu, PAPER_FLOOR_HU, self.ceiling if self.ceiling is not None else np.inf)
        return float(clipped.min()), float(np.percentile(clipped, self.percentile))

    def fit(self, volumes: list[np.ndarray]) -> "IntensityMapping":
        """Record the median per-volume range of the training data (needed to invert ``paper`` mode)."""
        if self.mode == "paper":
            ranges = np.array([self.volume_range(v) for v in volumes if not is_unit_normalised(v)])
            self.reference_range = (
                (float(np.median(ranges[:, 0])), float(np.median(ranges[:, 1]))) if len(ranges) else OFFICIAL_HU_RANGE
            )
        return self

    def to_unit(self, hu: np.ndarray) -> np.ndarray:
        """``paper`` mode's first half: one full-resolution HU volume -> [0, 1] (before any pooling). The one
        implementation of the paper's per-volume min-max (``prdit data --normalize paper`` writes it too)."""
        if is_unit_normalised(hu):
            return hu
        low, high = self.volume_range(hu)
        if not high > low:
            raise DataError(f"a constant volume ({low} HU) cannot be min-max normalised")
        return (np.clip(hu, low, high) - low) / (high - low)

    def from_unit(self, unit: ArrayT) -> ArrayT:
        """``paper`` mode's second half: [0, 1] -> model space (after pooling)."""
        return unit * 2.0 - 1.0 if self.scale == "signed" else unit

    def to_model(self, hu: ArrayT, volume_range: tuple[float, float] | None = None) -> ArrayT:
        """HU -> model space. ``volume_range`` defaults to this volume's own range (``paper``: no pooling here)."""
        if self.mode == "paper" and volume_range is None:
            array = hu.cpu().numpy() if isinstance(hu, torch.Tensor) else np.asarray(hu)
            unit = self.to_unit(array)
            return self.from_unit(torch.as_tensor(unit, dtype=hu.dtype) if isinstance(hu, torch.Tensor) else unit)
        low, high = volume_range or self.volume_range(np.asarray(hu))
        unit = _clip((hu - low) / (high - low), 0.0, 1.0)
        return self.from_unit(unit) if self.mode == "paper" else unit * 2.0 - 1.0

    def clip(self, hu: np.ndarray) -> np.ndarray:
        """``hu`` mode: HU clipped to the window, the step before pooling (pooling first would let out-of-field
        -3024 HU or bone above the window pull border voxels past what the window can hold)."""
        return np.clip(hu, *self.window) if self.mode == "hu" else hu

    def hu_range(self) -> tuple[float, float]:
        """The HU that the two ends of :attr:`model_range` stand for (the way back is linear between them)."""
        if self.mode == "hu":
            return self.window
        if self.reference_range is not None:
            return self.reference_range
        raise ValueError("paper-mode intensities need fit() on training volumes (or reference_range) to map back to HU")

    def to_hu(self, x: ArrayT) -> ArrayT:
        """Model space -> HU (values outside the model range are clipped first)."""
        low, high = self.hu_range()
        bottom, top = self.model_range
        return (_clip(x, bottom, top) - bottom) / (top - bottom) * (high - low) + low

    def definition(self) -> tuple:
        """What a config fixes about the mapping (not what fitting on data adds): equal means interchangeable."""
        return (self.mode, self.scale, tuple(self.window) if self.mode == "hu" else (self.percentile, self.ceiling))

    def describe(self) -> str:
        low, high = self.model_range
        source = f"HU window [{self.window[0]:g}, {self.window[1]:g}]" if self.mode == "hu" else \
            f"per-volume min-max (percentile {self.percentile:g}" + (f", ceiling {self.ceiling:g} HU)" if self.ceiling is not None else ")")
        return f"{source} -> [{low:g}, {high:g}]"

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "window": list(self.window),
            "percentile": self.percentile,
            "reference_range": list(self.reference_range) if self.reference_range else None,
            "scale": self.scale,
            **({"ceiling": self.ceiling} if self.ceiling is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "IntensityMapping":
        ref = data.get("reference_range")
        return cls(
            mode=data.get("mode", "hu"),
            window=tuple(data.get("window", UNRECORDED_HU_WINDOW)),
            percentile=float(data.get("percentile", 99.9)),
            reference_range=tuple(ref) if ref else None,
            scale=data.get("scale", "signed"),
            ceiling=data.get("ceiling"),
        )
