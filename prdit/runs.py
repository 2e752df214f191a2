"""Run folders: ``results/<NNN>-<name>/`` numbered in creation order, each with ``checkpoints/latest`` pointing at
its newest checkpoint; and how a user's "this run", "the newest run like this" or "this file" becomes one file."""

from __future__ import annotations

import os
import re
from pathlib import Path

from prdit.config import Config
from prdit.errors import CheckpointError, PrditError
from prdit.io import atomic_write_text

RUN_NUMBER = re.compile(r"^(\d+)-")  # the NNN- prefix of a run folder
LATEST = "latest"  # a text file in a checkpoint folder naming its newest checkpoint
SHARDED_SUFFIX = ".dcp"  # a sharded checkpoint (training.parallel: fsdp) is a folder step-NNNNNNN.dcp


def run_name(config: Config) -> str:
    return config.output.run_name or config.model.name.replace("/", "-")


def run_number(path: Path) -> int | None:
    match = RUN_NUMBER.match(path.name)
    return int(match.group(1)) if match else None


def new_run_dir(config: Config) -> Path:
    """``results/<NNN>-<name>/`` with the next free number."""
    root = Path(config.output.results_dir)
    root.mkdir(parents=True, exist_ok=True)
    numbers = [number for path in root.iterdir() if (number := run_number(path)) is not None]
    path = root / f"{max(numbers, default=0) + 1:03d}-{run_name(config)}"
    path.mkdir()
    return path


def numbered_runs(pattern: str | os.PathLike) -> list[Path]:
    """Run folders matching a glob such as ``results/*-PRDiT-B-12-0``, oldest first by their ``NNN-`` number."""
    pattern = Path(pattern)
    runs = [p for p in pattern.parent.glob(pattern.name) if p.is_dir()]
    return sorted(runs, key=lambda p: (run_number(p) if run_number(p) is not None else -1, p.name))


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / "checkpoints" / LATEST).is_file()


def latest_run_dir(config: Config, needed_by: str = "sampling") -> Path:
    """The most recent run of this config's name that has a checkpoint (what sampling a config reads)."""
    root = Path(config.output.results_dir)
    runs = [p for p in numbered_runs(root / f"*-{run_name(config)}") if has_checkpoint(p)]
    if not runs:
        raise PrditError(f"{needed_by}: no run of {run_name(config)} with a checkpoint under {root}/; train it first or pass --ckpt")
    return runs[-1]


def resume_run_dir(config: Config) -> Path:
    """The run ``--resume_training`` continues: the newest run of this config's name, also when it stopped before
    its first checkpoint (it then starts again from step 0), so that an older, finished run is never extended."""
    root = Path(config.output.results_dir)
    runs = numbered_runs(root / f"*-{run_name(config)}")
    if not runs:
        raise PrditError(f"--resume_training: no run of {run_name(config)} under {root}/; "
                         "start a new run without --resume_training or pass --run-dir")
    return runs[-1]


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.suffix == SHARDED_SUFFIX and path.is_dir()


def point_latest(checkpoint: Path) -> None:
    """Make ``checkpoint`` the one its folder's ``latest`` pointer names."""
    atomic_write_text(checkpoint.parent / LATEST, checkpoint.name + "\n")


def resolve_latest(folder: str | os.PathLike) -> Path:
    """The checkpoint a run folder's ``latest`` pointer names (``checkpoints/latest`` or the folder itself)."""
    folder = Path(folder)
    for candidate in (folder / LATEST, folder / "checkpoints" / LATEST):
        if candidate.is_file():
            return candidate.parent / candidate.read_text().strip()
    raise CheckpointError(f"{folder}: no '{LATEST}' checkpoint pointer in this folder or its checkpoints/ subfolder")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, a run folder (its latest checkpoint) or a run pattern such as ``results/*-PRDiT-B-12-0``
    (the highest-numbered matching run: stage-2 configs name their stage-1 run this way)."""
    text = str(path)
    if any(char in text for char in "*?["):
        runs = numbered_runs(text)
        if not runs:
            raise CheckpointError(f"{text}: no run folder matches; train that stage first or give the checkpoint path")
        path = runs[-1]
    path = Path(path)
    if path.is_dir() and not is_sharded_checkpoint(path):
        path = resolve_latest(path)
    if not (path.is_file() or is_sharded_checkpoint(path)):
        raise CheckpointError(f"{path}: checkpoint not found")
    return path
