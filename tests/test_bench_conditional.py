"""benchmarks/bench_conditional.py: its Dice, the conditional U-Net baseline's conditioning, and a tiny baseline run."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from benchmarks import bench_conditional as bench
from benchmarks.common import ConditionalUNet
from prdit.models import GuidedModel
from prdit.models.condition import Condition

NEEDS_BENCH = "MONAI's DiffusionModelUNet needs einops: pip install -e '.[bench]'"


def test_dice_is_twice_the_overlap_over_the_sizes() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True  # 8 voxels
    b[1:] = True  # 12 voxels, 4 shared
    assert bench.dice(a, a) == 1.0
    assert bench.dice(a, ~a) == 0.0
    assert bench.dice(a, b) == pytest.approx(2 * 4 / (8 + 12))
    assert bench.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0  # nothing asked, nothing made


def test_conditional_unet_reads_the_label_channels_and_a_dropped_map_is_no_condition() -> None:
    pytest.importorskip("einops", reason=NEEDS_BENCH)
    torch.manual_seed(0)
    model = ConditionalUNet(8, label_channels=3).eval()
    with torch.no_grad():  # MONAI starts its output convolution (and residual branches) at zero
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.1)
    x, t = torch.randn(1, 1, 16, 16, 16), torch.tensor([500.0])
    labels = Condition.from_label_map(torch.randint(0, 4, (1, 1, 16, 16, 16)), [1, 2, 3])
    with torch.no_grad():
        unconditional = model(x, t)
        dropped = model(x, t, condition=Condition(labels).null())
        conditioned = model(x, t, condition=Condition(labels))
        guided = GuidedModel(model, Condition(labels), guidance_scale=2.0)(x, t)
    assert unconditional.shape == (1, 2, 16, 16, 16)  # [eps_hat, x0_hat] for the IaN loss
    torch.testing.assert_close(dropped, unconditional)
    assert not torch.allclose(conditioned, unconditional)
    # classifier-free guidance extrapolates from the unconditional towards the conditional output
    torch.testing.assert_close(guided, unconditional + 2 * (conditioned - unconditional), atol=1e-4, rtol=1e-3)  # both passes run as one batch


@pytest.mark.slow
def test_baseline_trains_and_compares_at_tiny_sizes(tmp_path, monkeypatch) -> None:
    pytest.importorskip("einops", reason=NEEDS_BENCH)
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    overrides = [f"data.root={tmp_path / 'data'}", "data.phantom.num=4", "model.name=PRDiT-T/6/0", "training.global_batch_size=2",
                 "training.total_steps=3", "logging.log_every=1"]
    monkeypatch.setattr(sys, "argv", ["bench_conditional", "--part", "baseline", "--set", *overrides, "--baseline-dir",
                                      str(tmp_path / "unet"), "--ckpt-every", "2", "--masks", "2", "--steps", "2",
                                      "--guidance", "1", "--diversity-samples", "2", "--weights", "ema", "model",
                                      "--name", "tiny"])
    bench.main()
    assert sorted(p.name for p in (tmp_path / "unet").glob("*.pt")) == ["unet-step-0000002.pt", "unet-step-0000003.pt"]
    log = [json.loads(line) for line in (tmp_path / "unet" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in log)
    result = json.loads((tmp_path / "results" / "conditional_tiny_baseline.json").read_text())
    unet, raw, shipped = (result["contenders"][k] for k in ("unet_ema", "unet_model", "prdit_shipped"))
    assert unet["training"]["step"] == 3 and unet["training"]["batch"] == 2
    for contender in (unet, raw, shipped):
        found = contender["by_guidance"]["1.0"]
        assert set(found["dice"]) == {"lung", "body", "bone"}
        assert all(0 <= v["mean"] <= 1 for v in found["dice"].values())
        assert np.isfinite([found["hu_w1"], found["fid"], found["mmd"], found["diversity_ms_ssim_same_mask"]]).all()
    # three untrained steps cannot follow a mask; the shipped model does
    assert shipped["by_guidance"]["1.0"]["dice"]["lung"]["mean"] > unet["by_guidance"]["1.0"]["dice"]["lung"]["mean"]


def test_scratch_training_reads_steps_and_wall_time_from_the_run_log(tmp_path) -> None:
    checkpoint = tmp_path / "checkpoints" / "step-0000100.pt"
    checkpoint.parent.mkdir()
    torch.save({"step": 100}, checkpoint)
    records = [{"step": 50, "steps_per_s": 1.0}, {"step": 100, "steps_per_s": 0.5}, {"step": 100, "skipped_step": True}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert bench.scratch_training(checkpoint, 12.5) == {"step": 100, "wall_seconds": 200.0, "cpu_seconds": 12.5}


def test_merge_joins_contenders_of_one_protocol_and_refuses_two(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    shared = {"masks": 12, "held_out_seeds": [50000, 50011], "sampler": "ian-2m", "steps": 25, "guidance": [1.0],
              "ceiling_real_phantoms": {}, "floor_real_vs_real": {}}
    for name, key, minutes in (("a", "unet_ema", 3.0), ("b", "prdit_scratch_step_9_ema", 5.0)):
        (tmp_path / f"conditional_{name}_baseline.json").write_text(json.dumps({**shared, "contenders": {key: {}}, "minutes": minutes}))
    bench.merge_baselines(["a", "b"], "ab")
    merged = json.loads((tmp_path / "conditional_ab_baseline.json").read_text())
    assert sorted(merged["contenders"]) == ["prdit_scratch_step_9_ema", "unet_ema"] and merged["minutes"] == 5.0
    (tmp_path / "conditional_c_baseline.json").write_text(json.dumps({**shared, "steps": 10, "contenders": {}, "minutes": 1.0}))
    with pytest.raises(SystemExit, match="steps"):
        bench.merge_baselines(["a", "c"], "ac")
