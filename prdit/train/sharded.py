"""Sharded checkpoints (``training.parallel: fsdp``): torch.distributed.checkpoint (DCP) folders that a run
resumes from on any number of ranks.

    checkpoints/step-0000400.dcp/    model, EMA and optimiser tensors: DCP files, one per writing rank
        state.pt                     step, every rank's RNG state, config, meta, ... (rank 0; weights_only)
    checkpoints/latest               names the newest one, as for single-file checkpoints

Every rank writes its shards into a temporary folder; rank 0 renames it once all have finished, so a crash never
leaves a half-written checkpoint under a step's name. On load, DCP reads the pieces that each rank's shards
need: a run saved on N ranks resumes on M (a single process included). Sampling and ``prdit export`` read a
folder as a whole (:func:`prdit.checkpoint.load_checkpoint`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from prdit.checkpoint import SHARDED_STATE, load_checkpoint, prune_checkpoints, quiet_single_process, save_checkpoint
from prdit.io import TEMP_PREFIX
from prdit.runs import SHARDED_SUFFIX, point_latest
from prdit.train.distributed import DistInfo, barrier


def tensor_state(model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Model, EMA and optimiser state keyed by parameter name, sharded like the modules (DCP's input)."""
    return {"model": get_model_state_dict(model), "ema": get_model_state_dict(ema),
            "optimizer": get_optimizer_state_dict(model, optimizer)}


def save_sharded(state: dict, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer, checkpoint_dir: Path,
                 keep_last: int, is_best: bool, info: DistInfo, periodic: bool = True) -> Path:
    """Write ``step-NNNNNNN.dcp`` (every rank takes part), point ``latest`` at it and keep the last ``keep_last``;
    copy it to ``best.dcp`` if best. ``periodic=False``: write only ``best.dcp`` (a new best between checkpoint
    steps). ``state`` is the checkpoint's non-tensor part (step, RNG states, config, ...)."""
    name = f"step-{state['step']:07d}" if periodic else "best"
    final = checkpoint_dir / f"{name}{SHARDED_SUFFIX}"
    temporary = checkpoint_dir / f"{TEMP_PREFIX}{final.name}"
    if info.is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
    barrier(info)
    with quiet_single_process():
        dcp.save(tensor_state(model, ema, optimizer), checkpoint_id=temporary, no_dist=not info.enabled)
    if info.is_main:
        save_checkpoint(state, temporary / SHARDED_STATE)
        shutil.rmtree(final, ignore_errors=True)
        temporary.rename(final)
        if periodic:
            point_latest(final)
            if is_best:
                best = checkpoint_dir / f"best{SHARDED_SUFFIX}"
                shutil.rmtree(best, ignore_errors=True)
                shutil.copytree(final, best)
            prune_checkpoints(checkpoint_dir, keep_last)
    barrier(info)
    return final


def load_sharded(path: Path, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> dict:
    """Load a ``.dcp`` checkpoint into this rank's shards (any rank count); returns its non-tensor state."""
    state = tensor_state(model, ema, optimizer)
    with quiet_single_process():
        dcp.load(state, checkpoint_id=path, no_dist=not info.enabled)
    set_model_state_dict(model, state["model"])
    set_model_state_dict(ema, state["ema"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    return load_checkpoint(path, tensors=False)
