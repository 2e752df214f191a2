"""PRDiT: Pixel-Level Residual Diffusion Transformer for 3D CT volume generation.

An implementation of Z. Zhang, M. Hiller, K. A. Ehinger, T. Drummond, "Pixel-Level Residual Diffusion
Transformer: Scalable 3D CT Volume Generation", ICLR 2026, https://openreview.net/forum?id=bWtRZQ1rm2
(BibTeX in the README).

>>> import prdit
>>> pipeline = prdit.load_pipeline("results/phantom/002-PRDiT-T-6-2")   # run folder, checkpoint or .safetensors
>>> volumes = pipeline.sample(4, seed=0)                                # [4, 1, D, H, W] in HU
>>> pipeline.save_nifti(volumes, "samples/")
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

# name -> module: imported on first use so that `import prdit` (and the CLI's --help) stays fast
_LAZY = {
    "load_pipeline": "prdit.sample",
    "Pipeline": "prdit.sample",
    "create_model": "prdit.models",
    "list_models": "prdit.models",
    "create_diffusion": "prdit.diffusion",
    "load_config": "prdit.config",
    "generate_phantom": "prdit.data.phantom",
    "load_volume": "prdit.io",
    "save_nifti": "prdit.io",
}

__all__ = ["__version__", "train", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name == "train":  # the callable subpackage: prdit.train(config, options) trains (prdit/train/__init__.py)
        return import_module("prdit.train")
    raise AttributeError(f"module 'prdit' has no attribute {name!r}")
