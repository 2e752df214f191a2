"""The Hounsfield-unit conventions every part of prdit shares (imports nothing, so every layer may use it).

These are conventions about CT, not about a trained model: a model's own intensity mapping (its window) is stored
in its checkpoint (``meta.intensity``) and in every sample's JSON sidecar, and is read from there
(:class:`prdit.data.intensity.IntensityMapping`). :data:`DEFAULT_HU_WINDOW` is only what a new run trains with.
"""

from __future__ import annotations

import math

#: Air (and what pads a volume beyond its scanned field).
AIR_HU = -1000.0
#: Scanners mark pixels outside the field of view with -2000 or -3024 HU: anything below this is read as air.
OUT_OF_FIELD_HU = -1500.0
#: Soft tissue and bone lie above, lung and air below: the body is the largest region above it, the lungs are the
#: air below it inside the body.
BODY_THRESHOLD_HU = -500.0
#: Tissue bands, half-open HU ranges [low, high), used by every tissue metric (evaluation and restoration).
TISSUE_BANDS_HU: dict[str, tuple[float, float]] = {
    "lung": (-950.0, -500.0),
    "fat": (-190.0, -30.0),
    "soft_tissue": (-30.0, 150.0),
    "bone": (300.0, math.inf),
}
#: The fixed window a new ``data.intensity=hu`` run maps to [-1, 1]: it keeps cortical bone up to 2000 HU.
DEFAULT_HU_WINDOW = (-1000.0, 2000.0)
#: The window of a mapping saved without one: it was written before the default became DEFAULT_HU_WINDOW.
UNRECORDED_HU_WINDOW = (-1000.0, 1000.0)
#: The official preprocessing clips every volume below at air, and RAD-ChestCT's also above at this ceiling.
PAPER_FLOOR_HU = AIR_HU
PAPER_RAD_CEILING_HU = 1000.0
#: An official checkpoint carries no HU mapping: its per-volume range was [air, the volume's 99.9th / 99.5th
#: percentile], which for chest CT lies near 1000 HU, so its samples map back to this range unless told otherwise.
OFFICIAL_HU_RANGE = (PAPER_FLOOR_HU, PAPER_RAD_CEILING_HU)
#: The evaluation protocol's input to the feature networks and MS-SSIM: HU clipped to this window and mapped to
#: [-1, 1], the same for every model so that their scores compare (it is not any model's own mapping).
EVALUATION_WINDOW_HU = (-1000.0, 1000.0)
