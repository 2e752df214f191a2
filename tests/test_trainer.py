"""Training: the loss falls, a resumed run continues bit for bit, 2 DDP processes equal 1, stage 2 freezes stage 1,
non-finite steps are skipped."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from prdit.checkpoint import load_checkpoint
from prdit.config import config_from_dict, save_config
from prdit.errors import ConfigError, PrditError
from prdit.train.logger import read_log
from prdit.train.trainer import TrainOptions, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blob_data(tmp_path_factory) -> Path:
    """Twelve smooth 16^3 volumes in HU: bright blobs of varying size on a dark background."""
    folder = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(16)] * 3, indexing="ij"), -1)
    for i in range(12):
        radius = rng.uniform(3, 6)
        inside = np.linalg.norm(grid - rng.uniform(6, 10, 3), axis=-1) < radius
        volume = np.where(inside, 400.0, -800.0) + gaussian_filter(rng.normal(0, 60, (16, 16, 16)), 1)
        np.save(folder / f"blob_{i:02d}.npy", volume.astype(np.float32))
    return folder


def make_config(data: Path, results: Path, model: str = "PRDiT-T/6/0", logging: dict | None = None, **training):
    """A tiny run at fp32 (unless ``precision`` says otherwise): ``auto`` would depend on the test machine's CPU."""
    training = {"precision": "fp32", **training}
    values = {
        "data": {"dataset": "folder", "root": str(data), "image_size": 16},
        "model": {"name": model, "stride": 4},
        "training": {"global_batch_size": 4, "lr": 3e-3, "ema_decay": 0.9, "total_steps": 8, "seed": 1, **training},
        "output": {"results_dir": str(results), "keep_last": 10},
        "logging": {"log_every": 1, "ckpt_every": 4, "eval_every": 4, "num_preview_samples": 0, **(logging or {})},
    }
    return config_from_dict(values, "test config")


def quiet(**kwargs) -> TrainOptions:
    return TrainOptions(progress=False, **kwargs)


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def test_loss_falls_and_the_run_folder_is_complete(blob_data, tmp_path):
    run = train(make_config(blob_data, tmp_path, total_steps=40, warmup_steps=5, logging={"ckpt_every": 20}), quiet())
    losses = [r["loss"] for r in read_log(run / "log.jsonl") if "loss" in r]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:4])
    assert (run / "config.yaml").is_file() and (run / "loss.png").is_file()
    state = load_checkpoint(run)
    assert state["step"] == 40 and state["meta"]["model_name"] == "PRDiT-T/6/0"
    assert state["config"]["model"]["name"] == "PRDiT-T/6/0"


def test_resumed_run_continues_exactly(blob_data, tmp_path):
    straight = train(make_config(blob_data, tmp_path / "a", total_steps=8), quiet())
    interrupted = train(make_config(blob_data, tmp_path / "b", total_steps=4), quiet())
    resumed = train(make_config(blob_data, tmp_path / "b", total_steps=8), quiet(resume=True))
    assert resumed == interrupted
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert b["step"] == 8
    assert_same_weights(a["model"], b["model"])
    assert_same_weights(a["ema"], b["ema"])


def test_resume_without_a_run_says_what_to_do(blob_data, tmp_path):
    with pytest.raises(PrditError, match="--resume_training: no run of PRDiT-T-6-0"):
        train(make_config(blob_data, tmp_path), quiet(resume=True))


def test_stage2_needs_stage1_and_keeps_it_frozen(blob_data, tmp_path):
    with pytest.raises(ConfigError, match="stage-2 model: set model.pretrained_path"):
        train(make_config(blob_data, tmp_path, model="PRDiT-T/6/1"), quiet())
    stage1 = load_checkpoint(train(make_config(blob_data, tmp_path, total_steps=4), quiet()))
    config = make_config(blob_data, tmp_path, model="PRDiT-T/6/1", total_steps=4)
    stage2 = load_checkpoint(train(config.with_pretrained(tmp_path / "*-PRDiT-T-6-0"), quiet()))
    assert stage2["meta"]["local_frozen"]
    local = [k for k in stage1["ema"] if k.startswith(("time_embed.", "coarse_head.", "local_denoiser."))]
    assert local and all(torch.equal(stage2["model"][k], stage1["ema"][k]) for k in local)
    assert any(not torch.all(v == 0) for k, v in stage2["model"].items() if k.startswith("dit.final"))


