"""One prepared GPU check (issue 29): correctness, speed and memory at 128^3 and 256^3, and a short quality run.

Five steps, most valuable first, each in its own process under its own time limit:

1. ``tests``: the suite's CUDA-marked tests (``pytest -m cuda tests/test_cuda.py``);
2. ``reference``: training step time and peak memory, prdit (bf16, without and with activation checkpointing)
   against the official layer order (``benchmarks/bench_reference.py``, as released: fp32, bf16 attention) and,
   when ``--official-src`` / ``OFFICIAL_SRC`` names a checkout of the paper's code, that code itself;
3. ``large``: PRDiT-B/12/4 and -XL/12/4 at 256^3: step time and peak memory without and with checkpointing;
4. ``sampling``: seconds per volume with the default sampler and the paper's 1000-step sampler (estimated from a
   timed run of its first network calls), MFU;
5. ``phantom``: a phantom training at 64^3 (stage 1, then stage 2, about 100 s each) and the HU W1 distance and
   tissue fractions of its samples against held-out phantoms.

Every step rewrites ``<out>/<step>.json`` after each measurement, so a step cut off by its limit keeps what it
measured; ``summary.json`` and ``summary.md`` (the table) come last. ``--dry-run`` runs the same code on the CPU
at tiny sizes in about a minute, so that GPU minutes are not spent on a typo.

    benchmarks/gpu_check.sh            # on the GPU machine: at most 9 minutes
    benchmarks/gpu_check.sh --dry-run  # here, on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import common
from prdit.runtime import autocast_for

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("tests", "reference", "large", "sampling", "phantom")
TITLES = {
    "tests": "CUDA-marked tests",
    "reference": "training step: prdit vs the official code",
    "large": "training step at 256^3, without and with activation checkpointing",
    "sampling": "sampling seconds per volume and MFU",
    "phantom": "phantom training (stage 1 then stage 2) and its samples vs held-out phantoms",
}


@dataclass(frozen=True)
class Plan:
    """Sizes and time limits of one check: the GPU's (``GPU``) or the CPU dry run's (``DRY``)."""

    device: str
    precision: str
    limits: dict  # step -> seconds
    stride: int | None  # None: the model names' standard 8
    reference_cases: tuple[str, ...]
    reference_size: int
    batches: tuple[int, ...]
    repeats: int
    large_cases: tuple[str, ...]
    large_size: int
    large_repeats: int
    sampling_case: str
    sampling_sizes: tuple[int, ...]
    default_sampler_steps: int | None  # None: the default sampler's own number of steps
    paper_sampler: str
    paper_steps: int
    paper_timed_calls: int
    phantom_size: int
    phantom_train: int
    phantom_held_out: int
    phantom_samples: int
    phantom_batch: int | None  # None: the phantom recipe's batch
    phantom_sample_steps: int | None  # None: the default sampler's own number of steps
    stage_seconds: float
    calibration_steps: int
    min_extra_steps: int  # steps after the calibration at least (the dry run: 1, so that it resumes too)
    matmul_size: int
    warmup: int  # steps before the memory peak is read and the timing starts


GPU = Plan(
    device="cuda", precision="bf16",
    limits={"tests": 60, "reference": 90, "large": 75, "sampling": 60, "phantom": 255}, stride=None,
    reference_cases=("B/12/0", "B/12/4-frozen"), reference_size=128, batches=(1, 2), repeats=5,
    large_cases=("B/12/4", "XL/12/4"), large_size=256, large_repeats=3,
    sampling_case="B/12/4", sampling_sizes=(128, 256), default_sampler_steps=None, paper_sampler="ian-pc", paper_steps=1000, paper_timed_calls=20,
    phantom_size=64, phantom_train=64, phantom_held_out=32, phantom_samples=32, phantom_batch=None,
    phantom_sample_steps=None,
    stage_seconds=100, calibration_steps=100, min_extra_steps=0, matmul_size=8192, warmup=2,
)
DRY = Plan(
    device="cpu", precision="bf16",
    limits={"tests": 120, "reference": 120, "large": 120, "sampling": 120, "phantom": 180},  # guards on a loaded CPU
    stride=4, reference_cases=("T/6/0", "T/6/2-frozen"), reference_size=16, batches=(1,), repeats=1,
    large_cases=("T/6/2",), large_size=16, large_repeats=1,
    sampling_case="T/6/2", sampling_sizes=(16,), default_sampler_steps=2, paper_sampler="ian-pc", paper_steps=1000,
    paper_timed_calls=1,
    phantom_size=32, phantom_train=4, phantom_held_out=4, phantom_samples=2, phantom_batch=2,
    phantom_sample_steps=2,
    stage_seconds=1, calibration_steps=2, min_extra_steps=1, matmul_size=256, warmup=1,
)


# ----------------------------------------------------------------------------------------------------------
# Recording
# ----------------------------------------------------------------------------------------------------------


def machine_info() -> dict:
    """GPU name, torch / CUDA / cuDNN versions and the host, for every result file."""
    from prdit import __version__

    info = common.machine(with_monai=False)
    info.update(prdit=__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_bytes=props.total_memory, gpu_multiprocessors=props.multi_processor_count,
                    gpu_capability=f"{props.major}.{props.minor}")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10, check=False)
            info["driver"] = smi.stdout.strip() or None
    return info


class Recorder:
    """``<out>/<step>.json``, rewritten atomically after every row so that a step cut off keeps its rows."""

    def __init__(self, out: Path, step: str, plan: Plan, dry_run: bool) -> None:
        self.path = out / f"{step}.json"
        self.payload: dict = {"step": step, "title": TITLES[step], "dry_run": dry_run, "status": "running",
                              "machine": machine_info(), "plan": asdict(plan), "rows": []}
        self.write()

    def add(self, row: dict) -> None:
        self.payload["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "metrics"}, default=str), flush=True)
        self.write()

    def set(self, **values) -> None:
        self.payload.update(values)
        self.write()

    def write(self) -> None:
        from prdit.io import atomic_write_text

        atomic_write_text(self.path, json.dumps(self.payload, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------------------------------------
# Measuring one model
# ----------------------------------------------------------------------------------------------------------


def free_memory(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def counted_flops(run: Callable[[], object]) -> int:
    """FLOPs of one call of ``run`` (matmuls, convolutions, attention) by torch's counter."""
    with FlopCounterMode(display=False, custom_mapping=common.CPU_ATTENTION_FLOPS) as counter:
        run()
    return int(counter.get_total_flops())


