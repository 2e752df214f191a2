"""Small sample folders for report tests: volumes with JSON sidecars that record a condition mask, as
``prdit sample --mask`` writes them (written here in milliseconds, no model needed)."""

import json
from pathlib import Path

import numpy as np

from prdit.data.conditions import LABELS_DIR, LABELS_FILE
from prdit.io import save_nifti, sha256_file

SPACING = (2.0, 1.5, 1.5)


def cube_mask(size: int, outer: tuple[int, int], inner: tuple[int, int] | None = None) -> np.ndarray:
    """Label 1 on the cube ``outer`` (start, stop on every axis), label 2 on the cube ``inner`` inside it."""
    mask = np.zeros((size,) * 3, dtype=np.uint8)
    mask[(slice(*outer),) * 3] = 1
    if inner is not None:
        mask[(slice(*inner),) * 3] = 2
    return mask


def conditional_samples(root: Path, mask: np.ndarray, names: dict[str, int], count: int = 2) -> tuple[Path, Path]:
    """``root/samples`` with ``count`` volumes whose sidecars record ``root/masks/labels/m.nii.gz`` (``mask``,
    its values named by ``labels.json``); returns (sample folder, mask file)."""
    mask_path = save_nifti(root / "masks" / LABELS_DIR / "m.nii.gz", mask, SPACING, dtype=np.uint8)
    (root / "masks" / LABELS_FILE).write_text(json.dumps(names))
    rng = np.random.default_rng(0)
    for seed in range(count):
        hu = np.where(mask > 0, 40.0, -1000.0) + rng.normal(0, 20, mask.shape)
        save_nifti(root / "samples" / f"sample_{seed:06d}.nii.gz", hu, SPACING, dtype=np.int16)
        sidecar = {"seed": seed, "model": "PRDiT-T/6/4", "spacing_mm": list(SPACING),
                   "condition": {"mask": str(mask_path), "mask_sha256": sha256_file(mask_path), "attributes": {}, "guidance_scale": 1.0}}
        (root / "samples" / f"sample_{seed:06d}.json").write_text(json.dumps(sidecar))
    return root / "samples", mask_path
