"""Checkpoints are written atomically, read safely, retained as configured, and hand stage 1 over to stage 2."""

import pytest
import torch

from prdit import checkpoint as ckpt
from prdit.errors import CheckpointError
from prdit.models import create_model
from prdit.runs import resolve_latest


def tiny(depth: int, size: int = 16):
    return create_model(f"PRDiT-T/6/{depth}", input_size=size, stride=4)


def state_of(model, step: int = 1) -> dict:
    return {"model": model.state_dict(), "ema": model.state_dict(), "step": step, "meta": {"model_name": model.name}}


def test_round_trip_and_latest_pointer_with_retention(tmp_path):
    model = tiny(0)
    for step in (1, 2, 3, 4):
        ckpt.write_checkpoint(state_of(model, step), tmp_path, keep_last=2, is_best=step == 2)
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-0000003.pt", "step-0000004.pt"]
    assert resolve_latest(tmp_path).name == "step-0000004.pt"
    assert ckpt.load_checkpoint(tmp_path / "best.pt")["step"] == 2
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded["step"] == 4
    for key, value in model.state_dict().items():
        assert torch.equal(loaded["model"][key], value)


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "step-0000001.pt"
    ckpt.save_checkpoint({"model": {"w": torch.ones(3)}, "step": 1}, path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        ckpt.save_checkpoint({"model": {"w": torch.zeros(3)}, "step": 2}, path)
    monkeypatch.undo()
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_meta_round_trips_and_missing_keys_are_named(tmp_path):
    meta = ckpt.CheckpointMeta(model_name="PRDiT-T/6/0", input_size=16, stride=4, in_channels=1, out_channels=2, depth=0,
                               local_frozen=False, fine_tuned=[], intensity={"mode": "hu"}, spacing=[1.0, 1.0, 1.0],
                               diffusion={"process": "ian"})
    path = ckpt.save_checkpoint({"model": {}, "meta": meta.to_dict()}, tmp_path / "m.pt")
    assert ckpt.CheckpointMeta.from_dict(ckpt.load_checkpoint(path)["meta"], path) == meta
    with pytest.raises(CheckpointError, match="m.pt: the checkpoint's 'meta' lacks stride"):
        ckpt.CheckpointMeta.from_dict({k: v for k, v in meta.to_dict().items() if k != "stride"}, path)
    with pytest.raises(CheckpointError, match="no 'meta' entry"):
        ckpt.CheckpointMeta.from_dict(None, path)


def test_truncated_and_foreign_files_are_reported_by_name(tmp_path):
    good = ckpt.save_checkpoint(state_of(tiny(0)), tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt: cannot read the checkpoint"):
        ckpt.load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(1)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a prdit checkpoint"):
        ckpt.load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_stage1_checkpoint_initialises_stage2_exactly(tmp_path):
    torch.manual_seed(0)
    stage1 = tiny(0)
    with torch.no_grad():  # a trained stage 1 is not zero-initialised: make its output non-trivial
        for p in stage1.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = ckpt.save_checkpoint(state_of(stage1), tmp_path / "stage1.pt")
    stage2 = tiny(2)
    report = ckpt.load_pretrained(stage2, path)
    assert report.loaded and all(k.startswith(("dit.", "fine_head.")) for k in report.new)
    x, t = torch.randn(2, 1, 16, 16, 16), torch.tensor([10.0, 900.0])
    torch.testing.assert_close(stage2(x, t), stage1(x, t), rtol=0, atol=0)


def test_other_architecture_is_refused_with_the_differing_keys(tmp_path):
    path = ckpt.save_checkpoint(state_of(create_model("PRDiT-T/10/0", input_size=16, stride=8)), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not fit PRDiT-T/6/2; differing keys: .*local_denoiser"):
        ckpt.load_pretrained(tiny(2), path)


def test_an_exported_model_initialises_a_model_to_continue_its_training(tmp_path):
    torch.manual_seed(0)
    trained = tiny(2)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = ckpt.save_checkpoint(state_of(trained), tmp_path / "run.pt")
    exported = ckpt.export_weights(path, tmp_path / "model.safetensors")
    continued = tiny(2)
    report = ckpt.load_pretrained(continued, exported)
    assert not report.new and len(report.loaded) == len(continued.state_dict())
    for key, value in continued.state_dict().items():  # the export is fp16: equal up to its rounding
        torch.testing.assert_close(value, trained.state_dict()[key].half().float(), rtol=0, atol=0)


def test_init_sources_resolve_shipped_names_and_bundle_folders_and_refuse_the_rest(tmp_path):
    shipped = ckpt.ASSETS / "phantom-32.safetensors"
    assert ckpt.resolve_pretrained("phantom-32") == shipped
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.safetensors").write_bytes(shipped.read_bytes())
    assert ckpt.resolve_pretrained(bundle) == bundle / "model.safetensors"
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert ckpt.resolve_pretrained(run) == run  # a run folder: its latest checkpoint, found by load_checkpoint
    with pytest.raises(CheckpointError, match=r"^no-such-model: not found; .* a shipped model: phantom-32"):
        ckpt.resolve_pretrained("no-such-model")


@pytest.mark.slow  # a PRDiT-T/6/4 run: about 15 s alone, minutes on a busy machine
def test_fine_tuning_the_shipped_model_by_name_starts_its_ema_at_the_loaded_weights(tmp_path):
    """The recipe's EMA warm start: after two steps the EMA is the shipped weights moved by about (1 - decay) of
    the training weights' change, not a fresh average of random weights."""
    import numpy as np

    from prdit.config import load_config
    from prdit.data.phantom import generate_phantom
    from prdit.io import save_nifti
    from prdit.train.trainer import TrainOptions, train

    for seed in range(3):
        volume, spacing = generate_phantom(32, seed=seed, dense_bone=True)
        save_nifti(tmp_path / "data" / f"dense_{seed}.nii.gz", volume, spacing, dtype=np.int16)
    config = load_config("configs/phantom/finetune.yaml", [
        "data.dataset=folder", f"data.root={tmp_path / 'data'}", "training.total_steps=2", "training.global_batch_size=2",
        "training.device=cpu", "training.precision=fp32", f"output.results_dir={tmp_path / 'results'}",
        "logging.ckpt_every=2", "logging.eval_every=2"])
    run = train(config, TrainOptions(init_from="phantom-32", progress=False))
    state = ckpt.load_checkpoint(run)
    shipped = ckpt.load_exported(ckpt.ASSETS / "phantom-32.safetensors")["ema"]
    moved = sum(float((state["model"][k] - shipped[k]).norm()) for k in shipped)
    ema_moved = sum(float((state["ema"][k] - shipped[k]).norm()) for k in shipped)
    assert moved > 0 and ema_moved < 0.02 * moved
