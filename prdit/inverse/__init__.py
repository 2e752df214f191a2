"""prdit.inverse: inverse problems with a frozen PRDiT prior (TF-PRDiT's measurement-guided sampling).

>>> import prdit
>>> from prdit.inverse import SuperResolution
>>> pipeline = prdit.load_pipeline("prdit/assets/phantom-32.safetensors")
>>> op = SuperResolution(factor=2)
>>> y = op(truth_hu)                                    # [1, 1, 16, 16, 16] from a [1, 1, 32, 32, 32] HU volume
>>> restored, std = pipeline.restore(y, op, num_samples=4, return_std=True)   # posterior mean and std in HU
>>> baseline = op.baseline(y)                           # trilinear upsampling

Operators (``prdit.inverse.operators``): SuperResolution, Inpainting, Deblurring, SparseViewXray, Identity.
"""

from prdit.inverse.guidance import DataConsistency, conjugate_gradient_least_squares, measurement_guidance
from prdit.inverse.operators import (
    Deblurring,
    Identity,
    Inpainting,
    Operator,
    SparseViewXray,
    SuperResolution,
    central_cube_mask,
    uniform_angles,
)
from prdit.inverse.restore import sample_posterior

__all__ = [
    "Operator", "Identity", "SuperResolution", "Inpainting", "Deblurring", "SparseViewXray", "uniform_angles", "central_cube_mask",
    "DataConsistency", "conjugate_gradient_least_squares", "measurement_guidance", "sample_posterior",
]
