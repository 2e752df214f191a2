"""Checkpoints: atomic saving, safe loading (``weights_only=True``), retention, pretrained initialisation, export.

A checkpoint is a plain dict of tensors and primitives:
``{model, ema, optimizer, step, epoch, best_val, rng, running_loss, skipped, config, meta, version}``. ``meta`` is a
:class:`CheckpointMeta` stored as a dict: what sampling needs without the training config.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch

from prdit.errors import CheckpointError
from prdit.io import atomic_write, sha256_file
from prdit.models import PRDiT
from prdit.models.official import from_official_checkpoint, is_official_checkpoint
from prdit.runs import is_sharded_checkpoint, point_latest, resolve_checkpoint

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)\.(?:pt|dcp)$")  # a file, or a sharded folder
SHARDED_STATE = "state.pt"  # the non-tensor part of a sharded checkpoint, inside its folder
ASSETS = Path(__file__).parent / "assets"  # the shipped models, named by their file stem (e.g. phantom-32)


@dataclass(frozen=True)
class CheckpointMeta:
    """What sampling needs from a checkpoint without its training config."""

    model_name: str  # registry name, e.g. PRDiT-B/6/12
    input_size: int  # voxels per side
    stride: int  # window stride of the local denoiser
    in_channels: int
    out_channels: int
    depth: int  # global DiT blocks (0: stage 1)
    local_frozen: bool  # the local denoiser was frozen (stage 2)
    fine_tuned: list[str]  # parameters loaded from a pretrained checkpoint
    intensity: dict  # IntensityMapping.to_dict()
    spacing: list[float]  # (sz, sy, sx) mm of the training volumes
    diffusion: dict  # DiffusionConfig as JSON
    # A conditional model's {"labels": {name: value in its label maps}, "attributes": [names], "dropout": p};
    # None for an unconditional one (and in checkpoints written before conditions existed).
    condition: dict | None = None

    def to_dict(self) -> dict:
        values = asdict(self)
        if values["condition"] is None:  # unconditional checkpoints keep the metadata they always had
            del values["condition"]
        return values

    @classmethod
    def from_dict(cls, meta: dict | None, source: str | os.PathLike) -> CheckpointMeta:
        """The metadata of a checkpoint's ``meta`` entry; a missing entry or key names ``source``."""
        if not meta:
            raise CheckpointError(f"{source}: the checkpoint has no 'meta' entry (model name, size); was it written by prdit?")
        missing = [f.name for f in fields(cls) if f.name not in meta and f.default is MISSING]
        if missing:
            raise CheckpointError(f"{source}: the checkpoint's 'meta' lacks {', '.join(missing)}; was it written by this prdit version?")
        return cls(**{f.name: meta[f.name] for f in fields(cls) if f.name in meta})


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file, fsync, rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    with atomic_write(path, "wb", size=_tensor_bytes(state)) as handle:
        torch.save(state, handle)
    return path


def _tensor_bytes(value) -> int:
    """Bytes of the tensors in a nested state: about the size of its checkpoint."""
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", tensors: bool = True) -> dict:
    """Load a checkpoint without running any code from it; every failure names the file.

    A sharded checkpoint (a ``.dcp`` folder, ``training.parallel: fsdp``) is read whole: full model and EMA
    weights (its optimiser state only resumes through :mod:`prdit.train.sharded`); ``tensors=False`` reads
    only its non-tensor state (step, RNG, config, meta)."""
    path = resolve_checkpoint(path)
    if not is_sharded_checkpoint(path):
        state = _read_torch_file(path, map_location)
    else:
        state = _read_torch_file(path / SHARDED_STATE, map_location)
        if tensors:
            state.update(_read_sharded_weights(path))
    if tensors and (not isinstance(state, dict) or not ({"model", "ema"} & state.keys())):
        raise CheckpointError(f"{path}: not a prdit checkpoint (no 'model' or 'ema' weights inside)")
    return state


def _read_torch_file(path: Path, map_location: str | torch.device) -> dict:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing or loading
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise CheckpointError(f"{path}: cannot read the checkpoint (not a valid pickle: {str(error)[:200]}); it may be truncated") from None
        found = re.search(r"GLOBAL (\S+)", str(error))
        detail = f" (it would import {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused for safety: a pickle with code or objects{detail}, and prdit never runs code from a "
            "checkpoint; use a checkpoint written by prdit, or weights exported with `prdit export` (.safetensors)"
        ) from None
    except Exception as error:  # zip and EOF errors all mean the same to a user
        raise CheckpointError(
            f"{path}: cannot read the checkpoint ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
            "it may be truncated (an interrupted copy?) or not a prdit checkpoint"
        ) from None