def test_stage2_loads_the_configured_stage1_weights_at_the_configured_init_scale(blob_data, tmp_path):
    from prdit.train.trainer import build_model

    stage1 = load_checkpoint(train(make_config(blob_data, tmp_path, total_steps=4), quiet()))
    config = make_config(blob_data, tmp_path, model="PRDiT-T/6/1", total_steps=2).with_pretrained(tmp_path / "*-PRDiT-T-6-0")
    config.model.pretrained_weights = "model"  # the paper's code loads the raw weights
    stage2 = load_checkpoint(train(config, quiet()))
    local = [k for k in stage1["model"] if k.startswith(("time_embed.", "coarse_head.", "local_denoiser."))]
    assert any(not torch.equal(stage1["model"][k], stage1["ema"][k]) for k in local)
    assert all(torch.equal(stage2["model"][k], stage1["model"][k]) for k in local)
    config.model.init_gain = 0.5
    qkv = build_model(config, out_channels=2).dit.blocks[0].attn.qkv.weight
    assert qkv.std().item() == pytest.approx(0.5 * (2 / (128 + 384)) ** 0.5, rel=0.1)


def test_non_finite_steps_are_skipped_then_reported(blob_data, tmp_path, monkeypatch):
    from prdit.diffusion.gaussian_diffusion import IaNDiffusion

    original = IaNDiffusion.training_loss
    calls = {"n": 0}

    def sometimes_nan(self, model, x0, generator=None):
        calls["n"] += 1
        loss = original(self, model, x0, generator=generator)
        return loss * float("nan") if calls["n"] in bad_calls else loss

    monkeypatch.setattr(IaNDiffusion, "training_loss", sometimes_nan)
    bad_calls = {3}
    run = train(make_config(blob_data, tmp_path, total_steps=6), quiet())
    records = read_log(run / "log.jsonl")
    assert [r["step"] for r in records if r.get("skipped_step")] == [3]
    assert all(torch.isfinite(v).all() for v in load_checkpoint(run)["model"].values())
    bad_calls = set(range(1, 100))
    calls["n"] = 0
    with pytest.raises(PrditError, match="steps in a row had a non-finite"):
        train(make_config(blob_data, tmp_path, total_steps=12, max_bad_steps=3), quiet())


def test_losses_above_max_loss_are_skipped_like_the_papers_code(blob_data, tmp_path):
    # Blob losses are about 0.1-1; with max_loss below that, every step is skipped and the run stops with advice.
    with pytest.raises(PrditError, match="3 steps in a row"):
        train(make_config(blob_data, tmp_path, total_steps=6, max_loss=1e-6, max_bad_steps=3), quiet())
    run = train(make_config(blob_data, tmp_path / "ok", total_steps=2), quiet())  # the default 1e5 leaves them alone
    assert not any(r.get("skipped_step") for r in read_log(run / "log.jsonl"))


def test_validation_at_a_fixed_timestep_is_the_papers_best_checkpoint_score():
    from contextlib import nullcontext

    from prdit.diffusion import create_diffusion
    from prdit.diffusion.testing import MixtureDenoiser
    from prdit.train.trainer import validation_mse

    diffusion = create_diffusion(process="ian")
    model = MixtureDenoiser(diffusion, [1.0], [0.2], [0.3])
    volumes = 0.2 + 0.3 * torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    at_100 = validation_mse(model, diffusion, volumes, 0.5, seed=3, autocast=nullcontext(), timestep=100)
    noise = torch.randn(volumes.shape, generator=torch.Generator().manual_seed(3))
    t = torch.full((2,), 100.0)
    expected = torch.mean((diffusion.predict_x0(model, diffusion.q_sample(volumes, t, noise), t) - volumes) ** 2)
    assert at_100 == pytest.approx(float(expected), rel=1e-6)
    assert validation_mse(model, diffusion, volumes, 0.5, seed=3, autocast=nullcontext()) > 2 * at_100  # t = 100 is cleaner


