"""Two-stage PRDiT training: stage 1 trains the local denoiser (depth 0); stage 2 freezes it and trains the
global residual DiT on top. One loop serves both, on one CPU or many GPUs (torchrun + DDP)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, cast

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from prdit import __version__
from prdit.checkpoint import CheckpointMeta, LoadReport, load_checkpoint, load_pretrained, write_best, write_checkpoint
from prdit.config import Config, TrainingConfig, config_differences, config_from_dict, save_config, with_defaults
from prdit.data.dataset import VolumeDataset, build_datasets, ensure_phantom_data, mapping_from_config
from prdit.data.intensity import IntensityMapping
from prdit.diffusion import Diffusion, create_diffusion
from prdit.errors import ConfigError, PrditError
from prdit.io import ensure_writable, remove_temp_files
from prdit.models import PRDiT, create_model
from prdit.runs import has_checkpoint, is_sharded_checkpoint, new_run_dir, resolve_latest, resume_run_dir
from prdit.runtime import autocast_for, describe_precision, enable_tf32
from prdit.train.batches import StepBatchSampler, StreamDataset, batch_layout, noise_generator, split_batch
from prdit.train.distributed import DistInfo, all_gather_objects, all_reduce_mean, barrier, setup_distributed
from prdit.train.ema import ema_decay_at, update_ema
from prdit.train.logger import RunLogger, plot_loss_curve
from prdit.train.parallel import full_norm, gradient_sync, wrap_model
from prdit.train.sharded import load_sharded, save_sharded


@dataclass
class TrainOptions:
    """The command-line switches of ``train.py`` / ``prdit train``."""

    resume: bool = False
    debug: bool = False
    from_scratch: bool = False
    init_from: str | None = None
    run_dir: str | None = None
    progress: bool = True
    allow_config_change: bool = False


# Settings a resumed run may change and still continue exactly (everything else needs --allow-config-change).
RESUME_SAFE_KEYS = ("training.total_steps", "training.activation_checkpointing", "data.num_workers", "logging.", "output.")


def check_resume_config(saved: dict, config: Config, run_dir: Path, allow: bool) -> dict[str, tuple]:
    """The settings changed since the run's checkpoint; refuses those that break an exact resume unless ``allow``."""
    changes = config_differences(with_defaults(saved), config.to_dict())
    breaking = [key for key in changes if not key.startswith(RESUME_SAFE_KEYS)]
    if breaking and not allow:
        shown = ", ".join(f"{key} {changes[key][0]!r} -> {changes[key][1]!r}" for key in breaking[:4])
        more = f" and {len(breaking) - 4} more" if len(breaking) > 4 else ""
        raise ConfigError(
            f"--resume_training: {run_dir} was trained with other settings ({shown}{more}); an exact resume needs "
            "the same ones: drop those overrides, or pass --allow-config-change to continue with them (logged in the run)"
        )
    return changes


def debug_config(config: Config) -> Config:
    """A tiny run of the same model and data: few steps, small batches, frequent logging, its own results folder."""
    values = config.to_dict()
    values["training"].update(total_steps=min(config.training.total_steps, 8), global_batch_size=2, micro_batch_size=1)
    values["logging"].update(log_every=1, ckpt_every=4, eval_every=4, num_preview_samples=1)
    if config.data.dataset == "phantom":  # a folder of its own: 8 debug phantoms must not become the real dataset
        values["data"]["phantom"]["num"] = min(config.data.phantom.num, 8)
        values["data"]["root"] = config.data.root.rstrip("/") + "-debug"
    values["output"]["results_dir"] = str(Path(config.output.results_dir) / "debug")
    return config_from_dict(values, "debug config")