def build_measured(build: Callable[[], tuple], device: str, warmup: int) -> tuple[dict, Callable[[], None] | None]:
    """Build a model with ``build() -> (model, step)``, run ``warmup`` steps, and return (row, step).

    The row has the parameter counts, the counted FLOPs of a step and, on CUDA, the allocator's peak over the
    warm-up steps from before the build (``peak_bytes``: weights, gradients, AdamW state, activations) and from
    the built model (``step_bytes``: what training adds). Out of memory is a row with an error and no step.
    """
    cuda = torch.device(device).type == "cuda"
    row: dict = {}
    try:
        free_memory(device)
        if cuda:
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
        model, step = build()
        row["params"] = common.count_parameters(model)
        row["trained_params"] = common.count_parameters(model, trainable_only=True)
        if cuda:
            built = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            step()
        common.synchronize(device)
        if cuda:
            peak = torch.cuda.max_memory_allocated()
            row.update(peak_bytes=peak - before, step_bytes=peak - built)
        row["flops"] = counted_flops(step)
        return row, step
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
        free_memory(device)
        return row, None


def add_times(row: dict, seconds: list[float], peak: float) -> None:
    row["seconds"] = seconds
    row["seconds_median"] = common.median(seconds)
    if "flops" in row:
        row["mfu"] = row["flops"] / row["seconds_median"] / peak


