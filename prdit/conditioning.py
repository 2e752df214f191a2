"""Sampling conditions: a label-map file and named attributes -> the :class:`prdit.models.Condition` of a
conditional model, with every check a user needs (grid, label names, attribute names) as a one-line error.

A conditional checkpoint's metadata names its condition: ``{"labels": {name: value}, "attributes": [names]}``
(see :class:`prdit.checkpoint.CheckpointMeta`). A mask's values are the model's label values, or, when a
``labels.json`` lies beside the mask (or one folder up), that file's names are matched to the model's by name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prdit.data.conditions import ATTRIBUTES, LABELS_FILE, read_label_names
from prdit.errors import PrditError
from prdit.io import load_volume, sha256_file
from prdit.models.condition import Condition

#: The guidance scale sampling uses when none is given (see docs/conditional.md for how it was chosen).
DEFAULT_GUIDANCE_SCALE = 1.0


@dataclass
class SampleCondition:
    """What a user asked for: a label map in the model's label values (or None) and attributes in their units."""

    grid: tuple[int, int, int]
    mask: np.ndarray | None  # uint8 [D, H, W] in the model's label values
    attributes: dict[str, float]
    guidance_scale: float
    mask_source: str | None = None
    mask_sha256: str | None = None

    def record(self) -> dict:
        """The sidecar entry: what was asked for, and one SHA256 over all of it (the mask's bytes included)."""
        digest = hashlib.sha256(json.dumps([self.mask_sha256, self.attributes, self.guidance_scale], sort_keys=True).encode())
        return {"mask": self.mask_source, "mask_sha256": self.mask_sha256, "attributes": dict(self.attributes),
                "guidance_scale": self.guidance_scale, "sha256": digest.hexdigest()}

    def tensors(self, spec: Mapping, batch: int, device: torch.device) -> Condition:
        """The model input for ``batch`` volumes, all with this condition (parts not given are zero)."""
        label_values = list(spec.get("labels", {}).values())
        labels = None
        if label_values:
            label_map = torch.zeros(self.grid, dtype=torch.long) if self.mask is None else torch.from_numpy(self.mask.astype(np.int64))
            labels = Condition.from_label_map(label_map[None, None].to(device), label_values)
            labels = labels * float(self.mask is not None)
            labels = labels.expand(batch, *labels.shape[1:]).contiguous()
        names = list(spec.get("attributes", []))
        attributes = given = None
        if names:
            values = [ATTRIBUTES[n].normalise(self.attributes[n]) if n in self.attributes else 0.0 for n in names]
            attributes = torch.tensor([values] * batch, dtype=torch.float32, device=device)
            given = torch.tensor([[float(n in self.attributes) for n in names]] * batch, dtype=torch.float32, device=device)
        return Condition(labels, attributes, given)


def parse_attributes(items: list[str] | None) -> dict[str, float]:
    """``["body_diameter_mm=320", ...]`` (``--attribute``) -> ``{"body_diameter_mm": 320.0}``."""
    values: dict[str, float] = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        try:
            if not sep:
                raise ValueError
            values[name.strip()] = float(raw)
        except ValueError:
            raise PrditError(f"--attribute {item!r} must look like NAME=NUMBER, e.g. body_diameter_mm=320") from None
    return values


def _mask_label_names(path: Path) -> dict[str, int] | None:
    for folder in (path.parent, path.parent.parent):
        if (folder / LABELS_FILE).is_file():
            return read_label_names(folder)
    return None


