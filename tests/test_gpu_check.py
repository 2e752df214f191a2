"""The GPU check (benchmarks/gpu_check.sh): its dry run on the CPU writes every step's results and the summary,
a step past its time limit is ended and reported, and its measurements compute what they say."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from prdit.diffusion import create_diffusion
from prdit.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_plan_fits_nine_minutes_and_limits_every_step():
    for plan in (gpu_check.GPU, gpu_check.DRY):
        assert set(plan.limits) == set(gpu_check.STEPS)
    assert sum(gpu_check.GPU.limits.values()) <= 9 * 60  # the budget; the device call's limit is 10 minutes
    assert gpu_check.GPU.stage_seconds * 2 < gpu_check.GPU.limits["phantom"]


def test_sampler_timing_whole_run_and_estimate_from_its_first_calls():
    model = create_model("PRDiT-T/6/2", 16, stride=4).eval()
    diffusion = create_diffusion(None)
    whole = gpu_check.time_sampler(diffusion, model, 16, "ian-2m", 2, gpu_check.DRY)
    assert whole["estimated"] is False and whole["network_calls"] == 2 and whole["seconds"] > 0
    estimate = gpu_check.time_sampler(diffusion, model, 16, "ian-pc", 1000, gpu_check.DRY, max_calls=2)
    assert estimate["estimated"] is True and estimate["timed_calls"] == 2
    assert estimate["network_calls"] == diffusion.network_calls("ian-pc", 1000)
    assert estimate["seconds"] == pytest.approx(estimate["seconds_per_call"] * estimate["network_calls"])


def test_outcomes_of_a_cut_off_pytest_run_come_from_its_verbose_lines():
    output = ("collecting ... collected 3 items\n"
              "tests/test_cuda.py::test_a[PRDiT-T/6/2-4] PASSED                [ 33%]\n"
              "tests/test_cuda.py::test_b FAILED                               [ 66%]\n"
              "tests/test_cuda.py::test_c SKIPPED (needs a CUDA GPU)           [100%]\n"
              "FAILED tests/test_cuda.py::test_b - assert 1 < 0\n")
    rows = gpu_check.verbose_outcomes(output)
    assert [(r["test"], r["outcome"]) for r in rows] == [("test_a[PRDiT-T/6/2-4]", "passed"), ("test_b", "failure"),
                                                          ("test_c", "skipped")]


def test_counted_flops_of_a_matmul():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert gpu_check.counted_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_reference_ratios_are_their_time_over_ours_and_our_peak_over_theirs():
    sides = {"prdit": {"seconds_median": 1.0, "peak_bytes": 30}, "prdit-ckpt": {"seconds_median": 1.25, "peak_bytes": 10},
             "reference": {"seconds_median": 2.0, "peak_bytes": 50}, "official": {"error": "ImportError: timm"}}
    ratios = gpu_check.reference_ratios(sides)
    assert ratios == {"prdit vs reference": {"speed": 2.0, "peak_memory": 0.6},
                      "prdit-ckpt vs reference": {"speed": 1.6, "peak_memory": 0.2}}


def test_goals_are_judged_against_the_official_code_when_it_ran():
    def reference_row(speed, memory, official):
        sides = {"prdit": {}, "official": {"seconds_median": 1.0} if official else {"error": "ImportError"}}
        base = "official" if official else "reference"
        return {"sides": sides, "ratios": {f"prdit vs {base}": {"speed": speed}, f"prdit-ckpt vs {base}": {"peak_memory": memory}}}

    large = {"rows": [{"case": "XL/12/4", "checkpointing": True, "peak_bytes": 70e9},
                      {"case": "XL/12/4", "checkpointing": False, "peak_bytes": 95e9}]}
    lines = gpu_check.goal_lines({"reference": {"rows": [reference_row(1.6, 0.8, True), reference_row(1.7, 0.6, True)]}, "large": large})
    assert "- prdit >= 1.5x the official step speed (bf16): met (x1.60, x1.70)" in lines
    assert "- prdit with checkpointing <= 0.7x the official peak memory: not met (x0.80, x0.60)" in lines
    assert "- 256^3 XL/12/4 step with checkpointing in 80 GB: met (70.0 GB)" in lines
    lines = gpu_check.goal_lines({"reference": {"rows": [reference_row(1.2, 0.5, False)]}, "large": {"rows": []}})
    assert "- prdit >= 1.5x the reference step speed (bf16): not met (x1.20)" in lines
    assert "- 256^3 XL/12/4 step with checkpointing in 80 GB: not measured" in lines


def test_recorder_keeps_every_row_written_so_far(tmp_path):
    recorder = gpu_check.Recorder(tmp_path, "large", gpu_check.DRY, dry_run=True)
    recorder.add({"case": "T/6/2", "seconds_median": 0.1})
    saved = json.loads((tmp_path / "large.json").read_text())
    assert saved["status"] == "running" and saved["rows"] == [{"case": "T/6/2", "seconds_median": 0.1}]
    assert saved["machine"]["torch"] == torch.__version__ and "cuda" in saved["machine"]


def test_a_step_past_its_limit_is_ended_and_reported(tmp_path):
    plan = dataclasses.replace(gpu_check.DRY, limits={**gpu_check.DRY.limits, "tests": 0.5})
    args = argparse.Namespace(out=str(tmp_path), dry_run=True, official_src=None, time_scale=1.0)
    records = gpu_check.run_steps(["tests"], plan, args)
    assert records[0]["status"] == "timed out" and records[0]["seconds"] < 15
    summary = gpu_check.write_summary(records, tmp_path).read_text()
    assert "| tests: CUDA-marked tests | timed out |" in summary


def test_without_cuda_the_full_check_refuses_and_points_to_the_dry_run(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gpu_check.main([]) == 2
    assert "--dry-run" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_writes_every_step_and_the_summary(tmp_path):
    env = dict(os.environ, RESULTS=str(tmp_path / "gpu"), OUT=str(tmp_path / "out"), PYTHON=sys.executable,
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    (tmp_path / "out").mkdir()
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--time-scale", "3"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = {step: json.loads((tmp_path / "gpu" / f"{step}.json").read_text()) for step in gpu_check.STEPS}
    for step, result in results.items():
        assert result["status"] == "done" and result["dry_run"] is True and result["rows"], step
        assert result["machine"]["torch"] == torch.__version__
    assert {row["outcome"] for row in results["tests"]["rows"]} <= {"passed", "skipped"}
    assert len(results["tests"]["rows"]) >= 8
    for row in results["reference"]["rows"]:
        ours = {side: row["sides"][side] for side in ("prdit", "prdit-ckpt", "reference")}
        assert all(side["seconds_median"] > 0 and side["flops"] > 0 and side["mfu"] > 0 for side in ours.values())
        if "official" in row["sides"]:  # a checkout in .official/: it runs, or says why not (timm missing here)
            assert "seconds_median" in row["sides"]["official"] or row["sides"]["official"]["error"]
        assert row["ratios"]["prdit vs reference"]["speed"] > 0
    assert sorted(row["checkpointing"] for row in results["large"]["rows"]) == [False, True]
    samplers = [(row["sampler"], row["estimated"]) for row in results["sampling"]["rows"]]
    assert samplers == [("ian-2m", False), ("ian-pc", True)]
    stages = {row["stage"]: row for row in results["phantom"]["rows"]}
    assert stages[1]["steps"] == stages[2]["steps"] == 3  # 2 calibration steps, then resumed for 1 more
    assert stages[2]["model"] == "PRDiT-T/6/2"
    assert stages["evaluation"]["w1_hu"] >= 0 and set(stages["evaluation"]["tissue_fractions"]) >= {"lung", "soft_tissue"}
    summary = (tmp_path / "gpu" / "summary.md").read_text()
    headings = ["## 1. CUDA-marked tests", "## 2. Training step", "## 3. 256^3", "## 4. Sampling", "## 5. Phantom"]
    assert [summary.index(h) for h in headings] == sorted(summary.index(h) for h in headings)
    assert (tmp_path / "out" / "summary.md").read_text() == summary
    with tarfile.open(tmp_path / "out" / "gpu_results.tar.gz") as archive:
        names = archive.getnames()
    assert {f"./{step}.json" for step in gpu_check.STEPS} <= set(names)
    assert not any("phantom_work" in name for name in names)
