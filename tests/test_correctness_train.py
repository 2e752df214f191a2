"""Correctness of what a resumed run, a DDP run, a best checkpoint, a guided sample and a converted official
checkpoint really do (issue 31): each test reproduces a defect that changed results without an error."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import test_trainer
import torch
from test_trainer import make_config, quiet
from torch.optim.optimizer import register_optimizer_step_pre_hook

from prdit.checkpoint import load_checkpoint
from prdit.config import save_config
from prdit.train import trainer
from prdit.train.trainer import train

blob_data = test_trainer.blob_data  # the fixture: twelve 16^3 blob volumes


@pytest.fixture
def optimizer_steps():
    """The hyperparameters of every AdamW group at each step the optimiser really takes."""
    seen: list[list[dict]] = []

    def record(optimizer, args, kwargs):
        seen.append([{key: group[key] for key in ("lr", "base_lr", "betas", "weight_decay")} for group in optimizer.param_groups])

    handle = register_optimizer_step_pre_hook(record)
    yield seen
    handle.remove()


class Interrupted(Exception):
    pass


def stop_before(monkeypatch, stop: int) -> None:
    """Make the next run die at the start of step ``stop`` (0-based), as a killed job would."""
    original = trainer.train_step

    def step_or_die(run, step):
        if step == stop:
            raise Interrupted
        return original(run, step)

    monkeypatch.setattr(trainer, "train_step", step_or_die)


# ----------------------------------------------------------------------------------------------------------
# 1. A resumed run uses the config's learning rate, betas and weight decay, not the checkpoint's
# ----------------------------------------------------------------------------------------------------------


def test_resumed_run_steps_with_the_new_lr_betas_and_weight_decay(blob_data, tmp_path, optimizer_steps):
    train(make_config(blob_data, tmp_path, total_steps=4, lr=1e-4), quiet())
    optimizer_steps.clear()
    config = make_config(blob_data, tmp_path, total_steps=8, lr=5e-4, betas=(0.8, 0.95), weight_decay=0.01)
    train(config, quiet(resume=True, allow_config_change=True))
    assert len(optimizer_steps) == 4  # steps 5-8
    for groups in optimizer_steps:
        assert [(g["lr"], g["base_lr"], tuple(g["betas"]), g["weight_decay"]) for g in groups] == [(5e-4, 5e-4, (0.8, 0.95), 0.01)]


def test_loaded_optimizer_state_keeps_its_moments_but_takes_the_configured_fine_tune_lr(blob_data, tmp_path):
    from prdit.train.trainer import build_model, build_optimizer, load_optimizer_state

    old = make_config(blob_data, tmp_path, lr=1e-3, fine_tune_lr=1e-4)
    model = build_model(old, out_channels=2)
    tuned = [name for name, _ in model.named_parameters()][:3]
    optimizer = build_optimizer(model, old, tuned)
    model(torch.randn(1, 1, 16, 16, 16), torch.full((1,), 10.0)).square().mean().backward()
    optimizer.step()
    saved = optimizer.state_dict()

    new = make_config(blob_data, tmp_path, lr=2e-3, fine_tune_lr=3e-4)
    resumed = build_optimizer(model, new, tuned)
    load_optimizer_state(resumed, saved)
    assert [(g["base_lr"], g["lr"]) for g in resumed.param_groups] == [(2e-3, 2e-3), (3e-4, 3e-4)]
    first = next(p for p in model.parameters())
    assert torch.equal(resumed.state[first]["exp_avg"], optimizer.state[first]["exp_avg"])  # Adam's moments continue


# ----------------------------------------------------------------------------------------------------------
# 3. Changing training.total_steps on resume keeps a cosine schedule continuous
# ----------------------------------------------------------------------------------------------------------


def cosine(blob_data, results: Path, total_steps: int):
    return make_config(blob_data, results, total_steps=total_steps, warmup_steps=2, lr_schedule="cosine", final_lr_fraction=0.1)


def test_extending_a_cosine_run_continues_its_lr_without_a_jump(blob_data, tmp_path, optimizer_steps, monkeypatch):
    from prdit.train.trainer import lr_factor

    planned = cosine(blob_data, tmp_path / "a", 8)
    stop_before(monkeypatch, 4)
    with pytest.raises(Interrupted):
        train(planned, quiet())
    monkeypatch.undo()
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # the same half-done run, resumed twice below
    optimizer_steps.clear()
    train(cosine(blob_data, tmp_path / "a", 16), quiet(resume=True))
    lrs = [groups[0]["lr"] for groups in optimizer_steps]
    assert len(lrs) == 12
    assert lrs[0] == pytest.approx(3e-3 * lr_factor(4, planned.training), rel=1e-12)  # where the old plan was at step 4
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # then decays on...
    assert lrs[-1] == pytest.approx(3e-4, rel=1e-12)  # ...to the final fraction at the new horizon

    stop_before(monkeypatch, 10)  # the extended run, interrupted once more, resumed without a change
    with pytest.raises(Interrupted):
        train(cosine(blob_data, tmp_path / "b", 16), quiet(resume=True))
    monkeypatch.undo()
    optimizer_steps.clear()
    train(cosine(blob_data, tmp_path / "b", 16), quiet(resume=True))
    assert [groups[0]["lr"] for groups in optimizer_steps] == lrs[4:]  # from its step-8 checkpoint  # follows the same re-planned schedule


def test_total_steps_of_a_constant_schedule_stays_freely_changeable(blob_data, tmp_path, optimizer_steps):
    train(make_config(blob_data, tmp_path, total_steps=4, warmup_steps=2), quiet())
    optimizer_steps.clear()
    train(make_config(blob_data, tmp_path, total_steps=8, warmup_steps=2), quiet(resume=True))
    assert [groups[0]["lr"] for groups in optimizer_steps] == [3e-3] * 4


# ----------------------------------------------------------------------------------------------------------
# 7. best.pt holds the best validated weights, also when the best eval step is not a checkpoint step
# ----------------------------------------------------------------------------------------------------------


def test_best_checkpoint_is_written_when_the_best_is_found(blob_data, tmp_path, monkeypatch):
    scores = iter([0.5, 0.9, 0.1, 0.8])  # validation at steps 2, 4, 6, 8: the best at step 6, no checkpoint step
    monkeypatch.setattr(trainer, "validation_mse", lambda *args, **kwargs: next(scores))
    run = train(make_config(blob_data, tmp_path, total_steps=8, logging={"eval_every": 2, "ckpt_every": 4}), quiet())
    best, last = load_checkpoint(run / "checkpoints" / "best.pt"), load_checkpoint(run)
    assert (best["step"], best["best_val"]) == (6, 0.1)
    assert last["step"] == 8 and last["best_val"] == 0.1
    assert not torch.equal(best["ema"]["local_denoiser.out.weight"], last["ema"]["local_denoiser.out.weight"])
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*.pt")) == ["step-0000004.pt", "step-0000008.pt"]


# ----------------------------------------------------------------------------------------------------------
# 8. DDP: every rank's EMA starts from rank 0's weights; only rank 0 validates
# ----------------------------------------------------------------------------------------------------------

DDP_PROBE = """
import sys
import torch
import torch.distributed as dist
from prdit.config import load_config
from prdit.train import trainer

