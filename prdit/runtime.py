"""Where and how tensors are computed: the device, mixed precision, TF32 and CPU threads, decided in one place."""

from __future__ import annotations

import functools
import math
import os
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


NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs that compute in bf16 natively


@functools.cache
def native_bf16_cpu_features(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The CPU features that make bf16 fast on this CPU (AMX or AVX-512 bf16), empty where it would be emulated.

    Read from the kernel's CPU flags (Linux); elsewhere from torch's CPU capability where it names AMX."""
    try:
        with open(cpuinfo) as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
        return tuple(flag for flag in NATIVE_BF16_FLAGS if flag in flags)
    except OSError:
        capability = torch.backends.cpu.get_cpu_capability()
        return (capability.lower(),) if "AMX" in capability.upper() else ()


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"bf16"`` or ``"fp32"`` for a precision setting: ``auto`` is bf16 autocast on CUDA and on CPUs with native
    bf16 (AMX or AVX-512 bf16: 1.4-2.9x faster there, see benchmarks/README.md), fp32 elsewhere (emulated bf16 is
    slower than fp32). The one place that decides it, for training, sampling and restoring alike."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"precision {precision!r}: use auto, bf16 or fp32")
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    return "bf16" if kind == "cuda" or (kind == "cpu" and native_bf16_cpu_features()) else "fp32"


def describe_precision(precision: str, device: torch.device | str) -> str:
    """One line saying which precision a setting runs at on ``device``, and why (the first line a run logs)."""
    resolved, kind = resolve_precision(precision, device), torch.device(device).type
    if precision != "auto":
        why = f"precision={precision} was asked for"
    elif kind == "cuda":
        why = "auto: bf16 autocast on CUDA"
    elif resolved == "bf16":
        why = f"auto: this CPU computes bf16 natively ({', '.join(native_bf16_cpu_features())})"
    else:
        why = f"auto: no native bf16 on this {kind.upper()} (AMX or AVX-512 bf16), where bf16 would be emulated"
    return f"precision {resolved} on {torch.device(device)} ({why}; precision=fp32 or bf16 to choose)"


def autocast_for(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast context of a precision setting (``auto``: :func:`resolve_precision`)."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def enable_tf32(device: torch.device | str, enabled: bool = True) -> None:
    """TF32 matmuls and convolutions on CUDA (fp32 storage, 10-bit mantissa products); nothing elsewhere."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


# ----------------------------------------------------------------------------------------------------------
# CPU threads
# ----------------------------------------------------------------------------------------------------------
# torch's OpenMP threads meet at a barrier after every parallel operation. OpenMP's default is to spin while
# waiting there (GNU libgomp: about 3 ms); on a busy machine the spinning burns the cores that a late thread needs.
# With the default policy 2 threads trained the demo's stage 1 at 0.13 steps/s against 0.73 with 1 thread (a 2-core
# machine at load average 25, benchmarks/bench_threads.py; issue 19 saw 0.45 against 2.70 at load 4). With
# OMP_WAIT_POLICY=PASSIVE waiting threads sleep, and 2 threads gave 1.50 steps/s against 0.83 with 1 (stage 2:
# 0.47 against 0.25). Sleeping at once costs an idle machine, though: every operation then wakes the other threads,
# and on 2 idle cores the demo's bf16 steps took 31 and 112 ms (stages 1 and 2) against 22 and 98 ms with a
# 1000-iteration spin first (GOMP_SPINCOUNT=1000, tens of microseconds), while under load the short spin kept
# PASSIVE's speed (load 6: 143 ms against 150; 30000 iterations: 261-331 ms). So the `prdit` command
# (`prdit.cli.main`) sets PASSIVE and GOMP_SPINCOUNT=1000 before torch is imported, and then every usable core gets
# a thread whatever the load; only where OpenMP spins long (torch was imported first, or the environment says so)
# does the load average cut the thread count.
SHORT_SPIN_COUNT = 3000  # the longest GOMP_SPINCOUNT measured to keep PASSIVE's speed under load


# glibc's malloc gives every freed block above its mmap threshold back to the OS, and the next training step faults
# the same pages in again. In the demo's stage 2 at bf16 (autocast makes and frees bf16 copies of weights and
# activations every step) that was 34 ms of system time in a 0.235 s step; with freed memory kept in the heap it is
# 0.7 ms (fp32: 3 ms -> 1 ms), at the same peak RSS (docs/training.md, "Precision").
FREED_MEMORY_KEPT_BYTES = 2**30  # blocks up to 1 GiB come from (and go back to) the heap, which is not trimmed below it


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` at
    :data:`FREED_MEMORY_KEPT_BYTES`); False where the C library is not glibc. Process-wide: the CLI's compute
    commands call it."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
        return False
    trim_threshold, mmap_threshold = -1, -3  # <malloc.h> M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
    return bool(mallopt(mmap_threshold, FREED_MEMORY_KEPT_BYTES)) and bool(mallopt(trim_threshold, FREED_MEMORY_KEPT_BYTES))


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, e.g. under taskset or a cpuset container)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def openmp_waits_passively() -> bool:
    """Whether waiting OpenMP threads sleep, at most after a short spin (GOMP_SPINCOUNT unset or up to
    :data:`SHORT_SPIN_COUNT`; a form such as ``10k`` or ``infinite`` counts as long): what the prdit command sets
    before torch loads OpenMP (see above)."""
    spin = os.environ.get("GOMP_SPINCOUNT", "0").strip()
    short_spin = spin.isdigit() and int(spin) <= SHORT_SPIN_COUNT
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE" and short_spin


def choose_cpu_threads(usable: int, machine_cpus: int, load_average: float, passive: bool) -> int:
    """Torch threads for a process that may use ``usable`` of the machine's ``machine_cpus`` cores while other
    processes keep ``load_average`` of them busy: every usable core when waiting threads sleep (``passive``),
    else the usable cores' idle share, rounded, at least 1."""
    if passive:
        return usable
    idle_fraction = max(0.0, 1.0 - load_average / max(machine_cpus, 1))
    return max(1, min(usable, math.floor(usable * idle_fraction + 0.5)))


def configure_cpu_threads() -> str:
    """Set torch's CPU threads from the usable cores, the wait policy and the load average, unless
    ``OMP_NUM_THREADS`` says how many; returns a one-line description for the user."""
    usable, passive = usable_cpus(), openmp_waits_passively()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if os.environ.get("OMP_NUM_THREADS"):
        how = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    else:
        torch.set_num_threads(choose_cpu_threads(usable, os.cpu_count() or usable, load, passive))
        how = "OMP_NUM_THREADS=N to choose"
    spin = os.environ.get("GOMP_SPINCOUNT")
    if passive:
        waiting = f"waiting threads sleep after a short spin (GOMP_SPINCOUNT={spin})" if spin else "waiting threads sleep"
    else:
        spun = f", GOMP_SPINCOUNT={spin}" if spin else ""
        waiting = f"waiting threads spin: OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}{spun}"
    return (f"{torch.get_num_threads()} torch thread(s) on {usable} usable core(s), load average {load:.1f}, "
            f"{waiting} ({how})")
