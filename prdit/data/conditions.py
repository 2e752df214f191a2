"""What a conditional model is conditioned on: label maps (one value per tissue class) and body attributes.

A **label map** is a uint8 volume on the grid of its CT (same shape and affine), written as
``labels/<name>.nii.gz`` beside the volumes, with ``labels.json`` naming its values (``{"body": 1, "lung": 2,
...}``; 0 is outside the body). ``body`` is the body tissue no other name covers, so the whole body is every
voxel above 0.

An **attribute** is one number per volume, measured from the volume and its label map, and fed to the model
normalised as ``(value - centre) / scale`` (:data:`ATTRIBUTES`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prdit.errors import DataError

LABELS_FILE = "labels.json"
LABELS_DIR = "labels"

#: The label map values written for the procedural phantoms (``prdit data phantom --labels``).
PHANTOM_LABELS: dict[str, int] = {"body": 1, "lung": 2, "bone": 3, "heart": 4, "vessel": 5, "airway": 6, "fat": 7}

def effective_diameter_mm(body: np.ndarray, spacing: Sequence[float]) -> float:
    """Effective body diameter 2 sqrt(A / pi) of the mean axial body area A over the middle half of the slices.

    The middle half leaves out the shoulders and the abdomen, whose cross-sections say little about the chest.
    """
    depth = body.shape[0]
    middle = body[depth // 4 : depth - depth // 4]
    area = float(middle.sum(axis=(1, 2)).mean()) * float(spacing[1]) * float(spacing[2])
    return 2.0 * math.sqrt(area / math.pi)


def _body_diameter(hu: np.ndarray, labels: np.ndarray, values: Mapping[str, int], spacing: Sequence[float]) -> float:
    return effective_diameter_mm(labels > 0, spacing)


def _mean_lung_hu(hu: np.ndarray, labels: np.ndarray, values: Mapping[str, int], spacing: Sequence[float]) -> float:
    lung = labels == values["lung"]
    if not lung.any():
        raise DataError("mean_lung_hu needs a 'lung' label with at least one voxel")
    return float(hu[lung].mean())


def _spacing(hu: np.ndarray, labels: np.ndarray, values: Mapping[str, int], spacing: Sequence[float]) -> float:
    return float(np.mean(spacing))


@dataclass(frozen=True)
class Attribute:
    """A measurable scalar: how to measure it from (HU, label map, label values, spacing), and its normalisation."""

    description: str
    unit: str
    centre: float
    scale: float
    measure: Callable[[np.ndarray, np.ndarray, Mapping[str, int], Sequence[float]], float]
    needs: tuple[str, ...] = ()  # label names the measurement reads

    def normalise(self, value: float) -> float:
        return (float(value) - self.centre) / self.scale


ATTRIBUTES: dict[str, Attribute] = {
    "body_diameter_mm": Attribute("effective body diameter (middle half of the slices)", "mm", 300.0, 30.0, _body_diameter),
    "mean_lung_hu": Attribute("mean HU of the lung label", "HU", -800.0, 50.0, _mean_lung_hu, ("lung",)),
    "spacing_mm": Attribute("mean voxel spacing", "mm", 1.5, 1.0, _spacing),
}


def check_attribute_names(names: Sequence[str], where: str) -> None:
    unknown = [name for name in names if name not in ATTRIBUTES]
    if unknown:
        raise DataError(f"{where}: unknown attribute {unknown[0]!r}; known: {', '.join(ATTRIBUTES)}")


def measure_attributes(
    names: Sequence[str], hu: np.ndarray, labels: np.ndarray, values: Mapping[str, int], spacing: Sequence[float]
) -> list[float]:
    """The named attributes (in their own units) of one volume."""
    check_attribute_names(names, "attributes")
    return [ATTRIBUTES[name].measure(hu, labels, values, spacing) for name in names]


def read_label_names(folder: str | os.PathLike) -> dict[str, int]:
    """``labels.json`` of a label folder (or of the data folder holding ``labels/``): ``{name: value}``."""
    folder = Path(folder)
    candidates = [folder / LABELS_FILE, folder.parent / LABELS_FILE]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise DataError(f"{folder}: no {LABELS_FILE} naming the label values (e.g. {json.dumps(PHANTOM_LABELS)})")
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(values, dict) or not all(isinstance(v, int) and 0 < v < 256 for v in values.values()):
        raise DataError(f"{path}: must map label names to integers 1-255, e.g. {json.dumps(PHANTOM_LABELS)}")
    return {str(k): int(v) for k, v in values.items()}


def label_path(labels_dir: str | os.PathLike, volume_path: str | os.PathLike) -> Path:
    """The label map of a volume: the file of the same name in the label folder."""
    return Path(labels_dir) / Path(volume_path).name