def _read_sharded_weights(path: Path) -> dict:
    """The full model and EMA tensors of a DCP folder, in this process (no process group needed).

    DCP's index (``.metadata``) is a pickle: read sharded folders from your own runs only; share weights with
    ``prdit export`` (safetensors)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        reader = dcp.FileSystemReader(str(path))
        template: dict[str, dict[str, torch.Tensor]] = {}
        for key, item in reader.read_metadata().state_dict_metadata.items():
            section, _, name = key.partition(".")
            if section in ("model", "ema") and isinstance(item, TensorStorageMetadata):
                template.setdefault(section, {})[name] = torch.empty(item.size, dtype=item.properties.dtype)
        with quiet_single_process():
            dcp.load(template, storage_reader=reader, no_dist=True)
    except Exception as error:  # a missing shard file, a truncated index: one message
        raise CheckpointError(
            f"{path}: cannot read the sharded checkpoint ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
            "is every rank's file there (a copy of the whole folder)?"
        ) from None
    return template


@contextmanager
def quiet_single_process() -> Iterator[None]:
    """DCP warns when it runs without a process group, which is what reading in one process means."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def write_checkpoint(state: dict, checkpoint_dir: Path, keep_last: int, is_best: bool = False) -> Path:
    """Save ``step-NNNNNNN.pt``, point ``latest`` at it, copy to ``best.pt`` if best, keep the last ``keep_last``."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(state, checkpoint_dir / f"step-{state['step']:07d}.pt")
    point_latest(path)
    if is_best:
        write_best(state, checkpoint_dir)
    prune_checkpoints(checkpoint_dir, keep_last)
    return path


def prune_checkpoints(checkpoint_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` step checkpoints (files or sharded folders)."""
    steps = sorted(
        (int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))
    )
    for _, old in steps[:-keep_last]:
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()


def write_best(state: dict, checkpoint_dir: Path) -> Path:
    """Save ``best.pt``: the weights of the best validation so far (also between checkpoint steps)."""
    return save_checkpoint(state, checkpoint_dir / "best.pt")


# ----------------------------------------------------------------------------------------------------------
# Pretrained initialisation (stage 1 -> stage 2, 128^3 -> 256^3)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What happened to each parameter of the model when pretrained weights were loaded."""

    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # in the model, not in the checkpoint: keep their fresh init
    reshaped: list[str] = field(default_factory=list)  # in both with different shapes: fresh init
    unused: list[str] = field(default_factory=list)  # in the checkpoint, not in the model
    intensity: dict | None = None  # the HU -> model-space mapping the weights were trained with (prdit checkpoints)

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} loaded", f"{len(self.new)} new"]
        if self.reshaped:
            parts.append(f"{len(self.reshaped)} reshaped (re-initialised): {', '.join(self.reshaped[:4])}")
        if self.unused:
            parts.append(f"{len(self.unused)} unused: {', '.join(self.unused[:4])}")
        return ", ".join(parts)


def shipped_models() -> dict[str, Path]:
    """The models shipped in ``prdit/assets``: {name: .safetensors path}."""
    return {path.name.removesuffix(".safetensors"): path for path in sorted(ASSETS.glob("*.safetensors"))}


def resolve_pretrained(path: str | os.PathLike) -> Path | str:
    """What ``--init-from`` / ``model.pretrained_path`` names: a checkpoint, a run folder or run pattern (left to
    :func:`load_checkpoint`), an exported ``.safetensors`` file, a bundle folder holding one, an official checkpoint,
    or a shipped model by name (``phantom-32``); anything else is a one-line :class:`CheckpointError`."""
    text = str(path)
    if any(char in text for char in "*?["):
        return text
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        exported = sorted(candidate.glob("*.safetensors"))
        if len(exported) == 1 and not (candidate / "checkpoints").is_dir():
            return exported[0]  # a bundle written by `prdit export --bundle`
        return candidate
    shipped = shipped_models()
    if text in shipped:
        return shipped[text]
    raise CheckpointError(
        f"{text}: not found; give a run folder, a checkpoint (.pt), an exported .safetensors file (or its bundle folder), "
        f"an official checkpoint, or a shipped model: {', '.join(shipped) or 'none installed'}"
    )


