"""Shared pieces of the benchmarks: the compared models, one training step of each, timing, memory, FLOPs, MFU.

Compared models (``MODEL_KINDS``), all trained on the same [B, 1, D, H, W] volumes in [-1, 1]:

- ``prdit-s1``: PRDiT stage 1, the local denoiser alone (depth 0), IaN loss;
- ``prdit-s2``: PRDiT stage 2, the global DiT on the frozen stage-1 denoiser, IaN loss;
- ``plain-dit``: a plain 3D DiT over the same tokens (time MLP -> GlobalDiT -> tile, no local denoiser), same
  width, depth chosen to match the full PRDiT's parameter count, IaN loss;
- ``unet``: MONAI's 3D ``DiffusionModelUNet`` with DDPM (epsilon prediction, linear betas), base width chosen to
  match the full PRDiT's parameter count.

``build_bench`` also takes ``unet-ian``: the same U-Net with two output channels trained with PRDiT's IaN loss
(and sampled with its samplers), which separates the network from the training objective in the quality study.
``ConditionalUNet`` is its conditional version (label one-hot channels beside the noisy input), the baseline of
``bench_conditional --part baseline``.

Memory: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``) over the first steps; on CPU the
peak-RSS growth (VmHWM, reset through /proc/self/clear_refs) over the first step of a model built in a fresh
subprocess, since tracemalloc does not see torch's allocations. Both count what training adds to the built
model: gradients, AdamW state and activations.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from prdit.diffusion import create_diffusion
from prdit.io import atomic_write_text
from prdit.models import create_model
from prdit.models.global_dit import GlobalDiT
from prdit.models.prdit import TimestepEmbedder
from prdit.models.tokens import extract_tokens, tile_tokens, token_grid
from prdit.runtime import autocast_for, enable_tf32

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODEL_KINDS = ("prdit-s1", "prdit-s2", "plain-dit", "unet")
LABELS = {
    "prdit-s1": "PRDiT stage 1",
    "prdit-s2": "PRDiT stage 2",
    "plain-dit": "plain 3D DiT",
    "unet": "MONAI 3D U-Net (DDPM)",
    "unet-ian": "MONAI 3D U-Net (IaN loss)",
}


@dataclass(frozen=True)
class Preset:
    """A PRDiT size to benchmark (``PRDiT-{size}/{patch}/{depth}`` with ``stride``)."""

    size: str
    patch: int
    stride: int
    depth: int

    def name(self, depth: int | None = None) -> str:
        return f"PRDiT-{self.size}/{self.patch}/{self.depth if depth is None else depth}"


# "tiny" is the phantom configuration (configs/phantom/*.yaml), sized for CPU; "base" is the paper's B/12/4; "small"
# is B with the S width (a third of the work, for CPU measurements at 128^3).
PRESETS = {"tiny": Preset("T", 6, 4, 2), "small": Preset("S", 12, 8, 4), "base": Preset("B", 12, 8, 4)}


# ----------------------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------------------


class PlainDiT(nn.Module):
    """A plain 3D DiT over PRDiT's tokens: the same windows, time MLP and DiT blocks, no local denoiser.

    ``model(x, t)`` -> [B, out_channels, D, H, W], channels [eps_hat, x0_hat] like PRDiT, so it trains with the
    same IaN loss.
    """

    def __init__(self, input_size: int, patch: int, stride: int, hidden: int, heads: int, depth: int,
                 out_channels: int = 2, grad_checkpoint: bool = False) -> None:
        super().__init__()
        self.patch, self.stride = patch, stride
        grid = token_grid((input_size,) * 3, patch, stride)
        self.time_embed = TimestepEmbedder(hidden)
        self.dit = GlobalDiT(patch**3, hidden, heads, depth, out_channels * stride**3, grid, grad_checkpoint)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        grid = token_grid(x.shape[2:], self.patch, self.stride)
        out = self.dit(extract_tokens(x, self.patch, self.stride), self.time_embed(t), grid)
        return tile_tokens(out, grid, self.stride).to(x.dtype)


class UNetDDPM(nn.Module):
    """MONAI ``DiffusionModelUNet`` (3D) trained with DDPM noise prediction, as a MONAI user would."""

    def __init__(self, base: int, grad_checkpoint: bool = False, out_channels: int = 1, in_channels: int = 1) -> None:
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet
        from monai.networks.schedulers import DDPMScheduler

        if grad_checkpoint:
            raise ValueError("MONAI's DiffusionModelUNet has no activation-checkpointing option")
        self.net = DiffusionModelUNet(
            spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=unet_channels(base), num_res_blocks=2,
            attention_levels=(False, False, False, True), norm_num_groups=math.gcd(base, 32), num_head_channels=base,
            use_flash_attention=torch.cuda.is_available(),
        )
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)

    def training_loss(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        t = torch.randint(0, 1000, (x0.shape[0],), generator=generator, device=x0.device)
        return F.mse_loss(self(self.scheduler.add_noise(x0, noise, t), t).float(), noise)


class ConditionalUNet(nn.Module):
    """The U-Net with a label map's one-hot channels concatenated to the noisy volume (the usual MONAI way to
    condition on a mask), outputs [eps_hat, x0_hat] for PRDiT's IaN loss and samplers.

    Called ``model(x, t, condition=...)`` like a conditional PRDiT, so prdit's condition dropout, classifier-free
    guidance (:class:`prdit.models.GuidedModel`) and samplers take it unchanged; a dropped label map is all-zero
    channels, as in PRDiT. It takes no attributes (MONAI's U-Net has class embeddings, not continuous ones).
    """

    def __init__(self, base: int, label_channels: int) -> None:
        super().__init__()
        self.in_channels, self.label_channels = 1, label_channels  # in_channels: the noise, as PRDiT's (the Pipeline draws it)
        self.name = f"MONAI-DiffusionModelUNet-{base}-cond"
        self.unet = UNetDDPM(base, out_channels=2, in_channels=1 + label_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition=None) -> torch.Tensor:
        labels = None if condition is None else condition.labels
        if labels is None:
            labels = x.new_zeros((x.shape[0], self.label_channels, *x.shape[2:]))
        return self.unet(torch.cat([x, labels.to(x.dtype)], dim=1), t)


def unet_channels(base: int) -> tuple[int, ...]:
    """Four levels (base, 2 base, 4 base, 4 base); attention only at the coarsest (1/8 resolution)."""
    return (base, 2 * base, 4 * base, 4 * base)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@functools.lru_cache(maxsize=None)
def matched_unet_base(target_params: int) -> int:
    """The U-Net base width (multiple of 8) whose parameter count is closest to ``target_params``."""
    with torch.device("meta"):
        counts = {base: count_parameters(UNetDDPM(base).net) for base in range(8, 257, 8)}
    return min(counts, key=lambda base: abs(counts[base] - target_params))


@functools.lru_cache(maxsize=None)
def matched_dit_depth(preset: Preset, input_size: int, target_params: int) -> int:
    """The plain-DiT depth whose parameter count is closest to ``target_params``."""
    hidden, heads = _dit_width(preset)
    with torch.device("meta"):
        counts = {d: count_parameters(PlainDiT(input_size, preset.patch, preset.stride, hidden, heads, d))
                  for d in range(1, 49)}
    return min(counts, key=lambda depth: abs(counts[depth] - target_params))


def _dit_width(preset: Preset) -> tuple[int, int]:
    from prdit.models.registry import SIZES

    return SIZES[preset.size]


# ----------------------------------------------------------------------------------------------------------
# Training steps
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """A model ready to train: ``step()`` runs forward, backward and an AdamW update on a fixed batch."""

    kind: str
    model: nn.Module
    loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    optimizer: torch.optim.Optimizer
    batch: torch.Tensor
    autocast: Callable[[], contextlib.AbstractContextManager]
    description: str

    def step(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.loss(self.batch, self.generator)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def __post_init__(self) -> None:
        self.generator = torch.Generator(self.batch.device).manual_seed(0)


def build_bench(kind: str, preset: Preset, input_size: int, batch: int, device: str = "cpu",
                dtype: str = "fp32", grad_checkpoint: bool = False, lr: float = 1e-4, seed: int = 0) -> Bench:
    """One of ``MODEL_KINDS`` at ``input_size``^3, parameter-matched to the full (stage-2) PRDiT of ``preset``;
    ``seed`` sets the initialisation and the diffusion noise of its steps."""
    torch.manual_seed(seed)
    full = create_model(preset.name(), input_size, stride=preset.stride)
    target = count_parameters(full)
    diffusion = create_diffusion(None)
    if kind in ("prdit-s1", "prdit-s2"):
        depth = 0 if kind == "prdit-s1" else preset.depth
        model = create_model(preset.name(depth), input_size, stride=preset.stride, grad_checkpoint=grad_checkpoint)
        if depth:
            model.freeze_local_denoiser()
        description = f"{preset.name(depth)} stride {preset.stride}"
    elif kind == "plain-dit":
        hidden, heads = _dit_width(preset)
        depth = matched_dit_depth(preset, input_size, target)
        model = PlainDiT(input_size, preset.patch, preset.stride, hidden, heads, depth, grad_checkpoint=grad_checkpoint)
        description = f"DiT width {hidden}, depth {depth}, {preset.patch}^3 windows stride {preset.stride}"
    elif kind in ("unet", "unet-ian"):
        base = matched_unet_base(target)
        model = UNetDDPM(base, out_channels=1 if kind == "unet" else 2)  # unet-ian: [eps_hat, x0_hat] like PRDiT
        description = f"DiffusionModelUNet channels {unet_channels(base)}, 2 res blocks, attention at 1/8"
    else:
        raise ValueError(f"unknown model kind {kind!r}; choose from {', '.join(MODEL_KINDS)}")
    model = model.to(device)
    if kind == "unet":
        loss = model.training_loss
    else:
        loss = lambda x0, generator: diffusion.training_loss(model, x0, generator)  # noqa: E731
    trainable = [p for p in model.parameters() if p.requires_grad]
    # foreach AdamW: one fused update over all tensors, as a real training run would use.
    optimizer = torch.optim.AdamW(trainable, lr=lr, foreach=True)
    x0 = torch.rand((batch, 1, input_size, input_size, input_size), generator=torch.Generator().manual_seed(1))
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"unknown dtype {dtype!r}; choose fp32 or bf16")

    def autocast() -> contextlib.AbstractContextManager:
        return autocast_for(dtype, torch.device(device))

    description += f"; {count_parameters(model) / 1e6:.2f} M params ({count_parameters(model, True) / 1e6:.2f} M trained)"
    bench = Bench(kind, model, loss, optimizer, (x0 * 2 - 1).to(device), autocast, description)
    bench.generator.manual_seed(seed)
    return bench


# ----------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(benches: list[Bench], repeats: int, warmup: int = 0) -> dict[str, list[float]]:
    """Seconds per step of each bench, run A, B, C, A, B, C, ... so that machine noise hits all alike."""
    for bench in benches:
        for _ in range(warmup):
            bench.step()
    times: dict[str, list[float]] = {bench.kind: [] for bench in benches}
    for _ in range(repeats):
        for bench in benches:
            device = str(bench.batch.device)
            synchronize(device)
            began = time.perf_counter()
            bench.step()
            synchronize(device)
            times[bench.kind].append(time.perf_counter() - began)
    return times


def _cpu_flash_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# torch's FLOP counter knows the CUDA attention kernels but not the CPU flash kernel (torch 2.13), which would
# leave every attention FLOP of the DiTs out of the CPU counts.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_attention_backward_flops,
}


def step_flops(bench: Bench) -> int:
    """Model FLOPs of one training step (forward + backward; matmuls, convolutions, attention).

    It runs a full step, so it doubles as the warm-up that creates the optimizer state.
    """
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        bench.step()
    return int(counter.get_total_flops())


def proc_status_bytes(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) * 1024  # reported in kB


def rss_step_growth(bench: Bench, steps: int = 1) -> int:
    """Peak RSS growth over ``steps`` training steps, from the RSS right before them (Linux only).

    Writing 5 to /proc/self/clear_refs resets the peak (VmHWM) to the current RSS, so memory touched earlier
    (imports, building the model) does not hide the step's own peak.
    """
    return rss_growth_of(lambda: [bench.step() for _ in range(steps)])


def rss_growth_of(work: Callable[[], object]) -> int:
    """Peak RSS growth while ``work()`` runs, from the RSS right before it (Linux; see :func:`rss_step_growth`).

    glibc keeps freed memory (of an earlier step, say) mapped and reuses it without the RSS growing, which would
    hide that much of the peak: ``malloc_trim`` returns it to the system first."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = proc_status_bytes("VmRSS")
    work()
    return proc_status_bytes("VmHWM") - before


def cpu_step_memory(kind: str, preset_name: str, input_size: int, batch: int, grad_checkpoint: bool,
                    steps: int = 1) -> int:
    """Peak RSS growth over the first training step(s) of one model, measured in a fresh Python process.

    The baseline is taken after the model, optimizer and batch exist, so the number is what training adds:
    gradients, AdamW state (created by the first step) and the activations of forward and backward. A fresh
    process keeps freed memory of other models (held by the allocator) out of the measurement.
    """
    code = (
        "import sys, json; sys.path.insert(0, {root!r}); import torch; from benchmarks import common as c;"
        "b = c.build_bench({kind!r}, c.PRESETS[{preset!r}], {size}, {batch}, grad_checkpoint={ckpt});"
        "print(json.dumps(c.rss_step_growth(b, {steps})))"
    ).format(root=str(Path(__file__).resolve().parents[1]), kind=kind, preset=preset_name, size=input_size,
             batch=batch, ckpt=grad_checkpoint, steps=steps)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"memory probe of {kind} at {input_size}^3 failed:\n{done.stderr[-2000:]}")
    return int(done.stdout.strip().splitlines()[-1])