def _remap(mask: np.ndarray, names: Mapping[str, int] | None, model_labels: Mapping[str, int], source: str) -> np.ndarray:
    """The mask in the model's label values; unknown names or values are errors."""
    known = ", ".join(f"{n}={v}" for n, v in model_labels.items())
    values = sorted(int(v) for v in np.unique(mask) if v != 0)
    if names is None:
        unseen = [v for v in values if v not in model_labels.values()]
        if unseen:
            raise PrditError(f"{source}: label value {unseen[0]} is not one the model was trained on ({known}); "
                             f"relabel the mask, or put a {LABELS_FILE} naming its values beside it")
        return mask
    unknown = [n for n, v in names.items() if n not in model_labels and v in values]
    if unknown:
        raise PrditError(f"{source}: label {unknown[0]!r} is not one the model was trained on ({known}); "
                         f"set those voxels to another label (0 = outside the body)")
    by_value = {v: n for n, v in names.items()}
    unnamed = [v for v in values if v not in by_value]
    if unnamed:
        raise PrditError(f"{source}: label value {unnamed[0]} is not named in its {LABELS_FILE}")
    lookup = np.zeros(256, dtype=np.uint8)
    for value, name in by_value.items():
        lookup[value] = model_labels.get(name, 0)
    return lookup[mask]


def build_condition(
    spec: Mapping | None, grid: tuple[int, int, int], spacing: tuple[float, float, float],
    mask: str | os.PathLike | np.ndarray | None = None, attributes: Mapping[str, float] | None = None,
    guidance_scale: float | None = None, model_name: str = "the model",
) -> SampleCondition | None:
    """Check a requested condition against a model's ``spec`` (its checkpoint's ``meta.condition``) and grid.

    Returns None when nothing is asked for. ``mask``: a label NIfTI path or a uint8 array on the model's grid.
    """
    attributes = dict(attributes or {})
    if mask is None and not attributes:
        if guidance_scale not in (None, 1.0):
            raise PrditError("--guidance-scale needs a condition: pass --mask and/or --attribute")
        return None
    if not spec:
        raise PrditError(f"{model_name} is unconditional: it takes no --mask or --attribute (use --pretrained phantom-mask "
                         "or a model trained with model.condition)")
    model_labels = dict(spec.get("labels", {}))
    model_attributes = list(spec.get("attributes", []))
    for name in attributes:
        if name not in model_attributes:
            raise PrditError(f"unknown attribute {name!r} for {model_name}; it was trained with: "
                             f"{', '.join(model_attributes) or 'no attributes'}")
    source = sha = None
    array = None
    if mask is not None:
        if not model_labels:
            raise PrditError(f"{model_name} was trained without label maps: it takes no --mask")
        if isinstance(mask, (str, os.PathLike)):
            path = Path(mask)
            volume = load_volume(path)
            array, source, sha = volume.array, str(path), sha256_file(path)
            if not np.allclose(volume.spacing, spacing, rtol=0.01):
                raise PrditError(
                    f"{path}: mask spacing {tuple(round(s, 3) for s in volume.spacing)} mm differs from the model's "
                    f"{tuple(round(s, 3) for s in spacing)} mm; resample it with nearest neighbour to the model's grid"
                )
            names = _mask_label_names(path)
        else:
            array, source, names = np.asarray(mask), "mask array", None
            sha = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
        if array.shape != tuple(grid):
            raise PrditError(
                f"{source}: mask is {array.shape} voxels, {model_name} generates {tuple(grid)}; resample the mask with "
                f"nearest neighbour to {grid[0]}^3 at {spacing[0]:g} mm (e.g. prdit data phantom --size {grid[0]} --labels)"
            )
        if np.any(array != np.rint(array)) or array.min() < 0 or array.max() > 255:
            raise PrditError(f"{source}: a mask holds integer label values 0-255")
        array = _remap(array.astype(np.uint8), names, model_labels, source)
    scale = DEFAULT_GUIDANCE_SCALE if guidance_scale is None else float(guidance_scale)
    if not np.isfinite(scale) or scale < 0:
        raise PrditError(f"--guidance-scale {guidance_scale} must be a number >= 0 (0 unconditional, 1 conditional)")
    return SampleCondition((int(grid[0]), int(grid[1]), int(grid[2])), array, attributes, scale, source, sha)
