"""prdit on a CUDA GPU: the same numbers as on the CPU, bf16 close to fp32, checkpointing exact and leaner.

Every test here is marked ``cuda`` and skipped where no GPU is present (tests/conftest.py);
``benchmarks/gpu_check.sh`` runs them first on a lent GPU (``pytest -m cuda tests/test_cuda.py``).
Tolerances follow the arithmetic: fp32 on both devices agrees to float rounding (TF32 off), bf16 to about 1e-2.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from prdit.config import config_from_dict
from prdit.data.phantom import generate_phantom
from prdit.demo import SHIPPED_WEIGHTS
from prdit.diffusion import create_diffusion
from prdit.inverse import SuperResolution
from prdit.io import save_nifti
from prdit.models import create_model
from prdit.runtime import autocast_for, enable_tf32
from prdit.sample import load_pipeline
from prdit.train.trainer import TrainOptions, train

pytestmark = pytest.mark.cuda

DEVICE = torch.device("cuda")


@pytest.fixture(autouse=True)
def full_fp32():
    """TF32 off: a CPU/GPU comparison in fp32 needs full-precision products (prdit's trainer turns TF32 on)."""
    if DEVICE.type == "cuda":
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        enable_tf32(DEVICE, False)
        yield
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
    else:
        yield


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


def random_model(name: str, size: int, stride: int | None = None, grad_checkpoint: bool = False) -> torch.nn.Module:
    """A model with trained-looking weights: its zero-initialised output layers would make outputs trivial."""
    torch.manual_seed(0)
    model = create_model(name, size, stride=stride, grad_checkpoint=grad_checkpoint)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model


def inputs(batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand((batch, 1, size, size, size), generator=generator) * 2 - 1
    return x, torch.randint(0, 1000, (batch,), generator=generator).float()


def forward_backward(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, precision: str = "fp32"):
    """Output and parameter gradients of a fixed scalar of the output."""
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    with autocast_for(precision, device):
        out = model(x.to(device), t.to(device))
    out.float().square().mean().backward()
    return out.float(), [p.grad.float() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("name, stride", [("PRDiT-T/6/2", 4), ("PRDiT-B/12/4", None)])
def test_forward_and_backward_match_the_cpu(name, stride):
    model = random_model(name, 32, stride)
    x, t = inputs(2, 32)
    cpu_out, cpu_grads = forward_backward(model, x, t)
    gpu_out, gpu_grads = forward_backward(copy.deepcopy(model).to(DEVICE), x, t)
    assert gpu_out.device.type == DEVICE.type
    assert relative_error(gpu_out, cpu_out) < 1e-4
    assert len(gpu_grads) == len(cpu_grads)
    assert max(relative_error(g, c) for g, c in zip(gpu_grads, cpu_grads)) < 1e-3


def test_bf16_autocast_agrees_with_fp32():
    model = random_model("PRDiT-B/12/4", 64).to(DEVICE)
    x, t = inputs(2, 64)
    fp32_out, fp32_grads = forward_backward(model, x, t, "fp32")
    bf16_out, bf16_grads = forward_backward(model, x, t, "bf16")
    assert torch.isfinite(bf16_out).all()
    assert relative_error(bf16_out, fp32_out) < 3e-2
    assert np.median([relative_error(b, f) for b, f in zip(bf16_grads, fp32_grads)]) < 5e-2


def test_activation_checkpointing_gives_the_same_gradients_with_less_memory():
    x, t = inputs(1, 96)
    peaks, grads = {}, {}
    for checkpointing in (False, True):
        model = random_model("PRDiT-B/12/4", 96, grad_checkpoint=checkpointing).to(DEVICE)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        _, grads[checkpointing] = forward_backward(model, x, t, "bf16")
        torch.cuda.synchronize()
        peaks[checkpointing] = torch.cuda.max_memory_allocated() - before
        del model
        torch.cuda.empty_cache()
    assert max(relative_error(a, b) for a, b in zip(grads[True], grads[False])) < 1e-2
    assert peaks[True] < 0.8 * peaks[False]


@pytest.mark.parametrize("sampler, steps", [("ian-2m", 6), ("ian-euler", 6)])
def test_deterministic_samplers_match_the_cpu(sampler, steps):
    model = random_model("PRDiT-T/6/2", 32, 4).eval()
    diffusion = create_diffusion(None)
    noise = torch.randn((2, 1, 32, 32, 32), generator=torch.Generator().manual_seed(3))
    cpu = diffusion.sample(model, noise.shape, sampler=sampler, steps=steps, noise=noise, progress=False)
    gpu = diffusion.sample(copy.deepcopy(model).to(DEVICE), noise.shape, sampler=sampler, steps=steps, noise=noise.to(DEVICE),
                           progress=False)
    assert gpu.device.type == DEVICE.type
    assert relative_error(gpu, cpu) < 1e-3


def test_stochastic_sampler_runs_from_a_cuda_generator():
    model = random_model("PRDiT-T/6/2", 32, 4).to(DEVICE).eval()
    diffusion = create_diffusion(None)
    draws = [diffusion.sample(model, (1, 1, 32, 32, 32), sampler="ian-pc", steps=8,
                              generator=torch.Generator(DEVICE).manual_seed(5), progress=False) for _ in range(2)]
    assert draws[0].device.type == DEVICE.type and torch.isfinite(draws[0]).all()
    assert torch.equal(draws[0], draws[1])  # the same generator seed, the same sample


@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED_WEIGHTS.is_file():
        pytest.skip(f"{SHIPPED_WEIGHTS} is absent")
    return {device: load_pipeline(SHIPPED_WEIGHTS, device=device, precision="fp32") for device in ("cpu", DEVICE.type)}


def test_shipped_model_samples_the_same_volume_as_on_the_cpu(shipped):
    cpu = shipped["cpu"].sample_model_space([0, 1], steps=10)
    gpu = shipped[DEVICE.type].sample_model_space([0, 1], steps=10)
    assert relative_error(gpu, cpu) < 1e-3
    shipped[DEVICE.type].precision = "bf16"
    try:
        bf16 = shipped[DEVICE.type].sample_model_space([0, 1], steps=10)
    finally:
        shipped[DEVICE.type].precision = "fp32"
    # bf16 rounding grows over 10 network calls; the volume stays the same one (HU window 2000 wide: 0.05 = 50 HU)
    assert (bf16.float().cpu() - cpu).abs().mean() < 0.05


def test_restore_on_cuda_matches_the_cpu(shipped):
    volume, _ = generate_phantom(32, seed=900)
    truth = torch.as_tensor(volume, dtype=torch.float32)[None, None]
    op = SuperResolution(2)
    y = op(truth)
    cpu = shipped["cpu"].restore(y, op, steps=8, seed=0)
    gpu = shipped[DEVICE.type].restore(y, op, steps=8, seed=0)
    assert gpu.shape == cpu.shape == truth.shape
    assert (gpu.float().cpu() - cpu).abs().mean() < 2.0  # HU
    assert (op(gpu.float().cpu()) - y).abs().mean() < (op(torch.zeros_like(truth)) - y).abs().mean() / 10
    shipped[DEVICE.type].precision = "bf16"
    try:
        bf16 = shipped[DEVICE.type].restore(y, op, steps=8, seed=0)
    finally:
        shipped[DEVICE.type].precision = "fp32"
    assert (bf16.float().cpu() - cpu).abs().mean() < 25.0  # HU: the measurement anchors both


def test_training_steps_on_cuda_then_sampling(tmp_path):
    for seed in range(4):
        volume, spacing = generate_phantom(32, seed=seed)
        save_nifti(tmp_path / "data" / f"phantom_{seed:03d}.nii.gz", volume, spacing, dtype=np.int16)
    config = config_from_dict({
        "data": {"dataset": "folder", "root": str(tmp_path / "data"), "image_size": 32, "hu_window": [-1000, 1000]},
        "model": {"name": "PRDiT-T/6/2", "stride": 4},
        "training": {"global_batch_size": 2, "total_steps": 6, "seed": 0, "device": DEVICE.type, "precision": "bf16"},
        "output": {"results_dir": str(tmp_path / "results")},
        "logging": {"log_every": 1, "ckpt_every": 6, "eval_every": 6, "num_preview_samples": 1, "tensorboard": False},
    }, "cuda test config")
    run = train(config, TrainOptions(progress=False, from_scratch=True))  # stage 2 with both stages trained
    losses = [line for line in (run / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 6
    pipeline = load_pipeline(run, device=DEVICE.type)
    assert pipeline.device.type == DEVICE.type and pipeline.precision == "auto"
    hu = pipeline.sample(2, steps=4, progress=False)
    assert hu.shape == (2, 1, 32, 32, 32) and torch.isfinite(hu).all()
    assert -1000 <= float(hu.min()) and float(hu.max()) <= 1000  # the run's HU window