TRAINING_STEP_PROBE = r"""
import json, sys
from pathlib import Path
import torch
from benchmarks.common import proc_status_bytes, rss_growth_of
from prdit.config import config_from_dict
from prdit.diffusion import create_diffusion
from prdit.runtime import autocast_for
from prdit.train.ema import create_ema, update_ema
from prdit.train.trainer import build_model, build_optimizer
name, size, batch, precision, ckpt, stride = json.loads(sys.argv[1])
config = config_from_dict({"data": {"image_size": size}, "model": {"name": name, "stride": stride},
                           "training": {"precision": precision, "activation_checkpointing": ckpt}})
torch.manual_seed(0)
diffusion = create_diffusion(config.diffusion)
model = build_model(config, diffusion.model_out_channels)
if model.depth:
    model.freeze_local_denoiser()
ema, optimizer = create_ema(model), build_optimizer(model, config, [])
trainable = [p for p in model.parameters() if p.requires_grad]
x0 = torch.rand(batch, 1, size, size, size) * 2 - 1

def step():
    with autocast_for(precision, torch.device("cpu")):
        loss = diffusion.training_loss(model, x0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    update_ema(ema, model, 0.999)

step()  # AdamW creates its state in the first step; the second is what every later step looks like
growth = rss_growth_of(step)  # resets VmHWM first: the peak read next is the second step's
print(json.dumps({"growth": growth, "peak": proc_status_bytes("VmHWM")}))
"""