def load_pretrained(model: PRDiT, path: str | os.PathLike, weights: str = "ema") -> LoadReport:
    """Copy the matching tensors of a checkpoint into ``model``; everything else keeps its fresh initialisation.

    ``path`` is anything :func:`resolve_pretrained` accepts: a checkpoint or run folder, an exported ``.safetensors``
    model, an official checkpoint or a shipped model's name (to fine-tune it). Refuses (naming the differing keys) a checkpoint that shares no tensor with the model, or that would leave
    part of the local denoiser unloaded: that means another architecture, not a stage-1 -> stage-2 handoff.
    """
    path = resolve_pretrained(path)
    if str(path).endswith(".safetensors"):
        state = load_exported(path)
    else:
        state = load_checkpoint(path)
        if is_official_checkpoint(state):  # a stage-1 checkpoint of the paper's own code
            state = from_official_checkpoint(state)
    source = state.get(weights) or state.get("model")
    if source is None:
        raise CheckpointError(f"{path}: no '{weights}' weights in the checkpoint")
    target = model.state_dict()
    # A converted official checkpoint's intensity is the official per-volume min-max: checked like a prdit one.
    report = LoadReport(intensity=state.get("meta", {}).get("intensity"))
    for key, tensor in target.items():
        if key not in source:
            report.new.append(key)
        elif source[key].shape != tensor.shape:
            report.reshaped.append(f"{key} {tuple(source[key].shape)}->{tuple(tensor.shape)}")
        else:
            report.loaded.append(key)
    report.unused = [key for key in source if key not in target]
    local_prefixes = tuple(f"{name}." for name in model.local_module_names)
    mismatched_local = [k for k in report.reshaped + report.new if k.startswith(local_prefixes)]
    if not report.loaded or mismatched_local:
        described = ", ".join((mismatched_local or report.reshaped or report.new)[:6])
        source_name = state.get("meta", {}).get("model_name", "unknown")
        raise CheckpointError(
            f"{path}: checkpoint of {source_name} does not fit {getattr(model, 'name', type(model).__name__)}; "
            f"differing keys: {described}"
        )
    with torch.no_grad():
        for key in report.loaded:
            target[key].copy_(source[key])
    return report


# ----------------------------------------------------------------------------------------------------------
# Exported weights: a small safetensors file for sharing and sampling (no optimizer, no code, no pickle)
# ----------------------------------------------------------------------------------------------------------


def export_weights(
    checkpoint: str | os.PathLike, out_path: str | os.PathLike, weights: str = "ema", half: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write one set of weights of a checkpoint (fp16 by default) + its ``meta`` as a ``.safetensors`` file."""
    source = resolve_checkpoint(checkpoint)
    return export_state(load_checkpoint(source), source, out_path, weights, half, overwrite)


def export_state(
    state: dict, source: Path, out_path: str | os.PathLike, weights: str = "ema", half: bool = True, overwrite: bool = False,
) -> Path:
    """Write one set of weights of a loaded checkpoint ``state`` (read from ``source``) as ``.safetensors``."""
    from safetensors.torch import save

    if weights not in state:
        raise CheckpointError(f"{source}: no '{weights}' weights to export (it has: {', '.join(k for k in ('model', 'ema') if k in state)})")
    tensors = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in state[weights].items()}
    metadata = {"prdit_meta": json.dumps(state.get("meta", {})), "prdit_config": json.dumps(state.get("config", {})),
                "step": str(state.get("step")), "weights": weights,
                "source_sha256": sha256_file(source), "version": str(state.get("version"))}
    out_path = Path(out_path)
    with atomic_write(out_path, "wb", overwrite=overwrite) as handle:
        handle.write(save(tensors, metadata=metadata))
    return out_path


def load_exported(path: str | os.PathLike) -> dict:
    """A checkpoint-shaped dict ``{<weights>: fp32 tensors, weights, meta, config, step}`` from an exported ``.safetensors`` file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot read the weights file ({str(error)[:200]}); it may be truncated") from None
    if "prdit_meta" not in metadata:
        raise CheckpointError(f"{path}: no prdit metadata inside; export it with `prdit export`")
    weights = metadata.get("weights", "ema")
    try:
        meta = json.loads(metadata["prdit_meta"])
        config = json.loads(metadata.get("prdit_config", "{}"))
        step = int(metadata["step"]) if metadata.get("step", "None") != "None" else None
    except ValueError as error:
        raise CheckpointError(f"{path}: malformed prdit metadata ({error}); export it again with `prdit export`") from None
    return {weights: {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, "weights": weights,
            "meta": meta, "config": config, "step": step}

