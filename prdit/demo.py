"""The end-to-end demo on the embedded phantom data: phantoms -> stage 1 -> stage 2 -> samples -> metrics -> index.md.

Everything lands in one folder (default ``results/demo``)::

    report.html           open it in a browser: 3D slice viewers (samples beside real), metrics, training curves
    index.md              pictures and numbers, open it in any Markdown viewer
    data_phantom.png      a training phantom (what the model should learn)
    stage1_loss.png       stage-1 (local denoiser) loss curve of the run just trained
    stage2_loss.png       stage-2 (global residual DiT) loss curve
    samples/              NIfTI in HU + JSON sidecars + PNGs from the shipped phantom model
    samples_demo_run/     the same from the model this demo just trained (a few CPU minutes; rougher)
    metrics.json          FID / MMD (random-init MedicalNet fallback) and weight-free metrics, both sample sets

Diffusion models need many optimisation steps, more than a slow CPU gets through in the demo's budget, so the
main samples come from ``prdit/assets/phantom-32.safetensors``, trained by this project's own code in the runs
of ``configs/phantom`` (``--train-full`` runs the first of them, ``local.yaml``); the demo's own, shorter training
runs both stages and its samples are shown beside them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from prdit.config import Config, load_config
from prdit.errors import PrditError
from prdit.evaluation.descriptions import markdown_table
from prdit.io import atomic_write_bytes, atomic_write_text, ensure_writable, load_volume
from prdit.report import write_report

CONFIG_DIR = Path(__file__).parent / "configs" / "phantom"
SHIPPED_WEIGHTS = Path(__file__).parent / "assets" / "phantom-32.safetensors"


@dataclass(frozen=True)
class DemoPlan:
    """How long each part runs, and what that takes on 2 idle CPU cores."""

    stage1_steps: int
    stage2_steps: int
    num_volumes: int
    num_demo_volumes: int
    phantoms: int
    promised_minutes: float  # the README's promise on 2 idle cores
    other_seconds: float  # phantoms, sampling and metrics on 2 idle cores (stage 2 at REFERENCE_STAGE2_RATE)


PLANS = {
    "default": DemoPlan(stage1_steps=2000, stage2_steps=1500, num_volumes=8, num_demo_volumes=4, phantoms=200,
                        promised_minutes=15, other_seconds=25),
    "quick": DemoPlan(stage1_steps=40, stage2_steps=30, num_volumes=2, num_demo_volumes=2, phantoms=24,
                      promised_minutes=3, other_seconds=5),
}
# Stage-2 steps/s on 2 idle cores; the parts other than training slow down with the machine as stage 2 does.
REFERENCE_STAGE2_RATE = 3.6
# Checkpoints, validation and previews during training, on top of the timed steps.
TRAINING_OVERHEAD = 1.05


def estimate_seconds(plan: DemoPlan, stage1_steps: int, stage2_steps: int, stage1_rate: float, stage2_rate: float) -> float:
    """The demo's run time from measured training steps/s."""
    training = stage1_steps / stage1_rate + stage2_steps / stage2_rate
    return TRAINING_OVERHEAD * training + plan.other_seconds * REFERENCE_STAGE2_RATE / stage2_rate


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(10, round(seconds / 10) * 10):.0f} s"
    return f"{round(seconds / 60):.0f} min"


def demo_configs(out_dir: Path, plan: DemoPlan | None, device: str, precision: str = "auto") -> tuple[Config, Config]:
    """The phantom configs, shortened by ``plan`` (None: the full recipe), writing runs under ``out_dir/runs``."""
    common = [f"output.results_dir={out_dir / 'runs'}", f"training.device={device}", f"training.precision={precision}"]
    if plan is not None and plan.phantoms != PLANS["default"].phantoms:
        common += [f"data.phantom.num={plan.phantoms}", f"data.root=data/phantom-32-n{plan.phantoms}"]
    stage1 = load_config(CONFIG_DIR / "local.yaml", common + ([f"training.total_steps={plan.stage1_steps}"] if plan else []))
    stage2 = load_config(CONFIG_DIR / "global.yaml", common + ([f"training.total_steps={plan.stage2_steps}"] if plan else []))
    return stage1, stage2


def time_training_steps(config: Config, seconds: float, device: str = "cpu", min_steps: int = 3, warmup: int = 2,
                        clock=time.perf_counter) -> float:
    """Training steps per second of ``config``'s model, timed for about ``seconds`` after ``warmup`` steps of the
    trainer's own step (:func:`prdit.train.trainer.train_step`: forward, backward, clipping, AdamW, EMA) on one
    random batch of its size: the calibration behind the demo's time estimate. A stage-2 model is timed with its
    local denoiser frozen, as in training. ``clock``: ``time.process_time`` times this process's CPU time (with one
    thread: robust to other processes' load)."""
    import itertools
    import tempfile
    from types import SimpleNamespace

    import torch

    from prdit.diffusion import create_diffusion
    from prdit.runtime import autocast_for
    from prdit.train.batches import StepBatchSampler, batch_layout
    from prdit.train.distributed import DistInfo
    from prdit.train.ema import create_ema
    from prdit.train.logger import RunLogger
    from prdit.train.trainer import LRPlan, Run, build_model, build_optimizer, train_step

    where, tcfg = torch.device(device), config.training
    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as scratch:
        torch.manual_seed(0)
        diffusion = create_diffusion(config.diffusion)
        model = build_model(config, diffusion.model_out_channels).to(where)
        if model.depth > 0:
            model.freeze_local_denoiser()
        micro, _ = batch_layout(tcfg.global_batch_size, 1, tcfg.micro_batch_size)
        size = config.data.image_size
        x0 = torch.rand(micro, config.model.in_channels, size, size, size, device=where) * 2 - 1
        run = Run(
            config, DistInfo(0, 1, 0, where), Path(scratch), diffusion, model, model, None, create_ema(model),
            build_optimizer(model, config, []), cast(Any, SimpleNamespace(condition=None)),  # unconditional: every batch is x0
            StepBatchSampler(tcfg.global_batch_size, 0, 1, micro, 0, tcfg.total_steps), itertools.repeat(x0),
            autocast_for(tcfg.precision, where), RunLogger(Path(scratch), False, False), x0, [],
            [p for p in model.parameters() if p.requires_grad], LRPlan(tcfg.total_steps),
        )

        def finished() -> float:
            if where.type == "cuda":
                torch.cuda.synchronize(where)
            return clock()

        began, step = 0.0, 0
        while step < warmup + min_steps or finished() - began < seconds:
            if step == warmup:
                began = finished()
            train_step(run, step)
            step += 1
    return (step - warmup) / (finished() - began)


