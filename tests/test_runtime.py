"""Device, autocast, TF32 and CPU-thread decisions."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

from prdit.errors import ConfigError
from prdit.runtime import autocast_for, choose_cpu_threads, configure_cpu_threads, enable_tf32, resolve_device, usable_cpus


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


def test_autocast_auto_is_bf16_on_cuda_only():
    x = torch.ones(2, 2)
    with autocast_for("auto", torch.device("cpu")):
        assert (x @ x).dtype == torch.float32
    with autocast_for("bf16", torch.device("cpu")):
        assert (x @ x).dtype == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constructing a CUDA autocast without CUDA warns
        assert isinstance(autocast_for("auto", torch.device("cuda")), torch.autocast)


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
    assert "waiting threads sleep" in configure_cpu_threads()
    assert torch.get_num_threads() == usable_cpus()
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert configure_cpu_threads().startswith("1 torch thread(s)")
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("given, first, expected", [(None, "prdit", "PASSIVE"), ("ACTIVE", "prdit", "ACTIVE"),
                                                    (None, "torch", "unset")])
def test_the_command_makes_waiting_openmp_threads_sleep(given, first, expected):
    """... when it starts before torch is loaded; after torch the setting would be too late and is left alone."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = f"import os, {first}; from prdit.cli import main; main([]); print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == expected


def test_importing_prdit_leaves_the_environment_alone():
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    code = "import os, prdit, prdit.sample, prdit.train.trainer; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "unset"
