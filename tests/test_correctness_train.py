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


# ----------------------------------------------------------------------------------------------------------
# 2. Measurement guidance and its operators run in fp32 whatever the network's precision
# ----------------------------------------------------------------------------------------------------------


def blurred_ball():
    from prdit.inverse import Deblurring

    grid = torch.stack(torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij"))
    truth = torch.where((grid - 7.5).norm(dim=0) < 5, 300.0, -800.0)[None, None]
    op = Deblurring(sigma=1.5)
    return op, op(truth)


@pytest.mark.parametrize("operator", ["deblurring", "xray"])
def test_guidance_under_bf16_autocast_computes_what_fp32_guidance_does(operator):
    from prdit.inverse import DataConsistency, SparseViewXray, measurement_guidance

    op, y = blurred_ball()
    if operator == "xray":
        op = SparseViewXray([0.0, 60.0, 120.0], (16, 16, 16))
        y = op(torch.zeros(1, 1, 16, 16, 16) - 200.0)
    guide = measurement_guidance(op, y, lambda x: 1000 * x, lambda h: h / 1000, DataConsistency(iterations=10))
    x0_hat = 0.5 * torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    fp32 = guide(x0_hat, 100.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as around a bf16 network's sampling loop
        mixed = guide(x0_hat, 100.0)
    assert mixed.dtype == torch.float32
    residual = lambda x: float((op(1000 * x) - y).square().mean().sqrt())  # noqa: E731  (HU RMS)
    assert residual(mixed) == pytest.approx(residual(fp32), rel=1e-4)
    torch.testing.assert_close(mixed, fp32, rtol=0, atol=1e-5)


def test_restore_at_bf16_precision_hands_the_operators_fp32():
    from prdit.demo import SHIPPED_WEIGHTS
    from prdit.inverse import Deblurring
    from prdit.sample import load_pipeline

    class Recording(Deblurring):
        dtypes: set = set()

        def blur(self, v):
            out = super().blur(v)
            self.dtypes.add(out.dtype)
            return out

    pipeline = load_pipeline(SHIPPED_WEIGHTS, device="cpu", precision="bf16")
    op = Recording(sigma=1.0)
    y = op(torch.full((1, 1, pipeline.input_size, pipeline.input_size, pipeline.input_size), -500.0))
    Recording.dtypes.clear()
    restored = pipeline.restore(y, op, steps=2)
    assert Recording.dtypes == {torch.float32} and torch.isfinite(restored).all()


# ----------------------------------------------------------------------------------------------------------
# 6. Guided IaN sampling on the paper's time grid (which ends with a call at phi = 0)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ian-euler", "ian-pc", "ian-2m"])
def test_guided_sampling_on_the_paper_grid_ends_at_the_guided_x0(sampler):
    from prdit.diffusion import create_diffusion
    from prdit.diffusion.testing import MixtureDenoiser

    diffusion = create_diffusion(process="ian")
    model = MixtureDenoiser(diffusion, [1.0, 1.0], [-0.5, 0.4], [0.1, 0.2])
    x, x0 = diffusion.sample(model, (2, 1, 4, 4, 4), sampler=sampler, steps=10, grid="paper", progress=False, return_x0=True,
                             generator=torch.Generator().manual_seed(0), guidance=lambda x0_hat, t: 0.5 * x0_hat)
    assert torch.isfinite(x).all()
    # the last call is at phi = 0, where x is its own clean estimate; the guided estimate is half of it
    torch.testing.assert_close(x0, 0.5 * diffusion.predict_x0(model, x, torch.zeros(2)), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# 9. Converted official checkpoints are well-formed prdit checkpoints
# ----------------------------------------------------------------------------------------------------------


def test_a_converted_official_checkpoint_has_prdit_metadata(tmp_path):
    from test_official import write_official_checkpoint

    from prdit.checkpoint import CheckpointMeta
    from prdit.models.official import from_official_checkpoint

    meta = CheckpointMeta.from_dict(from_official_checkpoint(write_official_checkpoint(tmp_path / "a.pt"))["meta"], "a.pt")
    assert meta.fine_tuned == []  # a list of parameter names, as every prdit checkpoint has
    assert isinstance(meta.local_frozen, bool) and meta.depth == 1


def test_stage2_from_an_official_stage1_checkpoint_checks_its_preprocessing(blob_data, tmp_path):
    from test_official import write_official_checkpoint

    from prdit.checkpoint import load_pretrained
    from prdit.errors import ConfigError
    from prdit.models import create_model

    write_official_checkpoint(tmp_path / "stage1.pt", name="PRDiT-XS/10/0")
    report = load_pretrained(create_model("PRDiT-XS/10/2", input_size=16), tmp_path / "stage1.pt")
    assert report.intensity is not None and report.intensity["mode"] == "paper"  # the official per-volume min-max
    config = make_config(blob_data, tmp_path / "runs", model="PRDiT-XS/10/2", total_steps=1).with_pretrained(tmp_path / "stage1.pt")
    config.model.stride = 8  # the official standard models' stride
    with pytest.raises(ConfigError, match=r"trained on per-volume min-max \(percentile 99.9\).*maps HU window"):
        train(config, quiet())
