"""Run folders are numbered in creation order, found by name, and resolved to their newest checkpoint."""

import pytest
import torch

from prdit.checkpoint import load_checkpoint, save_checkpoint, write_checkpoint
from prdit.config import config_from_dict
from prdit.errors import CheckpointError, PrditError
from prdit.runs import latest_run_dir, new_run_dir, numbered_runs, resolve_checkpoint


def state_of(step: int) -> dict:
    return {"model": {"w": torch.full((1,), float(step))}, "step": step}


def config_in(results, name="PRDiT-T/6/0"):
    return config_from_dict({"model": {"name": name}, "output": {"results_dir": str(results)}}, "test")


def test_new_runs_take_the_next_number_after_the_highest(tmp_path):
    config = config_in(tmp_path)
    assert new_run_dir(config).name == "001-PRDiT-T-6-0"
    (tmp_path / "041-other").mkdir()
    (tmp_path / "notes").mkdir()
    assert new_run_dir(config).name == "042-PRDiT-T-6-0"
    assert [p.name for p in numbered_runs(tmp_path / "*-PRDiT-T-6-0")] == ["001-PRDiT-T-6-0", "042-PRDiT-T-6-0"]


def test_latest_run_is_the_newest_with_a_checkpoint(tmp_path):
    config = config_in(tmp_path)
    with pytest.raises(PrditError, match="no run of PRDiT-T-6-0 with a checkpoint"):
        latest_run_dir(config)
    first, second = new_run_dir(config), new_run_dir(config)
    write_checkpoint(state_of(1), first / "checkpoints", keep_last=1)
    assert latest_run_dir(config) == first  # the newer run has no checkpoint yet
    write_checkpoint(state_of(2), second / "checkpoints", keep_last=1)
    assert latest_run_dir(config) == second


def test_run_pattern_resolves_to_the_newest_numbered_run(tmp_path):
    for number in (2, 10):
        run = tmp_path / f"{number:03d}-PRDiT-T-6-0" / "checkpoints"
        write_checkpoint(state_of(number), run, keep_last=1)
    assert load_checkpoint(tmp_path / "*-PRDiT-T-6-0")["step"] == 10
    with pytest.raises(CheckpointError, match="no run folder matches"):
        resolve_checkpoint(tmp_path / "*-PRDiT-B-12-0")


def test_a_file_is_its_own_checkpoint(tmp_path):
    path = save_checkpoint(state_of(3), tmp_path / "any-name.pt")
    assert resolve_checkpoint(path) == path
    with pytest.raises(CheckpointError, match="no 'latest' checkpoint pointer"):
        resolve_checkpoint(tmp_path)