def official_builder(src: Path, case: str, size: int, batch: int, device: str, seed: int = 0) -> Callable[[], tuple]:
    """A builder of the paper's own network from a checkout at ``src`` (its ``models`` package), trained as its
    train.py does: fp32 with its SDPA attention under bf16 autocast (``flash_attn``), torch's default AdamW.

    Its ``util`` module (imported by ``models.models`` for one helper) also imports wandb and the training data
    code, which a GPU machine may lack: a stand-in module with that helper is used when it does not import.
    """
    import importlib
    import types

    def requires_grad(model: torch.nn.Module, flag: bool = True) -> None:
        for p in model.parameters():
            p.requires_grad = flag

    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    try:
        usable = hasattr(importlib.import_module("util"), "requires_grad")
    except ImportError:
        usable = False
    if not usable:
        stand_in = types.ModuleType("util", "stand-in for the official util.py: the one helper its models import")
        stand_in.requires_grad = requires_grad  # type: ignore[attr-defined]
        sys.modules["util"] = stand_in
    from models import PRDiT_models  # the official registry

    def build() -> tuple:
        torch.manual_seed(seed)
        model = PRDiT_models[f"PRDiT-{case.split('-')[0]}"](input_size=size, in_channels=1, learn_sigma=True, flash_attn=True)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
        model = model.to(device)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        x, t, target = step_inputs(batch, size, device, seed)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.mse_loss(model(x, t).float(), target).backward()
            optimizer.step()

        return model, step

    return build


