"""The end-to-end demo on the embedded phantom data: phantoms -> stage 1 -> stage 2 -> samples -> metrics -> index.md.

Everything lands in one folder (default ``results/demo``)::

    report.html           open it in a browser: 3D slice viewers (samples beside real), metrics, training curves
    index.md              pictures and numbers, open it in any Markdown viewer
    data_phantom.png      a training phantom (what the model should learn)
    stage1_loss.png       stage-1 (local denoiser) loss curve of the run just trained
    stage2_loss.png       stage-2 (global residual DiT) loss curve
    samples/              NIfTI in HU + JSON sidecars + PNGs from the shipped phantom model
    samples_demo_run/     the same from the model this demo just trained (about 10 CPU minutes; rougher)
    metrics.json          FID / MMD (random-init MedicalNet fallback) and weight-free metrics, both sample sets

Diffusion models need many optimisation steps, more than a slow CPU gets through in the demo's budget, so the
main samples come from ``prdit/assets/phantom-32.safetensors``, trained by this project's own code with the
recipe in ``configs/phantom`` (``--train-full`` retrains it); the demo's own, shorter training runs both stages
and its samples are shown beside them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prdit.config import Config, load_config
from prdit.errors import PrditError
from prdit.evaluation.descriptions import markdown_table
from prdit.io import atomic_write_bytes, atomic_write_text, ensure_writable, load_volume
from prdit.report import write_report

CONFIG_DIR = Path(__file__).parent / "configs" / "phantom"
SHIPPED_WEIGHTS = Path(__file__).parent / "assets" / "phantom-32.safetensors"
REPRODUCE = (
    "prdit train --config configs/phantom/local.yaml --stages both\n"
    "prdit export 'results/phantom/*-PRDiT-T-6-2' --out prdit/assets/phantom-32.safetensors"
)


@dataclass(frozen=True)
class DemoPlan:
    """How long each part runs; the defaults fit about 10-15 minutes on 2 CPU cores, ``quick`` under 3."""

    stage1_steps: int
    stage2_steps: int
    num_volumes: int
    num_demo_volumes: int
    phantoms: int


PLANS = {
    "default": DemoPlan(stage1_steps=2000, stage2_steps=1500, num_volumes=8, num_demo_volumes=4, phantoms=200),
    "quick": DemoPlan(stage1_steps=40, stage2_steps=30, num_volumes=2, num_demo_volumes=2, phantoms=24),
}


def demo_configs(out_dir: Path, plan: DemoPlan | None, device: str) -> tuple[Config, Config]:
    """The phantom configs, shortened by ``plan`` (None: the full recipe), writing runs under ``out_dir/runs``."""
    common = [f"output.results_dir={out_dir / 'runs'}", f"training.device={device}"]
    if plan is not None and plan.phantoms != PLANS["default"].phantoms:
        common += [f"data.phantom.num={plan.phantoms}", f"data.root=data/phantom-32-n{plan.phantoms}"]
    stage1 = load_config(CONFIG_DIR / "local.yaml", common + ([f"training.total_steps={plan.stage1_steps}"] if plan else []))
    stage2 = load_config(CONFIG_DIR / "global.yaml", common + ([f"training.total_steps={plan.stage2_steps}"] if plan else []))
    return stage1, stage2


def run_demo(
    out_dir: str | Path = "results/demo", quick: bool = False, train_full: bool = False, device: str = "auto",
    progress: bool = True, overwrite: bool = False,
) -> Path:
    """Run the whole demo; returns the path of ``index.md``."""
    from prdit.data.sources import resolve_splits
    from prdit.evaluation import evaluate_floor, evaluate_sets
    from prdit.preview import save_montage
    from prdit.sample import load_pipeline, sample_to_folder
    from prdit.train.trainer import TrainOptions, train

    out_dir = Path(out_dir)
    if (out_dir / "index.md").exists() and not overwrite:
        raise PrditError(f"{out_dir} already holds a demo (index.md); pass --overwrite or choose another --out")
    ensure_writable(out_dir)
    plan = PLANS["quick" if quick else "default"]
    stage1_config, stage2_config = demo_configs(out_dir, None if train_full else plan, device)
    timings: dict[str, float] = {}

    def timed(name: str, func, *args, **kwargs):
        began = time.perf_counter()
        print(f"[demo] {name} ...", flush=True)
        result = func(*args, **kwargs)
        timings[name] = round(time.perf_counter() - began, 1)
        print(f"[demo] {name}: {timings[name]} s", flush=True)
        return result

    options = TrainOptions(progress=progress)
    stage1_run = timed("stage 1 training", train, stage1_config, options)
    stage2_run = timed("stage 2 training", train, stage2_config.with_pretrained(stage1_run), options)

    _, val_paths = resolve_splits(stage1_config.data)
    real = [load_volume(p) for p in val_paths]
    spacing = real[0].spacing
    save_montage(real[0].array, out_dir / "data_phantom.png", spacing=spacing, title=f"training phantom {val_paths[0].name}")
    for stage, run in (("stage1", stage1_run), ("stage2", stage2_run)):
        if (run / "loss.png").exists():
            atomic_write_bytes(out_dir / f"{stage}_loss.png", (run / "loss.png").read_bytes())

    sample_sets = {"samples_demo_run": (stage2_run, plan.num_demo_volumes)}
    if train_full:
        sample_sets = {"samples": (stage2_run, plan.num_volumes)}
    elif SHIPPED_WEIGHTS.is_file():
        sample_sets = {"samples": (SHIPPED_WEIGHTS, plan.num_volumes), **sample_sets}
    else:
        print(f"[demo] {SHIPPED_WEIGHTS} is missing: sampling only the model trained now")

    floor = timed("metrics real vs real", evaluate_floor, [v.array for v in real], spacing=spacing)
    metrics = {}
    for folder, (weights, count) in sample_sets.items():
        pipeline = load_pipeline(weights, device=None if device == "auto" else device)
        timed(f"sampling {folder}", sample_to_folder, pipeline, out_dir / folder, count,
                      batch_size=count, overwrite=overwrite, progress=progress)
        fake = [load_volume(p).array for p in sorted((out_dir / folder).glob("sample_*[0-9].nii.gz"))]
        metrics[folder] = timed(f"metrics {folder}", evaluate_sets, [v.array for v in real], fake, spacing=spacing)
        metrics[folder]["weights"] = str(weights)
        sampler, steps = pipeline.diffusion.resolve()
        metrics[folder]["sampler"] = {"name": sampler, "steps": steps}
    atomic_write_text(out_dir / "metrics.json", json.dumps({"metrics": metrics, "floor": floor, "timings_s": timings}, indent=2, default=_jsonable))
    index = write_index(out_dir, metrics, floor, timings, stage1_run, stage2_run, train_full)
    report = write_report(out_dir, out_dir / "report.html", real=list(val_paths), overwrite=True)
    print(f"[demo] wrote {index} (pictures and numbers, for terminals and git hosts)")
    print(f"[demo] done: open {report} in a browser (3D slice viewer, metrics, training curves)")
    return index


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_index(out_dir: Path, metrics: dict, floor: dict | None, timings: dict, stage1_run: Path, stage2_run: Path,
                train_full: bool) -> Path:
    source = "the model trained by this run (`--train-full`)" if train_full else f"the shipped `{SHIPPED_WEIGHTS.name}`"
    lines = [
        "# PRDiT demo on phantom chest CT",
        "",
        "Open [`report.html`](report.html) in a browser to scroll through the volumes in three planes.",
        "",
        "Procedural chest-CT phantoms (32^3, HU) -> stage 1 (local MLP denoiser, `PRDiT-T/6/0`) -> stage 2 (global "
        "residual DiT, `PRDiT-T/6/2`) -> samples in HU (NIfTI: open them in 3D Slicer) -> metrics.",
        "",
        "## Training data",
        "![a training phantom](data_phantom.png)",
        "",
        "## Training (this run)",
        f"Stage 1 run: `{stage1_run}`, stage 2 run: `{stage2_run}`.",
        "",
        "![stage 1 loss](stage1_loss.png)",
        "![stage 2 loss](stage2_loss.png)",
        "",
    ]
    if "samples" in metrics:
        lines += [f"## Samples from {source}", "![samples](samples/samples_grid.png)", ""]
    if "samples_demo_run" in metrics:
        lines += [
            "## Samples from the model trained in this demo",
            "A shorter run than the shipped model's recipe (fewer stage-2 steps; `--quick`: a few dozen): compare the metrics.",
            "![demo-run samples](samples_demo_run/samples_grid.png)",
            "",
        ]
    lines += ["## Metrics (samples vs. held-out phantoms)", *markdown_table(metrics, floor), ""]
    lines += [
        "## Timings (s)",
        *[f"- {name}: {seconds}" for name, seconds in timings.items()],
        "",
        "## Reproduce the shipped phantom model",
        "```",
        REPRODUCE,
        "```",
    ]
    path = out_dir / "index.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
