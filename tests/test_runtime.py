"""Device, autocast, TF32 and CPU-thread decisions."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

from prdit import runtime
from prdit.cli.common import OPENMP_SPIN_COUNT
from prdit.errors import ConfigError
from prdit.runtime import (
    autocast_for,
    choose_cpu_threads,
    configure_cpu_threads,
    describe_precision,
    enable_tf32,
    openmp_waits_passively,
    resolve_device,
    resolve_precision,
    usable_cpus,
)


def test_auto_and_gpu_indices_fall_back_to_the_cpu_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    assert resolve_device("-1") == resolve_device(-1) == torch.device("cpu")
    assert capsys.readouterr().err == ""
    assert resolve_device("0") == torch.device("cpu")  # the seed scripts' --gpu_id 0 on a CPU machine
    assert "no CUDA device" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_indices_and_plain_cuda_name_this_process_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=3) == torch.device("cuda:3")
    assert resolve_device("cuda", local_rank=2) == torch.device("cuda:2")
    assert resolve_device("cuda:1", local_rank=2) == torch.device("cuda:1")
    assert resolve_device("1") == resolve_device(1) == torch.device("cuda:1")


INTEL_FLAGS = "flags\t\t: fpu vme sse sse2 avx2 avx512f avx512bw {extra} xsave\n"


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Point the bf16 detection at a fake /proc/cpuinfo with the given extra flags."""
    read = runtime.native_bf16_cpu_features.__wrapped__  # the uncached reader

    def fake(extra: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text("processor\t: 0\nmodel name\t: a CPU\n" + INTEL_FLAGS.format(extra=extra))
        monkeypatch.setattr(runtime, "native_bf16_cpu_features", lambda: read(str(path)))
    return fake


@pytest.mark.parametrize("extra, features", [("avx512_bf16", ("avx512_bf16",)), ("amx_bf16 amx_tile avx512_bf16", ("amx_bf16", "avx512_bf16"))])
def test_auto_precision_is_bf16_on_cpus_with_native_bf16(cpuinfo, extra, features):
    cpuinfo(extra)
    assert runtime.native_bf16_cpu_features() == features
    assert resolve_precision("auto", "cpu") == "bf16"
    assert f"natively ({', '.join(features)})" in describe_precision("auto", torch.device("cpu"))
    x = torch.ones(2, 2)
    with autocast_for("auto", torch.device("cpu")):
        assert (x @ x).dtype == torch.bfloat16


def test_auto_precision_is_fp32_on_cpus_that_would_emulate_bf16(cpuinfo):
    cpuinfo("avx512vl")  # AVX-512 without its bf16 extension
    assert runtime.native_bf16_cpu_features() == ()
    assert resolve_precision("auto", "cpu") == "fp32"
    assert "no native bf16" in describe_precision("auto", "cpu")
    x = torch.ones(2, 2)
    with autocast_for("auto", torch.device("cpu")):
        assert (x @ x).dtype == torch.float32


def test_explicit_precision_wins_and_cuda_auto_is_bf16(cpuinfo):
    cpuinfo("")
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("fp32", "cuda") == "fp32"
    assert resolve_precision("auto", "cuda") == "bf16" and "on CUDA" in describe_precision("auto", "cuda")
    assert "precision=fp32 was asked for" in describe_precision("fp32", "cpu")
    with pytest.raises(ConfigError, match="use auto, bf16 or fp32"):
        resolve_precision("fp16", "cpu")
    x = torch.ones(2, 2)
    with autocast_for("bf16", torch.device("cpu")):
        assert (x @ x).dtype == torch.bfloat16
    with autocast_for("fp32", torch.device("cpu")):
        assert (x @ x).dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constructing a CUDA autocast without CUDA warns
        assert isinstance(autocast_for("auto", torch.device("cuda")), torch.autocast)


def test_bf16_detection_reads_the_real_cpu_without_failing():
    features = runtime.native_bf16_cpu_features()
    assert set(features) <= set(runtime.NATIVE_BF16_FLAGS)
    assert resolve_precision("auto", "cpu") == ("bf16" if features else "fp32")


def test_tf32_is_left_alone_off_cuda():
    before = torch.backends.cuda.matmul.allow_tf32
    enable_tf32("cpu")
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_every_usable_core_gets_a_thread_when_waiting_threads_sleep():
    for load in (0.0, 4.0, 25.0):
        assert choose_cpu_threads(2, 2, load, passive=True) == 2
    assert choose_cpu_threads(4, 64, 100.0, passive=True) == 4


def test_spinning_threads_follow_the_idle_share_of_the_usable_cores():
    assert choose_cpu_threads(2, 2, 0.0, passive=False) == 2  # idle 2-core machine: both cores
    assert choose_cpu_threads(2, 2, 4.0, passive=False) == 1  # load average 4 on 2 cores: one thread
    assert choose_cpu_threads(8, 8, 3.0, passive=False) == 5
    assert choose_cpu_threads(2, 64, 10.0, passive=False) == 2  # 2 pinned cores of a mostly idle 64-core host
    for usable, machine in [(1, 1), (2, 2), (4, 16), (16, 16)]:
        threads = [choose_cpu_threads(usable, machine, load / 4, passive=False) for load in range(0, 4 * 2 * machine)]
        assert all(1 <= t <= usable for t in threads)
        assert threads == sorted(threads, reverse=True), "more load never means more threads"


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_configure_keeps_omp_num_threads(monkeypatch, restore_threads):
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert "OMP_NUM_THREADS=1" in configure_cpu_threads()
    assert torch.get_num_threads() == 1


def test_configure_chooses_from_cores_policy_and_load(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0 * (os.cpu_count() or 1), 0.0, 0.0))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    assert "waiting threads sleep after a short spin (GOMP_SPINCOUNT=1000)" in configure_cpu_threads()
    assert torch.get_num_threads() == usable_cpus()
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert configure_cpu_threads().startswith("1 torch thread(s)")
    assert torch.get_num_threads() == 1