validations, runs = [], []
validation_mse, prepare_run = trainer.validation_mse, trainer.prepare_run
trainer.validation_mse = lambda *args, **kwargs: validations.append(1) or validation_mse(*args, **kwargs)
trainer.prepare_run = lambda *args, **kwargs: runs.append(prepare_run(*args, **kwargs)) or runs[-1]
trainer.train(load_config(sys.argv[1]), trainer.TrainOptions(progress=False))
rank = dist.get_rank()
torch.save({"ema": runs[0].ema.state_dict(), "model": runs[0].model.state_dict(), "validations": len(validations)},
           f"{sys.argv[2]}/rank{rank}.pt")
dist.destroy_process_group()
"""


def test_every_ddp_rank_keeps_the_same_ema_and_only_rank_0_validates(blob_data, tmp_path):
    config_path, probe = tmp_path / "ddp.yaml", tmp_path / "probe.py"
    save_config(make_config(blob_data, tmp_path / "runs", total_steps=2, logging={"eval_every": 1, "ckpt_every": 2}), config_path)
    probe.write_text(DDP_PROBE)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(probe), str(config_path), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key
    for key, value in ranks[0]["ema"].items():
        assert torch.equal(value, ranks[1]["ema"][key]), key
    assert [r["validations"] for r in ranks] == [2, 0]