# ----------------------------------------------------------------------------------------------------------
# State that makes a run reproducible
# ----------------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)), "pos": numpy_state["state"]["pos"]},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    np.random.set_state(
        {"bit_generator": "MT19937", "state": {"key": state["numpy"]["key"].numpy().astype(np.uint32), "pos": state["numpy"]["pos"]},
         "has_gauss": 0, "gauss": 0.0}
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------------
# Model, optimiser and stage handling
# ----------------------------------------------------------------------------------------------------------


def build_model(config: Config, out_channels: int) -> PRDiT:
    return create_model(
        config.model.name,
        input_size=config.data.image_size,
        in_channels=config.model.in_channels,
        out_channels=out_channels,
        stride=config.model.stride,
        grad_checkpoint=config.training.activation_checkpointing,
        init_gain=config.model.init_gain,
        label_channels=len(config.model.condition.labels),
        attributes=len(config.model.condition.attributes),
    )


def initialise_from_pretrained(model, config: Config, options: TrainOptions) -> LoadReport | None:
    """Stage 2 starts from a stage-1 (or lower-resolution) checkpoint and freezes the local denoiser."""
    path = options.init_from or config.model.pretrained_path
    if options.from_scratch or path is None:
        if model.depth > 0 and not options.from_scratch:
            raise ConfigError(
                f"{model.name} is a stage-2 model: set model.pretrained_path to the stage-1 run (or checkpoint), "
                "or pass --from_scratch to train every part from random initialisation"
            )
        return None
    report = load_pretrained(model, path, weights=config.model.pretrained_weights)
    check_pretrained_intensity(report, config, path, options.allow_config_change)
    if model.depth > 0 and config.model.freeze_local:
        model.freeze_local_denoiser()
    return report


def check_pretrained_intensity(report: LoadReport, config: Config, path, allow: bool) -> None:
    """Refuse weights trained on another HU -> model-space mapping: the loaded (for stage 2: frozen) network would
    see rescaled intensities. ``allow`` (``--allow-config-change``) continues anyway, to re-learn the scale."""
    if report.intensity is None:
        return
    trained, here = IntensityMapping.from_dict(report.intensity), mapping_from_config(config.data)
    if trained.definition() == here.definition():
        return
    if not allow:
        raise ConfigError(
            f"{path} was trained on {trained.describe()}, but this run maps {here.describe()}: set data.hu_window "
            f"(and data.intensity) to match, or pass --allow-config-change to re-learn the intensity scale on purpose"
        )
    print(f"[prdit] note: {path} was trained on {trained.describe()}; this run maps {here.describe()} (allowed)")


