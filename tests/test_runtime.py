"""Device, autocast and TF32 decisions."""

import warnings

import pytest
import torch

from prdit.errors import ConfigError
from prdit.runtime import autocast_for, enable_tf32, resolve_device


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