def run_demo(
    out_dir: str | Path = "results/demo", quick: bool = False, train_full: bool = False, device: str = "auto",
    progress: bool = True, overwrite: bool = False, precision: str = "auto",
) -> Path:
    """Run the whole demo; returns the path of ``index.md``. ``precision`` (auto, bf16, fp32) is used for training
    and sampling alike (:func:`prdit.runtime.resolve_precision`)."""
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
    stage1_config, stage2_config = demo_configs(out_dir, None if train_full else plan, device, precision)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    steps = (stage1_config.training.total_steps, stage2_config.training.total_steps)
    print(f"[demo] plan ({'quick' if quick else 'train-full' if train_full else 'default'}): "
          f"{stage1_config.data.phantom.num} phantoms of {stage1_config.data.image_size}^3 -> stage 1 "
          f"({stage1_config.model.name}) {steps[0]} steps -> stage 2 ({stage2_config.model.name}) {steps[1]} steps -> "
          f"{'' if train_full else f'{plan.num_volumes} volumes from the shipped model and '}{plan.num_demo_volumes if not train_full else plan.num_volumes} "
          f"from this run -> metrics -> {out_dir}", flush=True)
    estimate = timed_estimate(plan, steps, stage1_config, stage2_config, device)

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
        pipeline = load_pipeline(weights, device=None if device == "auto" else device, precision=precision)
        timed(f"sampling {folder}", sample_to_folder, pipeline, out_dir / folder, count,
                      batch_size=count, overwrite=overwrite, progress=progress)
        fake = [load_volume(p).array for p in sorted((out_dir / folder).glob("sample_*[0-9].nii.gz"))]
        metrics[folder] = timed(f"metrics {folder}", evaluate_sets, [v.array for v in real], fake, spacing=spacing)
        metrics[folder]["weights"] = str(weights)
        sampler, sampler_steps = pipeline.diffusion.resolve()
        metrics[folder]["sampler"] = {"name": sampler, "steps": sampler_steps}
    atomic_write_text(out_dir / "metrics.json", json.dumps({"metrics": metrics, "floor": floor, "timings_s": timings}, indent=2, default=_jsonable))
    index = write_index(out_dir, metrics, floor, timings, stage1_run, stage2_run, train_full)
    report = write_report(out_dir, out_dir / "report.html", real=list(val_paths), overwrite=True)
    print(f"[demo] wrote {index} (pictures and numbers, for terminals and git hosts)")
    total = time.perf_counter() - started
    print(f"[demo] done in {format_duration(total)} (estimated {format_duration(estimate)}): open {report} in a browser "
          "(3D slice viewer, metrics, training curves)")
    return index


def timed_estimate(plan: DemoPlan, steps: tuple[int, int], stage1_config: Config, stage2_config: Config, device: str) -> float:
    """Time a few training steps of each stage, print the estimate of the whole run and return it in seconds."""
    import torch

    from prdit.runtime import resolve_device

    device = str(resolve_device(device))
    print("[demo] timing a few training steps of each stage to estimate the run time ...", flush=True)
    rates = [time_training_steps(config, seconds=1.5, device=device) for config in (stage1_config, stage2_config)]
    estimate = estimate_seconds(plan, *steps, *rates)
    promise = f"{plan.promised_minutes:g} min"
    print(f"[demo] estimate: about {format_duration(estimate)} on this machine (stage 1 {rates[0]:.1f} steps/s, stage 2 "
          f"{rates[1]:.1f} steps/s with {torch.get_num_threads()} torch thread(s); 2 idle cores: at most {promise})", flush=True)
    if estimate > 60 * plan.promised_minutes and plan is PLANS["default"]:
        quick = PLANS["quick"]
        quick_estimate = estimate_seconds(quick, quick.stage1_steps, quick.stage2_steps, *rates)
        print(f"[demo] this machine is busier or slower than 2 idle cores; `prdit demo --quick` would take about "
              f"{format_duration(quick_estimate)}", flush=True)
    return estimate


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
        "## How the shipped phantom model was made",
        f"`{SHIPPED_WEIGHTS.name}` was trained by this project's own code in several runs: `configs/phantom/local.yaml` "
        "(the recipe `prdit demo --train-full` runs), then the continuations in `configs/phantom/`. The page docs/shipped-model.md "
        "(\"How the shipped weights were made\") lists the commands; the seeds are in the configs.",
    ]
    path = out_dir / "index.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
