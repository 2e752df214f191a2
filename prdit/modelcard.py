"""Model cards: a ``README.md`` beside exported weights, in the Hugging Face convention (YAML front matter, then
Markdown), that says what the model is, what it was trained on, how well it does and what it must not be used for.

Everything in the card is read from the exported file itself (its metadata, its SHA256) and, when given, from the
training config and a metrics JSON, so a card cannot describe other weights than the ones beside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from prdit import __version__
from prdit.checkpoint import CheckpointMeta, load_exported
from prdit.data.intensity import IntensityMapping
from prdit.evaluation.descriptions import markdown_table
from prdit.io import sha256_file

TAGS = ["medical-imaging", "ct", "diffusion", "3d", "prdit", "chest-ct", "unconditional-image-generation"]
DATASETS = {
    "phantom": "procedural chest-CT phantoms made by `prdit.data.phantom` (synthetic: no patient data)",
    "lidc": "LIDC-IDRI (The Cancer Imaging Archive, CC BY 3.0): thoracic CT scans",
    "rad": "RAD-ChestCT (Draelos et al.): chest CT volumes",
    "folder": "a folder of CT volumes in HU",
}
CITATION = """@inproceedings{zhang2026pixellevel,
  title     = {Pixel-Level Residual Diffusion Transformer: Scalable 3D {CT} Volume Generation},
  author    = {Zhenkai Zhang and Markus Hiller and Krista A. Ehinger and Tom Drummond},
  booktitle = {The Fourteenth International Conference on Learning Representations},
  year      = {2026},
  url       = {https://openreview.net/forum?id=bWtRZQ1rm2}
}"""


def read_metrics(path: str | os.PathLike) -> tuple[dict[str, dict], dict | None]:
    """``{set name: evaluate_sets result}`` and the floor from a ``prdit evaluate`` JSON or a demo ``metrics.json``."""
    data = json.loads(Path(path).read_text())
    if "metrics" in data and isinstance(data["metrics"], dict):
        return data["metrics"], data.get("floor")
    return {"samples": data}, data.get("floor")


def _training_lines(config: dict, meta: CheckpointMeta, step: int | None) -> list[str]:
    data, training = config.get("data", {}), config.get("training", {})
    spacing = " × ".join(f"{s:g}" for s in meta.spacing)
    lines = [f"- **Data**: {DATASETS.get(data.get('dataset'), 'not recorded in this file')}"
             + (f" (`{data['root']}`)" if data.get("root") else "") + "."]
    lines.append(f"- **Volumes**: {meta.input_size}³ voxels at {spacing} mm (z × y × x), LPS orientation.")
    mapping = IntensityMapping.from_dict(meta.intensity)
    if mapping.mode == "hu":
        low, high = mapping.window
        lines.append(f"- **Intensity mapping**: HU clipped to [{low:g}, {high:g}] and mapped linearly to [-1, 1]; "
                     "samples are mapped back to HU.")
    else:
        lines.append("- **Intensity mapping**: the paper's per-volume min-max normalisation "
                     f"(percentile {mapping.percentile:g}); HU range for the way back: {mapping.reference_range}.")
    if training:
        lines.append(f"- **Training**: {step if step is not None else training.get('total_steps')} steps, global batch "
                     f"{training.get('global_batch_size')}, lr {training.get('lr')}, EMA decay {training.get('ema_decay')}, "
                     f"seed {training.get('seed')}"
                     + (f", starting from `{config['model']['pretrained_path']}`" if config.get("model", {}).get("pretrained_path") else "")
                     + ".")
    elif step is not None:
        lines.append(f"- **Training**: {step} steps (the exported file carries no training config).")
    stage = "stage 2: global residual DiT on a frozen local denoiser" if meta.depth else "stage 1: local denoiser only"
    lines.append(f"- **Model**: `{meta.model_name}` ({stage}), window stride {meta.stride}.")
    return lines


def model_card(weights: str | os.PathLike, metrics: str | os.PathLike | None = None, config: dict | None = None,
               license: str = "apache-2.0") -> str:
    """The card of an exported ``.safetensors`` file; ``metrics`` is an evaluation JSON, ``config`` the training
    config when the file carries none."""
    weights = Path(weights)
    state = load_exported(weights)
    meta = CheckpointMeta.from_dict(state["meta"], weights)
    config = config or state.get("config") or {}
    dataset = config.get("data", {}).get("dataset")
    front = {"license": license, "library_name": "prdit", "tags": TAGS, "pipeline_tag": "unconditional-image-generation"}
    if dataset == "lidc":
        front["datasets"] = ["LIDC-IDRI"]
    sampler = meta.diffusion.get("sampler") or ("ian-2m" if meta.diffusion.get("process", "ian") == "ian" else "flow-heun")
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {meta.model_name} · {meta.input_size}³ chest CT ({dataset or 'data not recorded'})", "",
        "A PRDiT (Pixel-Level Residual Diffusion Transformer, ICLR 2026) that generates whole 3D chest-CT volumes "
        f"in Hounsfield units directly at voxel level, trained and exported with prdit {__version__}.", "",
        "## Files", "",
        f"- `{weights.name}`: {state.get('weights', 'ema')} weights, safetensors (no pickle), "
        f"{weights.stat().st_size / 1e6:.1f} MB, SHA256 `{sha256_file(weights)}`.", "",
        "## Training data and model", "", *_training_lines(config, meta, state.get("step")), "",
    ]
    lines += ["## Metrics", ""]
    if metrics is not None:
        results, floor = read_metrics(metrics)
        lines += [f"From `{Path(metrics).name}` (generated samples against held-out real volumes):", "",
                  *markdown_table(results, floor), ""]
    else:
        lines += ["Not measured for this file: evaluate samples against held-out real volumes (`prdit evaluate ... --out "
                  "metrics.json`) and export again with `--metrics metrics.json`.", ""]
    lines += [
        "## How to use", "",
        "```python",
        "import prdit",
        f'pipeline = prdit.load_pipeline("{weights.name}")  # CPU or GPU',
        f"volumes = pipeline.sample(4, seed=0)  # [4, 1, {meta.input_size}, {meta.input_size}, {meta.input_size}] in HU, sampler {sampler}",
        'pipeline.save_nifti(volumes, "samples/")  # int16 NIfTI with the real spacing',
        "```", "",
        f"or `prdit sample --ckpt {weights.name} --output-dir samples/ --num-volumes 4 --report`.", "",
        "## Intended use and limitations", "",
        "- **Research only. Not for diagnosis, treatment or any clinical decision**, and not a medical device.",
        "- Intended for research on generative models of CT: data augmentation experiments, method development, "
        "teaching. Generated volumes are not real patients; anatomy, pathology and noise can be wrong in ways that "
        "look plausible.",
        "- The model reproduces its training data's scanner, population, resolution and field of view; it says "
        "nothing reliable outside them.",
        "- Feature metrics (FID, MMD) computed without MedicalNet's trained weights use random-init features and "
        "only rank models evaluated the same way.",
    ]
    if dataset == "phantom":
        lines.append("- Trained on synthetic phantoms: a demonstration of the method, not a model of human anatomy.")
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)
