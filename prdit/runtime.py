"""Where and how tensors are computed: the device, mixed precision and TF32, decided in one place."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, nullcontext

import torch

from prdit.errors import ConfigError


def resolve_device(requested: str | int | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """The device to run on.

    ``"auto"`` (or ``None``): ``cuda:<local_rank>`` when CUDA is available, else the CPU. ``"cuda"`` without an
    index means this process's GPU, ``cuda:<local_rank>``. A GPU index (the seed scripts' ``--gpu_id``: an int or a
    digit string) is ``cuda:<index>`` where CUDA exists and the CPU otherwise, with a note; ``-1`` is the CPU.
    An explicit CUDA device on a machine without CUDA is a :class:`ConfigError`.
    """
    if requested is None or requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if isinstance(requested, int) or (isinstance(requested, str) and requested.lstrip("-").isdigit()):
        index = int(requested)
        if index >= 0 and torch.cuda.is_available():
            return torch.device(f"cuda:{index}")
        if index >= 0:
            print("note: no CUDA device, running on CPU", file=sys.stderr)
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested} was asked for but CUDA is not available; use cpu (training.device=cpu, --device cpu)")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def autocast_for(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast context of a precision setting: ``auto`` is bf16 on CUDA and fp32 elsewhere."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def enable_tf32(device: torch.device | str, enabled: bool = True) -> None:
    """TF32 matmuls and convolutions on CUDA (fp32 storage, 10-bit mantissa products); nothing elsewhere."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