def step_inputs(batch: int, size: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch every side trains on (the same draws as ``bench_reference.build``)."""
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((batch, 1, size, size, size), generator=generator).mul(2).sub(1).to(device)
    t = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    target = torch.randn((batch, 2, size, size, size), generator=generator).to(device)
    return x, t, target


def prdit_builder(side: str, case: str, size: int, batch: int, plan: Plan) -> Callable[[], tuple]:
    """prdit (``prdit``, ``prdit-ckpt``) or the reference network in the official layer order (``reference``)."""
    from benchmarks import bench_reference

    def build() -> tuple:
        model, step, _ = bench_reference.build(side.split("-")[0], case, size, batch, plan.device, plan.precision, "own",
                                               grad_checkpoint=side == "prdit-ckpt", stride=plan.stride)
        return model, step

    return build


# ----------------------------------------------------------------------------------------------------------
# The steps
# ----------------------------------------------------------------------------------------------------------


def run_tests(plan: Plan, rec: Recorder, args: argparse.Namespace) -> None:
    """The CUDA-marked tests; one row per test with its outcome (skipped everywhere without CUDA).

    pytest gets the step's time less 10 s: past that it is ended, and the outcomes it had printed are kept.
    """
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-v", "-m", "cuda", "-p", "no:cacheprovider", f"--junitxml={report}",
                   str(ROOT / "tests" / "test_cuda.py")]
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                                  timeout=max(5.0, plan.limits["tests"] * args.time_scale - 10))
            output, returncode = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as stopped:
            output, returncode = _text(stopped.stdout) + _text(stopped.stderr), None
        rec.set(pytest_returncode=returncode, pytest_tail=output[-5000:])
        if report.exists():
            for case in ElementTree.parse(report).getroot().iter("testcase"):
                outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
                detail = next((child.get("message", "") for child in case if child.tag in ("failure", "error", "skipped")), "")
                rec.add({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)), "detail": detail[:500]})
        else:  # cut off: what its verbose lines say
            for row in verbose_outcomes(output):
                rec.add(row)
    counts = {k: sum(r["outcome"] == k for r in rec.payload["rows"]) for k in ("passed", "failure", "error", "skipped")}
    rec.set(counts=counts)
    if returncode is None:
        raise TimeoutError(f"the CUDA tests did not finish in {plan.limits['tests'] * args.time_scale - 10:.0f} s")


def verbose_outcomes(output: str) -> list[dict]:
    """The test rows of ``pytest -v`` output (``path::name OUTCOME [ n%]`` lines), in the junit report's terms."""
    outcomes = {"PASSED": "passed", "FAILED": "failure", "ERROR": "error", "SKIPPED": "skipped"}
    rows = []
    for line in output.splitlines():
        name, _, rest = line.partition(" ")
        if "::" in name and rest.split(" ")[0] in outcomes:
            rows.append({"test": name.split("::", 1)[1], "outcome": outcomes[rest.split(" ")[0]], "seconds": None, "detail": ""})
    return rows


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def run_reference(plan: Plan, rec: Recorder, args: argparse.Namespace) -> None:
    """prdit (bf16; without and with checkpointing) against the official layer order (and the official code)."""
    from benchmarks import bench_reference

    peak = common.matmul_peak_flops(plan.device, torch.bfloat16, n=plan.matmul_size)
    rec.set(matmul_peak_flops_bf16=peak)
    official = Path(args.official_src) if args.official_src else None
    for case in plan.reference_cases:
        for batch in plan.batches:
            row: dict = {"case": case, "size": plan.reference_size, "batch": batch, "precision": plan.precision, "sides": {}}
            builders = {side: prdit_builder(side, case, plan.reference_size, batch, plan) for side in ("prdit", "prdit-ckpt", "reference")}
            steps = {}
            for side, build in builders.items():
                row["sides"][side], step = build_measured(build, plan.device, plan.warmup)
                if step is not None:
                    steps[side] = step
            if official is not None:
                try:
                    build = official_builder(official, case, plan.reference_size, batch, plan.device)
                    row["sides"]["official"], step = build_measured(build, plan.device, plan.warmup)
                except Exception as error:  # the official code is not ours: record why it did not run, go on
                    row["sides"]["official"], step = {"error": f"{type(error).__name__}: {error}"[:500]}, None
                if step is not None:
                    steps["official"] = step
            times = bench_reference.interleaved(steps, plan.repeats, plan.device, warmup=False)
            for side, seconds in times.items():
                add_times(row["sides"][side], seconds, peak)
            row["ratios"] = reference_ratios(row["sides"])
            rec.add(row)
            del steps, builders
            free_memory(plan.device)


def reference_ratios(sides: dict) -> dict:
    """Speed (their time / prdit's) and memory (prdit's peak / theirs) against each baseline that ran."""
    out = {}
    for base in ("reference", "official"):
        theirs = sides.get(base, {})
        for ours in ("prdit", "prdit-ckpt"):
            mine = sides.get(ours, {})
            entry = {}
            if "seconds_median" in theirs and "seconds_median" in mine:
                entry["speed"] = theirs["seconds_median"] / mine["seconds_median"]
            if "peak_bytes" in theirs and "peak_bytes" in mine:
                entry["peak_memory"] = mine["peak_bytes"] / theirs["peak_bytes"]
            if entry:
                out[f"{ours} vs {base}"] = entry
    return out


def run_large(plan: Plan, rec: Recorder, args: argparse.Namespace) -> None:
    """B/12/4 and XL/12/4 at 256^3, batch 1: each without and with activation checkpointing (the uncheckpointed
    XL last: the likeliest to run out of memory)."""
    from benchmarks import bench_reference

    peak = common.matmul_peak_flops(plan.device, torch.bfloat16, n=plan.matmul_size)
    rec.set(matmul_peak_flops_bf16=peak)
    order = [(case, ckpt) for case in plan.large_cases for ckpt in (False, True)]
    order.sort(key=lambda item: (item[0] == plan.large_cases[-1] and not item[1]))
    for case, ckpt in order:
        row: dict = {"case": case, "size": plan.large_size, "batch": 1, "precision": plan.precision, "checkpointing": ckpt}
        measured, step = build_measured(prdit_builder("prdit-ckpt" if ckpt else "prdit", case, plan.large_size, 1, plan),
                                        plan.device, plan.warmup)
        row.update(measured)
        if step is not None:
            add_times(row, bench_reference.interleaved({"step": step}, plan.large_repeats, plan.device, warmup=False)["step"], peak)
        rec.add(row)
        del step
        free_memory(plan.device)


class StopSampling(Exception):
    """Raised from a sampler's callback once the timed network calls are done."""


def time_sampler(diffusion, model, size: int, sampler: str, steps: int, plan: Plan, max_calls: int | None = None) -> dict:
    """Seconds of a whole sampling run of one volume, or, with ``max_calls``, of its first calls after one
    warm-up call, scaled to the whole run (labelled ``estimated``)."""
    total = diffusion.network_calls(sampler, steps)
    timed = min(total - 1, max_calls) if max_calls else None
    marks: list[float] = []

    def callback(i: int, *_) -> None:
        common.synchronize(plan.device)
        marks.append(time.perf_counter())
        if timed is not None and i == timed:
            raise StopSampling

    generator = torch.Generator(plan.device).manual_seed(0)
    common.synchronize(plan.device)
    began = time.perf_counter()
    with torch.inference_mode(), autocast_for(plan.precision, torch.device(plan.device)):
        with contextlib.suppress(StopSampling):
            diffusion.sample(model, (1, 1, size, size, size), sampler=sampler, steps=steps, generator=generator,
                             progress=False, callback=callback)
    common.synchronize(plan.device)
    ended = time.perf_counter()
    if timed is None:
        return {"sampler": sampler, "steps": steps, "network_calls": total, "seconds": ended - began, "estimated": False}
    per_call = (marks[timed] - marks[0]) / timed
    return {"sampler": sampler, "steps": steps, "network_calls": total, "timed_calls": timed, "seconds_per_call": per_call,
            "seconds": per_call * total, "estimated": True}


def run_sampling(plan: Plan, rec: Recorder, args: argparse.Namespace) -> None:
    """Seconds per volume (batch 1) with the default sampler and the paper's 1000-step sampler, and the MFU of
    the network calls (counted FLOPs of one call x calls / seconds / measured bf16 matmul peak)."""
    from prdit.diffusion import create_diffusion
    from prdit.models import create_model

    peak = common.matmul_peak_flops(plan.device, torch.bfloat16, n=plan.matmul_size)
    rec.set(matmul_peak_flops_bf16=peak)
    diffusion = create_diffusion(None)
    default, default_steps = diffusion.resolve(None, plan.default_sampler_steps)
    for size in plan.sampling_sizes:
        torch.manual_seed(0)
        model = create_model(f"PRDiT-{plan.sampling_case}", size, stride=plan.stride).to(plan.device).eval().requires_grad_(False)
        x = torch.randn(1, 1, size, size, size, device=plan.device)
        t = torch.full((1,), 500.0, device=plan.device)

        def call(model=model) -> None:
            with torch.inference_mode(), autocast_for(plan.precision, torch.device(plan.device)):
                model(x, t)

        call()  # warm-up: kernels chosen, memory pools grown
        flops = counted_flops(call)
        for sampler, steps, limit in ((default, default_steps, None), (plan.paper_sampler, plan.paper_steps, plan.paper_timed_calls)):
            row = {"model": f"PRDiT-{plan.sampling_case}", "size": size, "precision": plan.precision, "flops_per_call": flops,
                   **time_sampler(diffusion, model, size, sampler, steps, plan, limit)}
            row["mfu"] = flops * row["network_calls"] / row["seconds"] / peak
            rec.add(row)
        del model
        free_memory(plan.device)


def phantom_overrides(plan: Plan, work: Path) -> list[str]:
    """Overrides of configs/phantom/{local,global}.yaml for a run at ``plan.phantom_size`` under ``work``."""
    return [f"data.root={work / 'data'}", f"data.image_size={plan.phantom_size}", f"data.phantom.num={plan.phantom_train}",
              f"data.phantom.workers={min(8, os.cpu_count() or 1)}", f"training.device={plan.device}",
              f"training.precision={plan.precision}", f"output.results_dir={work / 'runs'}", "logging.tensorboard=false",
              "logging.num_preview_samples=0", "logging.log_every=10"] + \
        ([f"training.global_batch_size={plan.phantom_batch}"] if plan.phantom_batch else [])


def run_phantom(plan: Plan, rec: Recorder, args: argparse.Namespace) -> None:
    """Stage 1 then stage 2 of the phantom recipe at ``phantom_size``^3, each for about ``stage_seconds``, then
    samples against held-out phantoms: HU W1 and tissue fractions.

    Each stage first trains ``calibration_steps``; the rate the trainer logged over them (data loading and all)
    sets how many more steps fit in the stage's time, and the run resumes to that total (an exact continuation).
    """
    import numpy as np

    from prdit.config import load_config
    from prdit.data.phantom import generate_phantom
    from prdit.demo import CONFIG_DIR
    from prdit.evaluation.offline import compare_statistics, real_floor, volume_statistics
    from prdit.sample import load_pipeline
    from prdit.train.trainer import TrainOptions, train

    work = Path(args.out) / "phantom_work"
    shared = phantom_overrides(plan, work)
    previous = None
    for stage, name in ((1, "local.yaml"), (2, "global.yaml")):
        overrides = shared + ([f"model.pretrained_path={previous}"] if previous else [])

        def until(steps: int) -> list[str]:
            return overrides + [f"training.total_steps={steps}", f"logging.ckpt_every={steps}", f"logging.eval_every={steps}"]

        began = time.perf_counter()
        config = load_config(CONFIG_DIR / name, until(plan.calibration_steps))
        run_dir = train(config, TrainOptions(progress=False))
        log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
        rate = [entry["steps_per_s"] for entry in log if "steps_per_s" in entry][-1]
        left = plan.stage_seconds - (time.perf_counter() - began)
        steps = plan.calibration_steps + max(plan.min_extra_steps, int(rate * left))
        if steps > plan.calibration_steps:
            config = load_config(CONFIG_DIR / name, until(steps))
            train(config, TrainOptions(progress=False, resume=True, run_dir=str(run_dir)))
        log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
        losses = [entry["loss"] for entry in log if "loss" in entry and not entry.get("skipped_step")]
        rec.add({"stage": stage, "model": config.model.name, "stride": config.model.stride, "size": plan.phantom_size,
                 "batch": config.training.global_batch_size, "steps": steps, "calibrated_steps_per_second": rate,
                 "training_seconds": time.perf_counter() - began, "first_loss": losses[0] if losses else None,
                 "last_loss": losses[-1] if losses else None, "run_dir": str(run_dir)})
        previous = run_dir
    began = time.perf_counter()
    pipeline = load_pipeline(previous, device=plan.device)
    fake = pipeline.sample(plan.phantom_samples, steps=plan.phantom_sample_steps, seed=0, progress=False)[:, 0].numpy()
    sampled = time.perf_counter() - began
    held_out = range(100_000, 100_000 + plan.phantom_held_out)  # training phantoms are seeds 0 .. phantom_train - 1
    real = np.stack([generate_phantom(plan.phantom_size, seed)[0] for seed in held_out]).astype(np.float32)
    low, high = pipeline.mapping.window
    real = np.clip(real, low, high)  # what the model can represent (its HU window)
    real_statistics = volume_statistics(real)
    metrics = compare_statistics(real_statistics, volume_statistics(fake))
    floor = real_floor(real_statistics) if len(real) >= 4 else None
    fractions = metrics["tissue_fractions"]
    rec.add({"stage": "evaluation", "samples": plan.phantom_samples, "held_out": plan.phantom_held_out,
             "sampler": pipeline.diffusion.resolve(None, plan.phantom_sample_steps), "sampling_seconds": sampled,
             "w1_hu": metrics["hu_histogram"]["wasserstein_hu"],
             "floor_w1_hu": floor["hu_histogram"]["wasserstein_hu"] if floor else None,
             "tissue_fractions": {k: {"fake": v["fake_mean"], "real": v["real_mean"]} for k, v in fractions.items()},
             "metrics": metrics})


STEP_FUNCTIONS = {"tests": run_tests, "reference": run_reference, "large": run_large, "sampling": run_sampling,
                  "phantom": run_phantom}


# ----------------------------------------------------------------------------------------------------------
# Driver and summary
# ----------------------------------------------------------------------------------------------------------


def run_step_here(step: str, plan: Plan, args: argparse.Namespace) -> None:
    """One step in this process (the driver starts one process per step)."""
    common.setup_device(plan.device, tf32=True)
    rec = Recorder(Path(args.out), step, plan, args.dry_run)
    try:
        STEP_FUNCTIONS[step](plan, rec, args)
    except BaseException as error:
        rec.set(status="failed", error=f"{type(error).__name__}: {error}"[:2000])
        raise
    rec.set(status="done")


def run_steps(steps: list[str], plan: Plan, args: argparse.Namespace) -> list[dict]:
    """Each step in a fresh process under its time limit; a step past its limit is ended (its JSON keeps the rows
    written so far). Returns one status record per step."""
    out = Path(args.out)
    records = []
    for step in steps:
        command = [sys.executable, "-m", "benchmarks.gpu_check", "--run-step", step, "--out", str(out)]
        command += ["--dry-run"] if args.dry_run else []
        command += ["--official-src", args.official_src] if args.official_src else []
        command += ["--time-scale", str(args.time_scale)]
        limit = plan.limits[step] * args.time_scale
        print(f"== {step}: {TITLES[step]} (limit {limit:.0f} s)", flush=True)
        began = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
        try:
            status = "done" if process.wait(timeout=limit) == 0 else f"failed (exit {process.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            status = "timed out"
        records.append({"step": step, "status": status, "seconds": time.perf_counter() - began, "limit_seconds": limit})
        print(f"== {step}: {status} after {records[-1]['seconds']:.0f} s", flush=True)
    return records


def load_step(out: Path, step: str) -> dict:
    path = out / f"{step}.json"
    return json.loads(path.read_text()) if path.exists() else {"rows": []}


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.0f}"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def goal_lines(results: dict) -> list[str]:
    """The issue's goals, each met / not met / not measured: prdit >= 1.5x the official step speed at 128^3 in bf16
    and <= 0.7x its peak memory with checkpointing (against the official code when it ran, else the reference
    layer order), and a 256^3 XL step in 80 GB (80e9 bytes) with checkpointing."""

    def verdict(values: list[float], ok: Callable[[float], bool], shown: str) -> str:
        if not values:
            return "not measured"
        return f"{'met' if all(ok(v) for v in values) else 'not met'} ({', '.join(shown.format(v) for v in values)})"

    rows = results["reference"]["rows"]
    base = "official" if any("seconds_median" in r["sides"].get("official", {}) for r in rows) else "reference"
    speed = [r["ratios"][f"prdit vs {base}"]["speed"] for r in rows if "speed" in r["ratios"].get(f"prdit vs {base}", {})]
    memory = [r["ratios"][f"prdit-ckpt vs {base}"]["peak_memory"] for r in rows
              if "peak_memory" in r["ratios"].get(f"prdit-ckpt vs {base}", {})]
    xl = [r["peak_bytes"] / 1e9 for r in results["large"]["rows"] if r["case"].startswith("XL") and r["checkpointing"] and "peak_bytes" in r]
    return ["", "## Goals", "",
            f"- prdit >= 1.5x the {base} step speed (bf16): {verdict(speed, lambda v: v >= 1.5, 'x{:.2f}')}",
            f"- prdit with checkpointing <= 0.7x the {base} peak memory: {verdict(memory, lambda v: v <= 0.7, 'x{:.2f}')}",
            f"- 256^3 XL/12/4 step with checkpointing in 80 GB: {verdict(xl, lambda v: v <= 80, '{:.1f} GB')}"]