OPENMP_WAITING = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def openmp_waiting_after(code: str, given: dict[str, str]) -> str:
    """What a fresh interpreter's OMP_WAIT_POLICY and GOMP_SPINCOUNT are after ``code``, started with ``given``."""
    env = {key: value for key, value in os.environ.items() if key not in OPENMP_WAITING} | given
    code += "; print(*(os.environ.get(key, 'unset') for key in %r))" % (OPENMP_WAITING,)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


@pytest.mark.parametrize("given, first, expected", [
    ({}, "prdit", f"PASSIVE {OPENMP_SPIN_COUNT}"),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "prdit", "ACTIVE unset"),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, "prdit", "PASSIVE unset"),
    ({"GOMP_SPINCOUNT": "20000"}, "prdit", "PASSIVE 20000"),
    ({}, "torch", "unset unset"),
])
def test_the_command_makes_waiting_openmp_threads_spin_briefly_then_sleep(given, first, expected):
    """... when it starts before torch is loaded; after torch the setting would be too late and is left alone, and
    a wait policy or spin count of the user's own is kept."""
    assert openmp_waiting_after(f"import os, {first}; from prdit.cli import main; main([])", given) == expected


def test_importing_prdit_leaves_the_environment_alone():
    assert openmp_waiting_after("import os, prdit, prdit.sample, prdit.train.trainer", {}) == "unset unset"


@pytest.mark.parametrize("policy, spin, passive", [("PASSIVE", None, True), ("PASSIVE", "1000", True), ("passive", "3000", True),
                                                   ("PASSIVE", "30000", False), ("PASSIVE", "10k", False),
                                                   ("PASSIVE", "infinite", False), ("ACTIVE", "1000", False), (None, None, False)])
def test_short_spins_count_as_passive_waiting(monkeypatch, policy, spin, passive):
    for key, value in zip(OPENMP_WAITING, (policy, spin)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    assert openmp_waits_passively() is passive


FAULTS_OF_TRAINING_STEPS = """
import resource, sys, torch
from prdit.runtime import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def step():  # a training step's large temporaries: made, used, freed
    tensors = [torch.empty(2**k).fill_(1.0) for k in (20, 22, 24, 22, 21)]  # 4-64 MiB
    del tensors
for _ in range(6):  # the heap grows to the steps' working set
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_freed_memory_is_reused_without_page_faults():
    """By default glibc returns a step's freed 64 MiB temporary (above its largest mmap threshold, 32 MiB) to the OS,
    and its 16384 pages fault in again on every step. keep_freed_memory() keeps it: once the heap holds the steps'
    working set, ten more steps fault in less than one such block (often nothing; now and then a freed block too
    small for an aligned request grows the heap once more)."""

    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", FAULTS_OF_TRAINING_STEPS, mode], capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout.split()
        return out[0], int(out[1])

    kept, with_kept = faults("keep")
    if kept == "False":
        pytest.skip("the C library is not glibc")
    _, default = faults("default")
    assert default >= 10 * 16384 and with_kept < 16384, (default, with_kept)