def build_optimizer(model, config: Config, fine_tuned: list[str]) -> torch.optim.Optimizer:
    """AdamW; trainable weights loaded from a checkpoint (``fine_tuned``) use ``fine_tune_lr``, new ones the full LR."""
    loaded = set(fine_tuned)
    fine_lr = config.training.fine_tune_lr or config.training.lr
    fresh: list[torch.nn.Parameter] = []
    tuned: list[torch.nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (tuned if name in loaded else fresh).append(parameter)
    groups = [{"params": fresh, "lr": config.training.lr, "base_lr": config.training.lr}]
    if tuned:
        groups.append({"params": tuned, "lr": fine_lr, "base_lr": fine_lr})
    fused = next(model.parameters()).device.type in ("cuda", "cpu")  # CPU: 4-10x faster than foreach, no temporaries
    return torch.optim.AdamW(
        groups, betas=config.training.betas, weight_decay=config.training.weight_decay, fused=fused or None,
        foreach=None if fused else True,
    )


def load_optimizer_state(optimizer: torch.optim.Optimizer, load: dict | Callable[[], object]) -> None:
    """Adam's moments and step counts from a checkpoint's optimiser state (or what ``load()`` loads, e.g. a sharded
    checkpoint); the hyperparameters (LR, betas, weight decay) stay the configured ones, so a resumed run with a
    new ``training.lr`` uses it (as nanoGPT)."""
    configured = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    if callable(load):
        load()
    else:
        optimizer.load_state_dict(load)
    for group, settings in zip(optimizer.param_groups, configured):
        group.update(settings)


@torch.no_grad()
def validation_mse(
    model, diffusion, volumes: torch.Tensor, noise_level: float, seed: int, autocast, timestep: float | None = None
) -> float:
    """MSE of x0_hat against x0 at a fixed noise level (or network ``timestep``) and fixed noise: a cheap,
    comparable denoising score."""
    generator = torch.Generator(device=volumes.device).manual_seed(seed)
    noise = torch.randn(volumes.shape, generator=generator, device=volumes.device)
    level_timestep = diffusion.noise_level_timestep(noise_level) if timestep is None else timestep
    timesteps = torch.full((volumes.shape[0],), level_timestep, device=volumes.device)
    x_t = diffusion.q_sample(volumes, timesteps, noise)
    with autocast:
        x0_hat = diffusion.predict_x0(model, x_t, timesteps)
    return float(torch.mean((x0_hat.float() - volumes) ** 2))


def save_previews(model, diffusion, train_set, run_dir: Path, step: int, count: int, device, autocast,
                  write: bool = True) -> Path:
    """Sample ``count`` preview volumes and save them as one picture (``write=False``: sample only, as the ranks
    of a sharded model that are not the one writing)."""
    from prdit.preview import save_grid

    generator = torch.Generator(device=device).manual_seed(0)
    shape = (count, model.in_channels) + (train_set.image_size,) * 3
    with torch.no_grad(), autocast:
        samples = diffusion.sample(model, shape, generator=generator, progress=False)
    path = run_dir / "previews" / f"step-{step:07d}.png"
    if not write:
        return path
    hu = train_set.mapping.to_hu(samples.float()[:, 0].cpu().numpy())
    return save_grid(list(hu), path, spacing=train_set.spacing, titles=[f"step {step}"] * count)


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One training run between steps: what :func:`prepare_run` builds and the loop updates."""

    config: Config
    info: DistInfo
    run_dir: Path
    diffusion: Diffusion
    model: PRDiT  # the network itself (checkpoints, EMA)
    network: torch.nn.Module  # what the loss calls: the model, DDP-wrapped and/or compiled
    ddp: DistributedDataParallel | None  # the DDP wrapper under torchrun (its no_sync skips all-reduces)
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_set: VolumeDataset
    sampler: StepBatchSampler
    batches: Iterator[torch.Tensor]
    autocast: AbstractContextManager
    logger: RunLogger
    eval_volumes: torch.Tensor
    fine_tuned: list[str]
    trainable: list[torch.nn.Parameter]
    lr_plan: LRPlan
    start_step: int = 0
    best_val: float = math.inf
    running_loss: float | None = None
    skipped: int = 0
    bad_in_a_row: int = 0
    started: float = field(default_factory=time.perf_counter)  # restarted when the loop starts


def prepare_run(config: Config, options: TrainOptions) -> Run:
    """Data, model, EMA and optimiser, fresh (from a pretrained stage if configured) or resumed, and the run folder."""
    info = setup_distributed(config.training.device)
    seed_everything(config.training.seed + info.rank)
    tcfg = config.training
    if info.is_main:
        print(f"[prdit] {describe_precision(tcfg.precision, info.device)}", flush=True)
    if info.is_main:  # before any data is generated or read
        ensure_writable(config.output.results_dir, "output.results_dir")
    if config.data.dataset == "phantom" and info.is_main:
        ensure_phantom_data(config.data, progress=options.progress, labels=config.model.condition.enabled and not config.data.labels)
    barrier(info)
    train_set, val_set = build_datasets(config.data, seed=tcfg.seed, progress=options.progress, condition=config.model.condition)
    diffusion = create_diffusion(config.diffusion)
    model = build_model(config, diffusion.model_out_channels).to(info.device)

    start_step, best_val, report, running_loss, skipped = 0, math.inf, None, None, 0
    run_dir, state, changes, latest = None, None, {}, None
    if options.resume:
        # Every rank looks (an error stops them all); rank 0's answer wins, should a shared filesystem show
        # another node a stale listing.
        found = Path(options.run_dir) if options.run_dir else resume_run_dir(config)
        run_dir = Path(all_gather_objects(str(found), info)[0])
        if info.is_main and (stale := remove_temp_files(run_dir, run_dir / "checkpoints", run_dir / "previews")):
            print(f"[prdit] removed {len(stale)} unfinished temporary file(s) of an interrupted write: {', '.join(p.name for p in stale)}")
        newest = str(resolve_latest(run_dir / "checkpoints")) if has_checkpoint(run_dir) else None
        if (chosen := all_gather_objects(newest, info)[0]) is not None:
            latest = Path(chosen)  # a sharded one: its tensors load after sharding
            state = load_checkpoint(latest, map_location=info.device, tensors=not is_sharded_checkpoint(latest))
            changes = check_resume_config(state.get("config") or {}, config, run_dir, options.allow_config_change)
        elif info.is_main:
            print(f"[prdit] {run_dir} stopped before its first checkpoint: training it again from step 0")
    if state is not None and run_dir is not None:  # a checkpoint is only ever read from a named run folder
        if "model" in state:  # a sharded checkpoint's tensors are read into the shards below
            if tcfg.parallel == "fsdp" and info.enabled:
                raise ConfigError(f"{latest} is a single-file (DDP) checkpoint; resume this run with training.parallel=ddp")
            model.load_state_dict(state["model"])
        resumed = CheckpointMeta.from_dict(state.get("meta"), run_dir / "checkpoints")
        if resumed.local_frozen:
            model.freeze_local_denoiser()
        fine_tuned = resumed.fine_tuned
        start_step, best_val = state["step"], state["best_val"]
        running_loss, skipped = state.get("running_loss"), state.get("skipped", 0)
    else:
        report = initialise_from_pretrained(model, config, options)
        fine_tuned = report.loaded if report else []
        if run_dir is None:
            run_dir = Path(all_gather_objects(str(new_run_dir(config)) if info.is_main else None, info)[0])
    assert run_dir is not None  # a resumed run names its folder; a new one has just made it
    if info.is_main:
        save_config(config, run_dir / "config.yaml")
        if report:
            print(f"[prdit] initialised from {options.init_from or config.model.pretrained_path}: {report.summary()}")
        for key, (old, new) in changes.items():
            print(f"[prdit] resuming at step {start_step} with {key} {old!r} -> {new!r}")
    logger = RunLogger(run_dir, info.is_main, config.logging.tensorboard, resume_step=start_step if options.resume else None)
    if changes:
        logger.log({"step": start_step, "config_changes": {key: list(values) for key, values in changes.items()}})

    # Wrapping broadcasts rank 0's weights to every rank, so the EMA is copied after it (all ranks then agree).
    network, ddp, ema = wrap_model(model, tcfg.parallel, tcfg.precision, info)
    optimizer = build_optimizer(model, config, fine_tuned)
    lr_plan = LRPlan(tcfg.total_steps)
    if state is not None and latest is not None:
        if "model" in state:
            ema.load_state_dict(state["ema"])
            load_optimizer_state(optimizer, lambda: optimizer.load_state_dict(state["optimizer"]))
        else:
            load_optimizer_state(optimizer, lambda: load_sharded(latest, model, ema, optimizer, info))
        lr_plan = resumed_lr_plan(state, tcfg)
    if tcfg.compile:
        network = cast(torch.nn.Module, torch.compile(network))
    enable_tf32(info.device)
    micro_batch, _ = batch_layout(tcfg.global_batch_size, info.world_size, tcfg.micro_batch_size)
    sampler = StepBatchSampler(tcfg.global_batch_size, info.rank, info.world_size, micro_batch, start_step, tcfg.total_steps)
    loader = DataLoader(
        StreamDataset(train_set, tcfg.seed), batch_sampler=sampler, num_workers=config.data.num_workers,
        pin_memory=info.device.type == "cuda", persistent_workers=config.data.num_workers > 0,
    )
    eval_set = val_set or train_set
    eval_volumes = torch.stack([eval_set.volume(i) for i in range(min(4, len(eval_set)))]).to(info.device)
    batches = iter(loader)  # draws its base seed from torch's RNG, as it did when the run started
    if state is not None:  # so the RNG states are restored after it: they continue exactly where they were saved
        ranks = state["rng"]
        set_rng_state(ranks[info.rank] if info.rank < len(ranks) else ranks[0])
    return Run(config, info, run_dir, diffusion, model, network, ddp, ema, optimizer, train_set, sampler, batches,
               autocast_for(tcfg.precision, info.device), logger, eval_volumes, fine_tuned,
               [p for p in model.parameters() if p.requires_grad], lr_plan, start_step, best_val, running_loss, skipped)


@dataclass(frozen=True)
class LRPlan:
    """Where the cosine decay runs: its progress goes linearly from ``start_progress`` at ``start_step`` (or the
    end of warm-up) to 1 at step ``total_steps - 1``. A fresh run starts from 0; a run resumed with another
    ``training.total_steps`` re-plans from the progress it had reached, so its LR continues without a jump."""

    total_steps: int
    start_step: int = 0
    start_progress: float = 0.0


def cosine_progress(step: int, tcfg: TrainingConfig, plan: LRPlan) -> float:
    begin = max(plan.start_step, tcfg.warmup_steps)
    progress = plan.start_progress + (1 - plan.start_progress) * max(0, step - begin) / max(1, plan.total_steps - 1 - begin)
    return min(1.0, progress)


def lr_factor(step: int, tcfg: TrainingConfig, plan: LRPlan | None = None) -> float:
    """The LR at ``step`` (0-based) as a fraction of the base LR: linear warm-up, then constant or cosine decay.

    A function of the step and the run's plan (stored in its checkpoints), so a resumed run follows the same schedule.
    """
    warmup = min(1.0, (step + 1) / tcfg.warmup_steps) if tcfg.warmup_steps else 1.0
    if tcfg.lr_schedule == "constant":
        return warmup
    progress = cosine_progress(step, tcfg, plan or LRPlan(tcfg.total_steps))
    final = tcfg.final_lr_fraction
    return warmup * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress)))


def resumed_lr_plan(state: dict, tcfg: TrainingConfig) -> LRPlan:
    """The checkpoint's LR plan (older checkpoints: the one of their ``training.total_steps``), re-planned from the
    resumed step when ``training.total_steps`` changed."""
    saved_total = (state.get("config") or {}).get("training", {}).get("total_steps", tcfg.total_steps)
    plan = LRPlan(**state["lr_plan"]) if state.get("lr_plan") else LRPlan(saved_total)
    if plan.total_steps == tcfg.total_steps:
        return plan
    return LRPlan(tcfg.total_steps, state["step"], cosine_progress(state["step"], tcfg, plan))


def train_step(run: Run, step: int) -> float | None:
    """One optimiser step (gradient accumulation over micro-batches); returns its loss, or None when the step was
    skipped because the loss or gradient was non-finite or the loss spiked. Logs either."""
    tcfg, info = run.config.training, run.info
    for group in run.optimizer.param_groups:
        group["lr"] = group["base_lr"] * lr_factor(step, tcfg, run.lr_plan)
    offsets = run.sampler.micro_offsets(step)
    accumulation = len(offsets)
    loss_sum = torch.zeros((), device=info.device)
    for micro, offset in enumerate(offsets):
        x0, condition = split_batch(next(run.batches), run.train_set.condition, info.device)
        generator = noise_generator(tcfg.seed, offset, info.device)
        conditioned = {}  # unconditional runs call the loss as they always did
        if condition is not None:  # dropout draws first, then the loss's times and noise from the same stream
            conditioned["condition"] = condition.dropped(run.config.model.condition.dropout, generator)
        last = micro == accumulation - 1
        with gradient_sync(run.model, run.ddp, enabled=last), run.autocast:
            loss = run.diffusion.training_loss(run.network, x0, generator=generator, **conditioned)
        (loss / accumulation).backward()
        loss_sum += loss.detach().float()
    loss_value = float(all_reduce_mean(loss_sum / accumulation, info))
    grad_norm = full_norm(torch.nn.utils.clip_grad_norm_(run.trainable, tcfg.grad_clip or math.inf))
    spike = tcfg.spike_factor > 0 and run.running_loss is not None and step > 100 and loss_value > tcfg.spike_factor * run.running_loss
    spike = spike or (tcfg.max_loss is not None and loss_value > tcfg.max_loss)
    done = step + 1
    if not (math.isfinite(loss_value) and math.isfinite(grad_norm)) or spike:
        run.optimizer.zero_grad(set_to_none=True)
        run.bad_in_a_row, run.skipped = run.bad_in_a_row + 1, run.skipped + 1
        run.logger.log({"step": done, "skipped_step": True, "loss": loss_value, "grad_norm": grad_norm, "skipped_total": run.skipped})
        if run.bad_in_a_row >= tcfg.max_bad_steps:
            raise PrditError(
                f"{run.bad_in_a_row} steps in a row had a non-finite or exploding loss (last {loss_value:.4g}); "
                "lower training.lr, check the data for NaN/extreme values, or set training.precision=fp32"
            )
        return None
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    update_ema(run.ema, run.model, ema_decay_at(step, tcfg.ema_decay, tcfg.ema_warmup))
    run.bad_in_a_row = 0
    run.running_loss = loss_value if run.running_loss is None else 0.99 * run.running_loss + 0.01 * loss_value
    if done % run.config.logging.log_every == 0 or done == tcfg.total_steps:
        elapsed = time.perf_counter() - run.started
        run.logger.log({"step": done, "loss": loss_value, "grad_norm": grad_norm, "lr": run.optimizer.param_groups[0]["lr"],
                        "steps_per_s": (done - run.start_step) / elapsed, "skipped_total": run.skipped})
    return loss_value


def condition_meta(run: Run) -> dict | None:
    """What sampling needs to know of a conditional model's condition (label values, attribute names)."""
    source, condition = run.train_set.condition, run.config.model.condition
    if source is None:
        return None
    return {"labels": {name: source.label_values[name] for name in condition.labels}, "attributes": list(condition.attributes),
            "dropout": condition.dropout}


def checkpoint_state(run: Run, step: int, tensors: bool = True) -> dict:
    """Everything a resumed run needs to continue exactly (the RNG states of every rank included); without the
    model, EMA and optimiser tensors when not ``tensors`` (a sharded checkpoint saves those apart)."""
    config, model, tcfg = run.config, run.model, run.config.training
    rng = all_gather_objects(rng_state(), run.info)
    meta = CheckpointMeta(
        model_name=model.name, input_size=config.data.image_size, stride=model.stride, in_channels=model.in_channels,
        out_channels=run.diffusion.model_out_channels, depth=model.depth, local_frozen=model.local_denoiser_frozen,
        fine_tuned=run.fine_tuned, intensity=run.train_set.mapping.to_dict(), spacing=list(run.train_set.spacing),
        diffusion=config.diffusion.model_dump(mode="json"), condition=condition_meta(run),
    )
    weights = {"model": model.state_dict(), "ema": run.ema.state_dict(), "optimizer": run.optimizer.state_dict()} if tensors else {}
    return {**weights, "step": step,
            "epoch": step * tcfg.global_batch_size // len(run.train_set), "best_val": run.best_val, "rng": rng,
            "running_loss": run.running_loss, "skipped": run.skipped, "lr_plan": asdict(run.lr_plan),
            "config": config.to_dict(), "meta": meta.to_dict(), "version": __version__}


def maybe_evaluate_and_checkpoint(run: Run, done: int) -> None:
    """Validation MSE (and stage-2 previews) every ``eval_every`` steps, a checkpoint every ``ckpt_every``, both at the
    end, and ``best.pt`` whenever validation finds a new best."""
    lcfg, tcfg, info = run.config.logging, run.config.training, run.info
    last, sharded = done == tcfg.total_steps, tcfg.parallel == "fsdp"
    is_best = False
    if done % lcfg.eval_every == 0 or last:
        # Every rank holds the same EMA: rank 0 validates and tells the others. A sharded EMA computes on all
        # ranks together (each holds a slice of it).
        together = sharded and info.enabled
        score = validation_mse(run.ema, run.diffusion, run.eval_volumes, lcfg.eval_noise_level, tcfg.seed, run.autocast,
                               lcfg.eval_timestep) if info.is_main or together else None
        val = float(all_gather_objects(score, info)[0])
        is_best, run.best_val = val < run.best_val, min(val, run.best_val)
        run.logger.log({"step": done, "val_mse": val})
        if (info.is_main or together) and run.model.depth > 0 and lcfg.num_preview_samples:
            save_previews(run.ema, run.diffusion, run.train_set, run.run_dir, done, lcfg.num_preview_samples, info.device,
                          run.autocast, write=info.is_main)
    periodic = done % lcfg.ckpt_every == 0 or last
    if periodic or is_best:  # best is written when it is found: the next checkpoint step may be worse
        save_checkpoint(run, done, periodic, is_best)


def save_checkpoint(run: Run, done: int, periodic: bool, is_best: bool) -> None:
    """The step's checkpoint (``periodic``) and/or best: under FSDP one DCP folder that every rank writes its shards
    into, else one file written by rank 0 while the others wait."""
    folder, keep_last, info = run.run_dir / "checkpoints", run.config.output.keep_last, run.info
    if run.config.training.parallel == "fsdp":
        save_sharded(checkpoint_state(run, done, tensors=False), run.model, run.ema, run.optimizer, folder, keep_last,
                     is_best, info, periodic)
        return
    state = checkpoint_state(run, done)
    if info.is_main and periodic:
        write_checkpoint(state, folder, keep_last, is_best=is_best)
    elif info.is_main:
        write_best(state, folder)
    barrier(info)


def train(config: Config, options: TrainOptions | None = None) -> Path:
    """Train one stage; returns the run directory. Works under ``torchrun`` (DDP) and as a single process."""
    options = options or TrainOptions()
    if options.debug:
        config = debug_config(config)
    run = prepare_run(config, options)
    total = config.training.total_steps
    bar = tqdm(range(run.start_step, total), initial=run.start_step, total=total, disable=not (options.progress and run.info.is_main),
               desc=f"train {run.model.name}", dynamic_ncols=True)
    run.started = time.perf_counter()
    try:
        for step in bar:
            loss = train_step(run, step)
            if loss is not None:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            maybe_evaluate_and_checkpoint(run, step + 1)
    except torch.OutOfMemoryError:
        raise PrditError(
            f"out of memory at batch {run.sampler.micro_batch} per forward on {run.info.device}: lower training.micro_batch_size "
            "(the global batch is kept by gradient accumulation), set training.activation_checkpointing=true, or use training.precision=bf16"
        ) from None
    finally:
        bar.close()
        run.logger.close()
    if run.info.is_main:
        plot_loss_curve(run.run_dir / "log.jsonl", run.run_dir / "loss.png", title=f"{run.model.name} on {config.data.dataset}")
    return run.run_dir
