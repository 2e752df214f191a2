"""Sampling: a checkpoint -> CT volumes in Hounsfield units, as NIfTI files 3D Slicer opens with the right geometry.

>>> import prdit
>>> pipeline = prdit.load_pipeline("results/002-PRDiT-B-12-4")      # a run folder or a checkpoint file
>>> volumes = pipeline.sample(4, seed=0)                             # [4, 1, D, H, W] in HU
>>> pipeline.save_nifti(volumes, "samples/")

Every volume depends only on its own seed: the same seed gives the same volume whatever the batch size, the
number of processes or the device order (bit for bit at fp32; under bf16 autocast, the default on GPUs and on CPUs
with native bf16, to about 1 HU, since bf16 kernels block their sums by batch size).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection

import numpy as np
import torch
from tqdm.auto import tqdm

from prdit import __version__
from prdit.checkpoint import CheckpointMeta, load_checkpoint, load_exported
from prdit.conditioning import SampleCondition, build_condition
from prdit.config import DiffusionConfig
from prdit.data.intensity import IntensityMapping
from prdit.diffusion import Diffusion, create_diffusion
from prdit.errors import CheckpointError, PrditError
from prdit.io import atomic_write_text, ensure_writable, load_volume, save_nifti, sha256_file
from prdit.models import GuidedModel, PRDiT, create_model
from prdit.models.official import from_official_checkpoint, is_official_checkpoint
from prdit.runs import resolve_checkpoint
from prdit.runtime import autocast_for, resolve_device, resolve_precision

ASSETS = Path(__file__).parent / "assets"
#: Weights shipped inside the package, by the name ``--pretrained`` takes.
PRETRAINED: dict[str, Path] = {
    "phantom": ASSETS / "phantom-32.safetensors",  # unconditional PRDiT-T/6/4, 32^3 phantoms
    "phantom-mask": ASSETS / "phantom-mask-32.safetensors",  # conditional on label maps and attributes (docs/conditional.md)
}


def pretrained_weights(name: str) -> Path:
    """The shipped weights file of a ``--pretrained`` name."""
    if name not in PRETRAINED:
        raise PrditError(f"unknown pretrained model {name!r}; shipped: {', '.join(PRETRAINED)}")
    if not PRETRAINED[name].is_file():
        raise PrditError(f"{PRETRAINED[name]}: the shipped weights of {name!r} are missing from this installation")
    return PRETRAINED[name]


def volume_name(seed: int) -> str:
    return f"sample_{seed:06d}"


@dataclass
class Pipeline:
    """A trained PRDiT with its diffusion process and intensity mapping, ready to sample HU volumes."""

    model: PRDiT
    diffusion: Diffusion
    mapping: IntensityMapping
    spacing: tuple[float, float, float]
    input_size: int
    device: torch.device
    checkpoint: Path
    checkpoint_sha256: str
    weights: str = "ema"
    precision: str = "auto"
    info: dict = field(default_factory=dict)
    condition_spec: dict | None = None  # a conditional model's label values and attribute names (meta.condition)

    def initial_noise(self, seed: int) -> torch.Tensor:
        """The starting noise of the volume with this seed (drawn on the CPU so every device agrees)."""
        generator = torch.Generator().manual_seed(seed)
        shape = (1, self.model.in_channels) + (self.input_size,) * 3
        return torch.randn(shape, generator=generator)

    def condition(
        self, mask: str | os.PathLike | np.ndarray | None = None, attributes: dict[str, float] | None = None,
        guidance_scale: float | None = None,
    ) -> SampleCondition | None:
        """A checked sampling condition for this model (None when nothing is asked for); see :mod:`prdit.conditioning`."""
        return build_condition(self.condition_spec, (self.input_size,) * 3, self.spacing, mask, attributes, guidance_scale,
                               self.model.name)

    def network(self, batch: int, condition: SampleCondition | None) -> torch.nn.Module:
        """What the sampler calls: the model, or the model under classifier-free guidance with ``condition``."""
        if condition is None:
            return self.model
        assert self.condition_spec is not None  # build_condition refuses conditions for unconditional models
        return GuidedModel(self.model, condition.tensors(self.condition_spec, batch, self.device), condition.guidance_scale)

    @torch.inference_mode()  # no autograd bookkeeping at all during sampling (faster than no_grad)
    def sample_model_space(
        self, seeds: list[int], steps: int | None = None, sampler: str | None = None, progress: bool = False,
        return_x0: bool = False, grid: str = "prdit", condition: SampleCondition | None = None,
    ):
        """One batch of volumes in model space [-1, 1] (and the final x0_hat when ``return_x0``); ``grid="paper"``
        walks the paper code's time grid (see :meth:`prdit.diffusion.IaNDiffusion.angles`); ``condition``: from
        :meth:`condition`, for a conditional model."""
        noise = torch.cat([self.initial_noise(seed) for seed in seeds]).to(self.device)
        generators = [torch.Generator(device=self.device).manual_seed(seed + 1) for seed in seeds]
        with autocast_for(self.precision, self.device):
            result = self.diffusion.sample(
                self.network(len(seeds), condition), tuple(noise.shape), sampler=sampler, steps=steps, generator=generators,
                noise=noise, progress=progress, return_x0=return_x0, grid=grid,
            )
        return tuple(r.float() for r in result) if return_x0 else result.float()

    def sample(
        self, n: int, steps: int | None = None, sampler: str | None = None, seed: int = 0, batch_size: int | None = None,
        progress: bool = True, grid: str = "prdit", mask: str | os.PathLike | np.ndarray | None = None,
        attributes: dict[str, float] | None = None, guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """``n`` volumes in HU, [n, 1, D, H, W] on the CPU; volume i uses seed ``seed + i``. ``grid="paper"``: the
        paper code's time grid (reproduces its samplers; prdit's default grid starts at pure noise).

        A conditional model also takes ``mask`` (a label NIfTI or uint8 array on the model's grid), ``attributes``
        (``{"body_diameter_mm": 320}``) and ``guidance_scale`` (classifier-free guidance w: 0 unconditional,
        1 conditional, > 1 stronger; default :data:`prdit.conditioning.DEFAULT_GUIDANCE_SCALE`).
        """
        condition = self.condition(mask, attributes, guidance_scale)
        seeds = list(range(seed, seed + n))
        batch_size = batch_size or n
        chunks = [seeds[i : i + batch_size] for i in range(0, n, batch_size)]
        volumes = [
            self.mapping.to_hu(self.sample_model_space(chunk, steps, sampler, grid=grid, condition=condition).cpu())
            for chunk in tqdm(chunks, desc="sampling", disable=not progress or len(chunks) == 1)
        ]
        return torch.cat(volumes)

    @torch.no_grad()
    def restore(
        self, y: torch.Tensor, op, steps: int | None = None, sampler: str | None = None, seed: int = 0,
        num_samples: int = 1, guidance=None, return_std: bool = False, batch_size: int | None = None,
        progress: bool = False, return_samples: bool = False, mask: str | os.PathLike | np.ndarray | None = None,
        attributes: dict[str, float] | None = None, guidance_scale: float | None = None,
    ):
        """Reconstruct one HU volume [1, 1, D, H, W] from measurement ``y = op(x_hu)`` with this model as the prior.

        ``op`` is a :mod:`prdit.inverse` operator; ``guidance`` a :class:`prdit.inverse.DataConsistency` (or its
        number of conjugate-gradient iterations). Sample k starts from seed ``seed + k`` (as :meth:`sample`), so
        each restore depends only on its seed; with ``num_samples > 1`` the result is the posterior mean, and
        ``return_std=True`` also returns the voxelwise standard deviation over the samples (HU);
        ``return_samples=True`` returns the samples themselves, [num_samples, 1, D, H, W]. A conditional model also
        takes ``mask``, ``attributes`` and ``guidance_scale`` (as :meth:`sample`): the label map and the measurement
        then constrain the volume together.
        """
        from prdit.inverse import sample_posterior

        return sample_posterior(self, y, op, steps=steps, sampler=sampler, seed=seed, num_samples=num_samples,
                                guidance=guidance, return_std=return_std, batch_size=batch_size, progress=progress,
                                return_samples=return_samples, condition=self.condition(mask, attributes, guidance_scale))

    def sidecar(self, seed: int, sampler: str, steps: int, grid: str = "prdit", condition: SampleCondition | None = None) -> dict:
        conditioned = {} if condition is None else {"condition": condition.record(), "condition_sha256": condition.record()["sha256"]}
        return {
            "prdit_version": __version__,
            "model": self.model.name,
            "checkpoint": str(self.checkpoint),
            "checkpoint_sha256": self.checkpoint_sha256,
            "weights": self.weights,
            "sampler": sampler,
            "steps": steps,
            "time_grid": grid,
            "network_calls": self.diffusion.network_calls(sampler, steps, grid),
            "seed": seed,
            "precision": resolve_precision(self.precision, self.device),
            "intensity": self.mapping.to_dict(),
            "spacing_mm": list(self.spacing),
            "units": "HU",
            **conditioned,
            **self.info,
        }

    def save_nifti(
        self, volumes: torch.Tensor | np.ndarray, out_dir: str | os.PathLike, seeds: list[int] | None = None,
        overwrite: bool = False, sampler: str | None = None, steps: int | None = None, previews: bool = True,
        grid: str = "prdit", condition: SampleCondition | None = None,
    ) -> list[Path]:
        """Write each HU volume as ``sample_<seed>.nii.gz`` (int16, real affine) + JSON sidecar + PNG montage."""
        from prdit.preview import save_montage

        out_dir = Path(out_dir)
        volumes = np.asarray(volumes.cpu() if isinstance(volumes, torch.Tensor) else volumes)
        seeds = seeds if seeds is not None else list(range(len(volumes)))
        sampler, steps = self.diffusion.resolve(sampler, steps)
        paths = []
        for seed, volume in zip(seeds, volumes):
            hu = volume[0] if volume.ndim == 4 else volume
            path = save_nifti(out_dir / f"{volume_name(seed)}.nii.gz", hu, self.spacing, dtype=np.int16, overwrite=overwrite)
            atomic_write_text(out_dir / f"{volume_name(seed)}.json", json.dumps(self.sidecar(seed, sampler, steps, grid, condition), indent=2))
            if previews:
                save_montage(hu, out_dir / f"{volume_name(seed)}.png", spacing=self.spacing, title=f"{self.model.name} seed {seed}")
            paths.append(path)
        return paths


def _load_state(ckpt: str | os.PathLike, hu_range: tuple[float, float] | None = None) -> tuple[Path, dict]:
    exported = str(ckpt).endswith(".safetensors")
    path = Path(ckpt) if exported else resolve_checkpoint(ckpt)
    state = load_exported(path) if exported else load_checkpoint(path)
    return path, from_official_checkpoint(state, hu_range) if is_official_checkpoint(state) else state


def load_mapping(source: str | os.PathLike) -> IntensityMapping:
    """The intensity mapping a model was trained with, from its checkpoint (file, run folder, ``.safetensors``) or
    from one of its samples' JSON sidecars."""
    if str(source).endswith(".json"):
        try:
            return IntensityMapping.from_dict(json.loads(Path(source).read_text())["intensity"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise PrditError(f"{source}: not a prdit sample sidecar with an intensity mapping ({type(error).__name__})") from None
    path, state = _load_state(source)
    intensity = state.get("meta", {}).get("intensity") if isinstance(state.get("meta"), dict) else None
    if not isinstance(intensity, dict):
        raise CheckpointError(f"{path}: records no intensity mapping; was it written by prdit?")
    return IntensityMapping.from_dict(intensity)


def load_pipeline(
    ckpt: str | os.PathLike, device: str | torch.device | None = None, use_ema: bool = True, precision: str = "auto",
    hu_range: tuple[float, float] | None = None,
) -> Pipeline:
    """Load a checkpoint file, a run folder (its ``latest`` checkpoint), a run pattern, or exported ``.safetensors``.

    A checkpoint written by the paper's official ``train.py`` is recognised and converted on the fly; it carries
    no HU mapping, so samples map back to HU through ``hu_range`` (default :data:`prdit.hu.OFFICIAL_HU_RANGE`,
    recorded as assumed).
    """
    path, state = _load_state(ckpt, hu_range)
    meta = CheckpointMeta.from_dict(state.get("meta"), path)
    weights = "ema" if use_ema and state.get("ema") else "model" if state.get("model") else "ema"
    if not isinstance(state.get(weights), dict):
        raise CheckpointError(f"{path}: no model weights inside; was it written by prdit?")
    source = state["meta"].get("source")  # where a converted checkpoint came from
    device = resolve_device(device)
    try:
        diffusion = create_diffusion(DiffusionConfig.model_validate(meta.diffusion))
        condition = meta.condition or {}
        model = create_model(meta.model_name, input_size=meta.input_size, in_channels=meta.in_channels,
                             out_channels=meta.out_channels, stride=meta.stride, label_channels=len(condition.get("labels", {})),
                             attributes=len(condition.get("attributes", [])))
        mapping = IntensityMapping.from_dict(meta.intensity)
        spacing = tuple(float(s) for s in meta.spacing)
        if len(spacing) != 3 or not all(s > 0 for s in spacing):
            raise ValueError(f"spacing {meta.spacing} is not 3 positive numbers")
    except PrditError:
        raise
    except (KeyError, TypeError, ValueError) as error:  # pydantic's ValidationError is a ValueError
        detail = str(error).splitlines()[0][:200]
        raise CheckpointError(f"{path}: malformed prdit metadata ({type(error).__name__}: {detail}); was it written by prdit?") from None
    try:
        model.load_state_dict(state[weights])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit {meta.model_name}: {str(error).splitlines()[1][:300]}") from None
    model.to(device).eval().requires_grad_(False)
    sz, sy, sx = spacing
    return Pipeline(
        model=model, diffusion=diffusion, mapping=mapping, spacing=(sz, sy, sx),
        input_size=meta.input_size, device=device, checkpoint=path, checkpoint_sha256=sha256_file(path), weights=weights,
        precision=precision, info={"trained_steps": state.get("step"), **({"source": source} if source else {})},
        condition_spec=meta.condition,
    )


def sample_to_folder(
    pipeline: Pipeline, out_dir: str | os.PathLike, num_volumes: int, batch_size: int = 1, seed: int = 0,
    sampler: str | None = None, steps: int | None = None, overwrite: bool = False, rank: int = 0, world_size: int = 1,
    progress: bool = True, save_raw: bool = False, save_x0: bool = False, grid: bool = True, time_grid: str = "prdit",
    condition: SampleCondition | None = None,
) -> list[Path]:
    """Sample volumes ``seed .. seed + num_volumes - 1`` into ``out_dir``; existing ones are kept and skipped.

    With several processes, rank r takes every world_size-th seed. Samplers started independently into one folder
    share the work: each claims a seed with a lock before sampling it (see :func:`claim_seed`). A folder holding
    samples of another checkpoint or sampling setting is refused. Returns the NIfTI paths this call wrote.
    """
    out_dir = ensure_writable(out_dir, "--output-dir")
    sampler, steps = pipeline.diffusion.resolve(sampler, steps)
    seeds = list(range(seed, seed + num_volumes))[rank::world_size]
    check_one_source(out_dir, pipeline.sidecar(seed, sampler, steps, time_grid, condition), redone=seeds if overwrite else [])
    started = time.time()

    def done(s: int) -> bool:  # by an earlier run, or (with overwrite) by another sampler since this one started
        path = out_dir / f"{volume_name(s)}.nii.gz"
        return path.exists() and (not overwrite or path.stat().st_mtime >= started)

    todo = [s for s in seeds if overwrite or not done(s)]
    if len(todo) < len(seeds) and rank == 0:
        print(f"[prdit] {len(seeds) - len(todo)} volume(s) already in {out_dir}: skipped (pass --overwrite to redo them)")
    written: list[Path] = []
    by_others = 0
    bar = tqdm(total=len(todo), desc=f"sampling {pipeline.model.name} ({sampler}, {steps} steps)", unit="vol", disable=not progress)
    for wait in (False, True):  # seeds another sampler holds: come back for them at the end, in case it stopped
        held = []
        pending = iter(todo)
        while True:
            claims = {}
            for s in pending:
                if (claim := claim_seed(out_dir, s, wait)) is None:
                    held.append(s)
                elif done(s):
                    claim.release()
                    by_others += 1
                    bar.update()
                else:
                    claims[s] = claim
                if len(claims) == batch_size:
                    break
            if not claims:
                break
            chunk = list(claims)
            began = time.perf_counter()
            x, x0 = pipeline.sample_model_space(chunk, steps, sampler, progress=False, return_x0=True, grid=time_grid,
                                                condition=condition)
            pipeline.info["seconds_per_volume"] = round((time.perf_counter() - began) / len(chunk), 3)
            hu = pipeline.mapping.to_hu(x.cpu())
            written += pipeline.save_nifti(
                hu, out_dir, seeds=chunk, overwrite=overwrite, sampler=sampler, steps=steps, grid=time_grid, condition=condition
            )
            for extra, enabled, suffix in ((x, save_raw, "raw"), (x0, save_x0, "x0")):
                if enabled:
                    for s, volume in zip(chunk, extra.cpu().numpy()):
                        save_nifti(out_dir / f"{volume_name(s)}_{suffix}.nii.gz", volume[0], pipeline.spacing, overwrite=True)
            for claim in claims.values():
                claim.release()
            bar.update(len(chunk))
        todo = held
    bar.close()
    if by_others:
        print(f"[prdit] {by_others} volume(s) were sampled by another process writing into {out_dir} at the same time")
    if grid and rank == 0:
        write_grid(out_dir, pipeline.spacing)
    return written


# What makes two samples of one folder comparable: the same weights, sampler, number of steps, time grid and
# condition (sidecars written before the paper's grid existed used prdit's; unconditional samples have none).
SOURCE_KEYS = ("checkpoint_sha256", "weights", "sampler", "steps", "time_grid", "condition_sha256")
SOURCE_DEFAULTS = {"time_grid": "prdit", "condition_sha256": None}


def check_one_source(out_dir: Path, sidecar: dict, redone: Collection[int] = ()) -> None:
    """Refuse to add samples to a folder whose sidecars name another checkpoint (SHA256), weights, sampler or
    number of steps, unless this run redoes every such volume (``redone``: the seeds it overwrites)."""
    for path in sorted(out_dir.glob("sample_*.json")):
        try:
            other = json.loads(path.read_text())
            seed = int(other["seed"])
        except (OSError, ValueError, KeyError, TypeError):
            raise PrditError(f"{path}: unreadable sample sidecar; remove it (and its volume) or choose another --output-dir") from None
        values = {k: other.get(k, SOURCE_DEFAULTS.get(k)) for k in SOURCE_KEYS}
        here = {k: sidecar.get(k, SOURCE_DEFAULTS.get(k)) for k in SOURCE_KEYS}
        differ = [f"{k} {values[k]} (here: {here[k]})" for k in SOURCE_KEYS if values[k] != here[k]]
        if differ and seed not in set(redone):
            raise PrditError(
                f"{out_dir} holds samples of another model or setting ({path.name}: {', '.join(differ)}); "
                "one folder must not mix them: choose another --output-dir, or remove those samples"
            )


class SeedClaim:
    """An exclusive lock on one seed of an output folder (``.sample_<seed>.lock``), so that samplers started
    independently into one folder never work on the same volume. The kernel drops the lock of a process that
    dies, so a crash leaves no stale claim."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        self.path.unlink(missing_ok=True)  # before unlocking: a sampler that opens the file later makes its own
        os.close(self.fd)


def claim_seed(out_dir: Path, seed: int, wait: bool = False) -> SeedClaim | None:
    """Claim ``seed`` in ``out_dir``; None when another process holds it (``wait``: block until it lets go)."""
    import fcntl

    path = out_dir / f".{volume_name(seed)}.lock"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return SeedClaim(path, fd)


def write_grid(out_dir: Path, spacing: tuple[float, float, float], limit: int = 16) -> Path | None:
    """One PNG with a tile per sampled volume in ``out_dir`` (the first ``limit``)."""
    from prdit.preview import save_grid

    paths = sorted(out_dir.glob("sample_*[0-9].nii.gz"))[:limit]
    if not paths:
        return None
    return save_grid([load_volume(p).array for p in paths], out_dir / "samples_grid.png", spacing=spacing,
                     titles=[p.name.split(".")[0] for p in paths])