def summary_markdown(records: list[dict], out: Path) -> str:
    """The summary table: one section per step, in the issue's order."""
    results = {step: load_step(out, step) for step in STEPS}
    machine = next((r["machine"] for r in results.values() if "machine" in r), {})
    dry = any(r.get("dry_run") for r in results.values())
    lines = [f"# GPU check{' (dry run on the CPU: tiny sizes, the numbers mean nothing)' if dry else ''}", "",
             f"GPU: {machine.get('gpu') or 'none'}; driver {machine.get('driver') or '-'}; torch {machine.get('torch')}, "
             f"CUDA {machine.get('cuda')}, cuDNN {machine.get('cudnn')}; Python {machine.get('python')}; CPU {machine.get('cpu')}",
             "", "| step | status | seconds (limit) |", "|---|---|---|"]
    lines += [f"| {r['step']}: {TITLES[r['step']]} | {r['status']} | {r['seconds']:.0f} ({r['limit_seconds']:.0f}) |" for r in records]

    tests = results["tests"]
    if tests["rows"]:
        counts = tests.get("counts") or {}
        lines += ["", "## 1. CUDA-marked tests", "", ", ".join(f"{k} {v}" for k, v in counts.items()), "",
                  "| test | outcome | s |", "|---|---|---|"]
        for r in tests["rows"]:
            seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
            lines.append(f"| {r['test']} | {r['outcome']} | {seconds} |")

    reference = results["reference"]
    if reference["rows"]:
        lines += ["", "## 2. Training step: prdit vs the official code",
                  "", "prdit in bf16 autocast; reference = the official layer order as released (fp32 with TF32, bf16 attention); "
                  "official = the paper's code itself (when carried). Memory: allocator peak from before the build "
                  "(weights, gradients, AdamW state, activations). Speed = their time / prdit's; memory = prdit's peak / theirs.",
                  "", "| case | size | batch | side | ms / step | peak GiB | MFU |", "|---|---|---|---|---|---|---|"]
        for row in reference["rows"]:
            for side, m in row["sides"].items():
                lines.append(f"| {row['case']} | {row['size']}^3 | {row['batch']} | {side} | "
                             f"{m.get('error') or ms(m.get('seconds_median'))} | {gib(m.get('peak_bytes'))} | {pct(m.get('mfu'))} |")
        lines += ["", "| case | batch | comparison | speed | peak memory |", "|---|---|---|---|---|"]
        for row in reference["rows"]:
            for key, r in row["ratios"].items():
                speed, memory = r.get("speed"), r.get("peak_memory")
                lines.append(f"| {row['case']} | {row['batch']} | {key} | {'-' if speed is None else f'x{speed:.2f}'} | "
                             f"{'-' if memory is None else f'x{memory:.2f}'} |")

    large = results["large"]
    if large["rows"]:
        lines += ["", "## 3. 256^3 training step, batch 1", "", "| case | size | checkpointing | ms / step | peak GiB | MFU |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['size']}^3 | {'on' if r['checkpointing'] else 'off'} | {r.get('error') or ms(r.get('seconds_median'))} | "
                  f"{gib(r.get('peak_bytes'))} | {pct(r.get('mfu'))} |" for r in large["rows"]]

    sampling = results["sampling"]
    if sampling["rows"]:
        lines += ["", "## 4. Sampling one volume", "", "| model | size | sampler | steps | network calls | s / volume | MFU |",
                  "|---|---|---|---|---|---|---|"]
        for r in sampling["rows"]:
            estimated = f" (estimated from {r['timed_calls']} timed calls)" if r["estimated"] else ""
            lines.append(f"| {r['model']} | {r['size']}^3 | {r['sampler']} | {r['steps']} | {r['network_calls']} | "
                         f"{r['seconds']:.2f}{estimated} | {pct(r['mfu'])} |")

    phantom = results["phantom"]
    if phantom["rows"]:
        lines += ["", "## 5. Phantom training", "", "| stage | model | size | steps | s training | loss first -> last |",
                  "|---|---|---|---|---|---|"]
        for r in phantom["rows"]:
            if r["stage"] == "evaluation":
                continue
            first, last = r["first_loss"], r["last_loss"]
            loss = "-" if first is None else f"{first:.4f} -> {last:.4f}"
            lines.append(f"| {r['stage']} | {r['model']} (stride {r['stride']}) | {r['size']}^3 | {r['steps']} | "
                         f"{r['training_seconds']:.0f} | {loss} |")
        for r in phantom["rows"]:
            if r["stage"] != "evaluation":
                continue
            floor = "" if r["floor_w1_hu"] is None else f" (real-vs-real floor {r['floor_w1_hu']:.1f})"
            lines += ["", f"{r['samples']} samples ({r['sampler'][0]}, {r['sampler'][1]} steps) vs {r['held_out']} held-out phantoms: "
                      f"HU W1 {r['w1_hu']:.1f} HU{floor}", "", "| tissue | fake fraction | real fraction |", "|---|---|---|"]
            lines += [f"| {k} | {v['fake']:.3f} | {v['real']:.3f} |" for k, v in r["tissue_fractions"].items()]
    lines += goal_lines(results)
    failed = [(step, r.get("error")) for step, r in results.items() if r.get("status") == "failed"]
    if failed:
        lines += ["", "## Errors", ""] + [f"- {step}: {error}" for step, error in failed]
    return "\n".join(lines) + "\n"


