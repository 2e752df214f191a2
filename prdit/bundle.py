"""MONAI bundles: exported weights as a folder MONAI's tools run without prdit-specific code paths.

::

    DIR/configs/metadata.json     MONAI bundle metadata (versions, task, output format, intended use)
    DIR/configs/logging.conf      MONAI's logging settings
    DIR/configs/inference.json    builds prdit's network, diffusion process (with its sampler) and pipeline via _target_
    DIR/models/model.safetensors  the weights (the same file ``prdit export`` writes)
    DIR/docs/README.md            the model card

``python -m monai.bundle run --config_file DIR/configs/inference.json`` (from DIR, or with ``--bundle_root DIR``)
writes ``num_volumes`` sampled NIfTI volumes in HU to ``DIR/eval``; any key can be overridden on the command line,
e.g. ``--num_volumes 8 --steps 25 --output_dir out/``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from prdit import __version__
from prdit.checkpoint import CheckpointMeta, export_weights, load_exported
from prdit.data.intensity import IntensityMapping
from prdit.errors import CheckpointError
from prdit.io import atomic_write_text
from prdit.modelcard import model_card

WEIGHTS = "models/model.safetensors"
LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=console

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=console

[handler_console]
class=StreamHandler
level=INFO
formatter=plain
args=(sys.stdout,)

[formatter_plain]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def load_weights(model: torch.nn.Module, path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """``model`` with the weights of an exported ``.safetensors`` file, on ``device``, in eval mode, frozen."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: bundle weights not found; run from the bundle folder or pass --bundle_root DIR")
    state = load_exported(path)
    model.load_state_dict(state[state["weights"]])
    return model.to(device).eval().requires_grad_(False)


def inference_config(meta: CheckpointMeta, num_volumes: int = 4) -> dict:
    """The ``inference.json`` of a bundle: prdit objects by ``_target_``, run = sample into ``output_dir``."""
    return {
        "imports": ["$import pathlib", "$import torch", "$from prdit.bundle import load_weights",
                    "$from prdit.io import sha256_file", "$from prdit.sample import sample_to_folder"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "weights_file": f"$@bundle_root + '/{WEIGHTS}'",
        "device": "$'cuda' if torch.cuda.is_available() else 'cpu'",
        "num_volumes": num_volumes,
        "batch_size": 1,
        "seed": 0,
        "sampler": None,
        "steps": None,
        "network_def": {
            "_target_": "prdit.models.create_model",
            "name": meta.model_name, "input_size": meta.input_size, "in_channels": meta.in_channels,
            "out_channels": meta.out_channels, "stride": meta.stride,
        },
        "network": "$load_weights(@network_def, @weights_file, @device)",
        "diffusion": {"_target_": "prdit.diffusion.create_diffusion", **meta.diffusion},
        "pipeline": {
            "_target_": "prdit.sample.Pipeline",
            "model": "@network",
            "diffusion": "@diffusion",
            "mapping": {"_target_": "prdit.data.intensity.IntensityMapping.from_dict", "data": meta.intensity},
            "spacing": f"$tuple({list(meta.spacing)})",  # (sz, sy, sx) mm
            "input_size": meta.input_size,
            "device": "$torch.device(@device)",
            "checkpoint": "$pathlib.Path(@weights_file)",
            "checkpoint_sha256": "$sha256_file(@weights_file)",
        },
        "run": ["$sample_to_folder(@pipeline, @output_dir, @num_volumes, batch_size=@batch_size, seed=@seed, "
                "sampler=@sampler, steps=@steps, progress=False)"],
    }


def bundle_metadata(meta: CheckpointMeta, step: int | None, description: str) -> dict:
    """MONAI's ``metadata.json`` for a PRDiT bundle."""
    import monai
    import numpy

    size = [meta.input_size] * 3
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by prdit {__version__}" + (f" after {step} training steps" if step else "")},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"prdit": __version__, "safetensors": _version("safetensors"), "nibabel": _version("nibabel")},
        "name": f"PRDiT {meta.model_name} {meta.input_size}^3 chest CT",
        "task": "Unconditional generation of whole 3D chest-CT volumes in Hounsfield units",
        "description": description,
        "authors": "prdit developers",
        "copyright": "prdit developers",
        "data_type": "nifti",
        "intended_use": "Research only. Not for diagnosis, treatment or any clinical decision.",
        "network_data_format": {
            "inputs": {"noise": {"type": "image", "format": "gaussian noise", "num_channels": meta.in_channels,
                                 "spatial_shape": size, "dtype": "float32", "value_range": [], "is_patch_data": False,
                                 "channel_def": {"0": "noise"}}},
            "outputs": {"pred": {"type": "image", "format": "hounsfield", "num_channels": 1, "spatial_shape": size,
                                 "dtype": "int16", "value_range": _hu_range(meta),
                                 "is_patch_data": False, "channel_def": {"0": "CT"},
                                 "spacing_mm": list(meta.spacing)}},
        },
    }


def _hu_range(meta: CheckpointMeta) -> list[float]:
    """The HU the samples span: the model's own mapping's range (empty for an unfitted paper-mode mapping)."""
    mapping = IntensityMapping.from_dict(meta.intensity)
    return list(mapping.hu_range()) if mapping.mode == "hu" or mapping.reference_range else []


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def write_bundle(source: str | os.PathLike, bundle_dir: str | os.PathLike, num_volumes: int = 4, half: bool = True,
                 overwrite: bool = False, **card_options) -> Path:
    """Write a MONAI bundle of a checkpoint, run folder or exported ``.safetensors`` file into ``bundle_dir``.

    ``card_options`` (``metrics``, ``config``, ``license``) go to :func:`prdit.modelcard.model_card`.
    """
    bundle_dir = Path(bundle_dir)
    if bundle_dir.exists() and any(bundle_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{bundle_dir} exists and is not empty; pass --overwrite or choose another --bundle folder")
    weights = bundle_dir / WEIGHTS
    weights.parent.mkdir(parents=True, exist_ok=True)
    if str(source).endswith(".safetensors"):
        shutil.copyfile(source, weights)
    else:
        export_weights(source, weights, half=half, overwrite=True)
    state = load_exported(weights)
    meta = CheckpointMeta.from_dict(state["meta"], weights)
    card = model_card(weights, **card_options)
    description = card.split("\n## ", 1)[0].split("\n# ", 1)[-1].split("\n", 1)[-1].strip()
    atomic_write_text(bundle_dir / "configs" / "inference.json", json.dumps(inference_config(meta, num_volumes), indent=2) + "\n")
    atomic_write_text(bundle_dir / "configs" / "metadata.json",
                      json.dumps(bundle_metadata(meta, state.get("step"), description), indent=2) + "\n")
    atomic_write_text(bundle_dir / "configs" / "logging.conf", LOGGING_CONF)
    atomic_write_text(bundle_dir / "docs" / "README.md", card)
    return bundle_dir
