"""FSDP2 (training.parallel: fsdp) and its sharded checkpoints: 2 gloo processes train as 1 process does, and a
run saved on N ranks resumes exactly on M (2 -> 1, 1 -> 2); sharded runs export one safetensors file."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_trainer
import torch
from test_trainer import ROOT, assert_same_weights, make_config, quiet

from prdit.checkpoint import export_weights, load_checkpoint, load_exported
from prdit.config import save_config
from prdit.errors import ConfigError
from prdit.runs import resolve_latest
from prdit.train.logger import read_log
from prdit.train.parallel import full_norm, gradient_sync
from prdit.train.trainer import train

blob_data = test_trainer.blob_data  # the same fixture: twelve 16^3 volumes of blobs
MODEL = "PRDiT-T/6/2"  # trained from scratch: the local denoiser and two DiT blocks are shard units


def fsdp_config(data: Path, results: Path, **training):
    """Micro-batches of 2 whatever the rank count: the diffusion noise is drawn per micro-batch, so 1 process with
    accumulation and 2 processes draw the same."""
    return make_config(data, results, model=MODEL, parallel="fsdp", micro_batch_size=2, **training)


def torchrun(config, tmp_path: Path, *options: str) -> None:
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*.yaml')))}.yaml"
    save_config(config, path)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"),
         "--config", str(path), "--no-progress", "--from_scratch", *options],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def run_of(results: Path) -> Path:
    return next(results.glob("*-PRDiT-T-6-2"))


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_log(run / "log.jsonl") if "loss" in r]


def assert_same_run(a: Path, b: Path) -> None:
    np.testing.assert_allclose(losses(a), losses(b), rtol=1e-5)
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first["step"] == second["step"]
    # Adam divides by sqrt(v) + eps: a weight whose gradients are near zero moves by up to lr per step on
    # rounding-level gradient differences (2 ranks sum in another order), so weights agree to a small fraction of
    # the largest possible movement, lr x steps; a missing or wrong gradient reduction moves them by a large one.
    config = first["config"]["training"]
    atol = 0.01 * config["lr"] * first["step"]
    assert_same_weights(first["model"], second["model"], atol=atol)
    assert_same_weights(first["ema"], second["ema"], atol=atol)


def test_fsdp_on_two_processes_equals_one_process(blob_data, tmp_path):
    single = train(fsdp_config(blob_data, tmp_path / "one", total_steps=4), quiet(from_scratch=True))
    torchrun(fsdp_config(blob_data, tmp_path / "two", total_steps=4), tmp_path)
    two = run_of(tmp_path / "two")
    assert resolve_latest(two / "checkpoints").name == "step-0000004.dcp"
    assert_same_run(single, two)


@pytest.mark.slow
def test_a_run_saved_on_two_ranks_resumes_exactly_on_one(blob_data, tmp_path):
    straight = train(fsdp_config(blob_data, tmp_path / "straight", total_steps=8), quiet(from_scratch=True))
    torchrun(fsdp_config(blob_data, tmp_path / "b", total_steps=4), tmp_path)
    resumed = train(fsdp_config(blob_data, tmp_path / "b", total_steps=8), quiet(resume=True))
    assert_same_run(straight, resumed)


@pytest.mark.slow
def test_a_run_saved_on_one_rank_resumes_exactly_on_two(blob_data, tmp_path):
    straight = train(fsdp_config(blob_data, tmp_path / "straight", total_steps=8), quiet(from_scratch=True))
    train(fsdp_config(blob_data, tmp_path / "b", total_steps=4), quiet(from_scratch=True))
    torchrun(fsdp_config(blob_data, tmp_path / "b", total_steps=8), tmp_path, "--resume_training")
    assert_same_run(straight, run_of(tmp_path / "b"))


def test_a_sharded_run_exports_one_safetensors_file_and_keeps_the_last_checkpoints(blob_data, tmp_path):
    config = fsdp_config(blob_data, tmp_path, total_steps=8, logging={"ckpt_every": 2})
    config.output.keep_last = 2
    run = train(config, quiet(from_scratch=True))
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.dcp", "latest", "step-0000006.dcp", "step-0000008.dcp"]
    state = load_checkpoint(run)
    exported = load_exported(export_weights(run, tmp_path / "model.safetensors", half=False))
    assert exported["step"] == 8 and exported["meta"]["model_name"] == MODEL
    assert_same_weights(exported["ema"], state["ema"])


def test_a_single_file_checkpoint_does_not_resume_sharded(blob_data, tmp_path):
    train(make_config(blob_data, tmp_path, model=MODEL, total_steps=2), quiet(from_scratch=True))
    with pytest.raises(ConfigError, match="training.parallel"):
        train(fsdp_config(blob_data, tmp_path, total_steps=4), quiet(resume=True))


def test_gradient_sync_and_norms_of_a_single_process_are_plain():
    layer = torch.nn.Linear(3, 1)
    with gradient_sync(layer, None, enabled=False):
        layer(torch.ones(2, 3)).sum().backward()
    assert layer.weight.grad is not None
    assert full_norm(torch.tensor(2.5)) == 2.5
