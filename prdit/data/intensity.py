"""Maps between Hounsfield units and the model's [-1, 1] intensity space, and back.

Two conventions:

* ``hu`` (default): a fixed window ``[low, high]`` HU -> [-1, 1] (clipped). Invertible for every volume, so
  generated volumes come back in true HU.
* ``paper``: the official PRDiT preprocessing. Each volume is clipped below at -1000 HU and above at its
  own ``percentile`` (99.9 for LIDC-IDRI), min-max scaled to [0, 1] and then to [-1, 1]. It is not invertible
  for a generated volume (its own min and max are unknown), so :meth:`to_hu` uses the median min/max of the
  training volumes, recorded by :meth:`fit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _clip(x: ArrayT, low: float, high: float) -> ArrayT:
    return x.clamp(low, high) if isinstance(x, torch.Tensor) else np.clip(x, low, high)


@dataclass
class IntensityMapping:
    """HU <-> model space. ``mode`` is ``hu`` (fixed window) or ``paper`` (per-volume min-max)."""

    mode: Literal["hu", "paper"] = "hu"
    window: tuple[float, float] = (-1000.0, 1000.0)
    percentile: float = 99.9
    reference_range: tuple[float, float] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.mode not in ("hu", "paper"):
            raise ValueError(f"intensity mode must be 'hu' or 'paper', got {self.mode!r}")
        low, high = self.window
        if not high > low:
            raise ValueError(f"intensity window must have high > low, got {self.window}")

    def volume_range(self, hu: np.ndarray) -> tuple[float, float]:
        """The (min, max) HU that map to (-1, 1) for this volume."""
        if self.mode == "hu":
            return (float(self.window[0]), float(self.window[1]))
        high = float(np.percentile(hu, self.percentile))
        return (-1000.0, max(high, -999.0))

    def fit(self, volumes: list[np.ndarray]) -> "IntensityMapping":
        """Record the median per-volume range of the training data (needed to invert ``paper`` mode)."""
        if self.mode == "paper" and volumes:
            ranges = np.array([self.volume_range(v) for v in volumes])
            self.reference_range = (float(np.median(ranges[:, 0])), float(np.median(ranges[:, 1])))
        return self

    def to_model(self, hu: ArrayT, volume_range: tuple[float, float] | None = None) -> ArrayT:
        """HU -> [-1, 1]. ``volume_range`` defaults to this volume's own range."""
        low, high = volume_range or self.volume_range(np.asarray(hu) if not isinstance(hu, torch.Tensor) else hu.cpu().numpy())
        return _clip((hu - low) / (high - low), 0.0, 1.0) * 2.0 - 1.0

    def to_hu(self, x: ArrayT) -> ArrayT:
        """[-1, 1] -> HU (values outside [-1, 1] are clipped first)."""
        if self.mode == "hu":
            low, high = self.window
        elif self.reference_range is not None:
            low, high = self.reference_range
        else:
            raise ValueError("paper-mode intensities need fit() on training volumes (or reference_range) to map back to HU")
        return (_clip(x, -1.0, 1.0) + 1.0) / 2.0 * (high - low) + low

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "window": list(self.window),
            "percentile": self.percentile,
            "reference_range": list(self.reference_range) if self.reference_range else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "IntensityMapping":
        ref = data.get("reference_range")
        return cls(
            mode=data.get("mode", "hu"),
            window=tuple(data.get("window", (-1000.0, 1000.0))),  # type: ignore[arg-type]
            percentile=float(data.get("percentile", 99.9)),
            reference_range=tuple(ref) if ref else None,  # type: ignore[arg-type]
        )