def write_summary(records: list[dict], out: Path) -> Path:
    from prdit.io import atomic_write_text

    atomic_write_text(out / "summary.json", json.dumps({"steps": records}, indent=2) + "\n")
    path = out / "summary.md"
    atomic_write_text(path, summary_markdown(records, out))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes (about a minute)")
    parser.add_argument("--out", default=str(ROOT / "results" / "gpu"), help="results folder (default results/gpu)")
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS, help="which steps (default: all, in order)")
    parser.add_argument("--official-src", default=os.environ.get("OFFICIAL_SRC") or None,
                        help="checkout of the paper's code (github Fredy-Zhang/PRDiT) to time beside prdit (default $OFFICIAL_SRC)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every step's time limit (a loaded machine)")
    parser.add_argument("--run-step", choices=STEPS, help=argparse.SUPPRESS)  # the driver's child process
    args = parser.parse_args(argv)
    plan = DRY if args.dry_run else GPU
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU here: run it on the GPU machine, or check the script here with --dry-run", file=sys.stderr)
        return 2
    if args.run_step:
        run_step_here(args.run_step, plan, args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    records = run_steps(args.steps, plan, args)
    path = write_summary(records, out)
    print(path.read_text())
    print(f"gpu check: {time.perf_counter() - began:.0f} s; results in {out}")
    return 0 if all(r["status"] == "done" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