def training_step_peaks(name: str, size: int, batch: int, precision: str = "fp32", checkpointing: bool = False,
                        stride: int | None = None) -> dict[str, int]:
    """A real training step (the trainer's model, EMA and fused AdamW, IaN loss, clipping) in a fresh process,
    measured on the second step, once AdamW's state exists: ``growth``, its peak-RSS growth (what every step adds),
    and ``peak``, the whole process's peak RSS during it (runtime, model, EMA, AdamW state and batch included)."""
    config = (name, size, batch, precision, checkpointing, stride)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", TRAINING_STEP_PROBE, json.dumps(config)], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"probe {config} failed:\n{done.stderr[-2000:]}")
    return {key: int(value) for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def training_step_memory(name: str, size: int, batch: int, precision: str = "fp32", checkpointing: bool = False,
                         stride: int | None = None) -> int:
    """The peak-RSS growth of :func:`training_step_peaks`."""
    return training_step_peaks(name, size, batch, precision, checkpointing, stride)["growth"]


def matmul_peak_flops(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None,
                      repeats: int = 5) -> float:
    """Best achieved FLOP/s of a square matmul: the practical peak that MFU is measured against."""
    n = n or (4096 if torch.device(device).type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    inner = 20 if torch.device(device).type == "cuda" else 2
    for _ in range(repeats):
        synchronize(device)
        began = time.perf_counter()
        for _ in range(inner):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - began) / inner)
    return 2 * n**3 / best


def machine(with_monai: bool = True) -> dict:
    """What the numbers were measured on (MONAI's version too unless ``with_monai`` is False: importing it takes
    seconds, and the GPU machine may not have it)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    info = {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    try:
        if with_monai:
            import monai

            info["monai"] = monai.__version__
    except ImportError:
        pass
    return info


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def write_json(name: str, payload: dict) -> Path:
    """Write ``results/<name>.json`` atomically; a previous result of the same name is replaced, and said so."""
    path = RESULTS_DIR / f"{name}.json"
    if path.exists():
        print(f"replacing the previous {path.name} (use --name to keep both)")
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return path


def setup_device(device: str, tf32: bool) -> None:
    """TF32 matmuls and convolutions on CUDA when asked (fp32 storage, 10-bit mantissa products)."""
    enable_tf32(device, tf32)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True


def as_dict(preset: Preset) -> dict:
    return asdict(preset)