def test_two_ddp_processes_equal_one_process_with_accumulation(blob_data, tmp_path):
    single = train(make_config(blob_data, tmp_path / "one", micro_batch_size=2, total_steps=4), quiet())
    config_path = tmp_path / "ddp.yaml"
    save_config(make_config(blob_data, tmp_path / "two", total_steps=4), config_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"),
         "--config", str(config_path), "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    two = next((tmp_path / "two").glob("*-PRDiT-T-6-0"))
    a, b = load_checkpoint(single), load_checkpoint(two)
    assert_same_weights(a["model"], b["model"], atol=1e-5)
    losses = lambda run: [r["loss"] for r in read_log(run / "log.jsonl") if "loss" in r]  # noqa: E731
    np.testing.assert_allclose(losses(single), losses(two), rtol=1e-5)


def test_debug_config_is_tiny_and_keeps_phantoms_apart(tmp_path):
    from prdit.config import load_config
    from prdit.train.trainer import debug_config

    config = load_config(ROOT / "configs" / "phantom" / "local.yaml")
    debug = debug_config(config)
    assert debug.training.total_steps <= 8 and debug.data.phantom.num <= 8
    assert debug.data.root == config.data.root + "-debug"
    assert debug.output.results_dir.endswith("debug") and debug.model.name == config.model.name


def test_cosine_schedule_warms_up_then_decays_to_the_final_fraction(blob_data, tmp_path):
    from prdit.config import TrainingConfig
    from prdit.train.trainer import lr_factor

    tcfg = TrainingConfig(warmup_steps=10, total_steps=110, lr_schedule="cosine", final_lr_fraction=0.1)
    assert lr_factor(0, tcfg) == pytest.approx(0.1)  # warm-up: (step + 1) / 10
    assert lr_factor(9, tcfg) == pytest.approx(1.0)
    assert lr_factor(59, tcfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 49 / 99)))
    assert lr_factor(109, tcfg) == pytest.approx(0.1)  # the last step reaches the final fraction
    factors = [lr_factor(s, tcfg) for s in range(9, 110)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    assert lr_factor(50, TrainingConfig(warmup_steps=10, total_steps=110)) == 1.0  # constant stays constant

    config = make_config(blob_data, tmp_path, total_steps=12, warmup_steps=2, lr_schedule="cosine")
    logged = [r["lr"] for r in read_log(train(config, quiet()) / "log.jsonl") if "lr" in r]
    expected = [3e-3 * lr_factor(s, config.training) for s in range(12)]
    assert logged == pytest.approx(expected) and logged[-1] == 0.0


def test_bf16_on_cpu_follows_the_fp32_loss_curve(blob_data, tmp_path):
    """training.precision: bf16 runs under CPU autocast and stays within bf16 rounding of the fp32 run."""
    quiet_logging = {"ckpt_every": 100, "eval_every": 100}
    runs = {p: train(make_config(blob_data, tmp_path / p, logging=quiet_logging, total_steps=4, precision=p), quiet())
            for p in ("fp32", "bf16")}
    losses = {p: np.array([r["loss"] for r in read_log(run / "log.jsonl") if "loss" in r]) for p, run in runs.items()}
    assert len(losses["bf16"]) == 4 and np.isfinite(losses["bf16"]).all()
    assert not np.array_equal(losses["bf16"], losses["fp32"])  # autocast really changed the arithmetic
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=0.05)


def test_stage2_refuses_stage1_weights_trained_on_another_hu_window(blob_data, tmp_path):
    train(make_config(blob_data, tmp_path, total_steps=2), quiet())
    config = make_config(blob_data, tmp_path, model="PRDiT-T/6/1", total_steps=1).with_pretrained(tmp_path / "*-PRDiT-T-6-0")
    config.data.hu_window = (-1000.0, 1000.0)  # the stage-1 run above mapped the default [-1000, 2000]
    with pytest.raises(ConfigError, match=r"trained on HU window \[-1000, 2000\].*maps HU window \[-1000, 1000\].*data.hu_window"):
        train(config, quiet())
    assert load_checkpoint(train(config, quiet(allow_config_change=True)))["meta"]["intensity"]["window"] == [-1000.0, 1000.0]


def test_top_level_train_calls_the_trainer_once_its_submodules_are_imported(monkeypatch):
    """Importing prdit.train.trainer binds ``prdit.train`` to the subpackage: calling it still trains."""
    import prdit
    import prdit.train.trainer as trainer

    calls = []
    monkeypatch.setattr(trainer, "train", lambda *args, **kwargs: calls.append((args, kwargs)) or Path("run"))
    assert prdit.train("config", options=None) == Path("run") and calls == [(("config",), {"options": None})]


def test_top_level_train_is_one_object_before_and_after_the_submodule_imports():
    code = ("import prdit; first = prdit.train; import prdit.train.trainer; "
            "assert prdit.train is first and callable(first), (first, prdit.train)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
