"""``prdit sample`` (and the seed-compatible ``sample.py``): NIfTI volumes in HU from a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from prdit.cli.common import add_device_argument
from prdit.errors import PrditError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="sample CT volumes from a checkpoint: NIfTI in HU + JSON sidecar + PNG previews",
        description=(
            "Sample volumes from a trained PRDiT into --output-dir: sample_<seed>.nii.gz (int16 HU, the training data's "
            "spacing and a real affine), sample_<seed>.json (model, checkpoint SHA256, sampler, steps, seed) and "
            "sample_<seed>.png, plus samples_grid.png. Volume i uses seed --seed + i and depends only on it. Existing "
            "volumes are skipped (a rerun resumes). Multi-GPU: torchrun --nproc_per_node=N sample.py ... (ranks take "
            "disjoint seeds)."
        ),
    )
    parser.add_argument("--config", default=None, help="training config; without --ckpt its latest run is sampled")
    parser.add_argument("--ckpt", default=None, help="checkpoint file (.pt) or run folder (its latest checkpoint)")
    parser.add_argument("--pretrained", default=None, choices=["phantom", "phantom-mask"],
                        help="a shipped model instead of --ckpt: phantom (unconditional, 32^3) or phantom-mask "
                        "(conditional on --mask and --attribute; docs/conditional.md)")
    parser.add_argument("--mask", default=None, help="conditional models: label map NIfTI on the model's grid (uint8, e.g. "
                        "labels/phantom_00000.nii.gz of `prdit data phantom --labels`); its labels.json, if beside it, names its values")
    parser.add_argument("--attribute", action="append", default=None, metavar="NAME=VALUE",
                        help="conditional models: a body attribute, e.g. body_diameter_mm=320 (repeatable)")
    parser.add_argument("--guidance-scale", dest="guidance_scale", type=float, default=None,
                        help="classifier-free guidance w for --mask/--attribute: 0 unconditional, 1 conditional (default), "
                        ">1 stronger")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", default=None,
                        help="output folder (default: <run folder>/samples)")
    parser.add_argument("--num-volumes", dest="num_volumes", type=int, default=None, help="how many volumes in total (default 4)")
    parser.add_argument("--total-samples", "--total_samples", dest="total_samples", type=int, default=None,
                        help="seed-compatible name of --num-volumes (the total number of volumes)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=None, help="volumes per forward pass (default 1)")
    parser.add_argument("--num-samples", "--num_samples", dest="num_samples", type=int, default=None,
                        help="seed-compatible name of --batch-size (volumes per forward pass)")
    parser.add_argument("--sampler", default=None, help="sampler name (default: the checkpoint's diffusion default); see --list-samplers")
    parser.add_argument("--new", action="store_true", help="seed-compatible: the paper's hot predictor-corrector sampler (ian-pc)")
    parser.add_argument("--steps", "--num-sampling-steps", "--num_sampling_steps", dest="steps", type=int, default=None,
                        help="sampling steps (default: the sampler's own default); --num-sampling-steps is the paper's name")
    parser.add_argument("--grid", choices=["prdit", "paper"], default="prdit",
                        help="time grid: prdit (default; starts at pure noise) or paper (the paper code's "
                        "range(0, T, T // steps), which takes pure noise to be the state at T - T // steps: reproduces "
                        "its samplers exactly, with their error floor)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first volume (default 0)")
    parser.add_argument("--ema", dest="ema", action="store_true", default=True, help="use the EMA weights (default)")
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="use the raw training weights")
    parser.add_argument("--weights", choices=["ema", "model"], default=None, help="ema (default) or model (raw); = --ema / --no-ema")
    parser.add_argument("--hu-range", dest="hu_range", nargs=2, type=float, metavar=("LOW", "HIGH"), default=None,
                        help="official checkpoints only: the HU the model's intensity range maps back to (default -1000 1000)")
    add_device_argument(parser)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--overwrite", action="store_true", help="redo volumes that already exist in --output-dir")
    parser.add_argument("--save-raw", dest="save_raw", action="store_true", help="also write the model-space output (sample_<seed>_raw.nii.gz)")
    parser.add_argument("--save-x0", dest="save_x0", action="store_true", help="also write the final x0 prediction (sample_<seed>_x0.nii.gz)")
    parser.add_argument("--list-samplers", dest="list_samplers", action="store_true", help="print the checkpoint's samplers and exit")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--report", action="store_true", help="also write OUTPUT_DIR/report.html: a 3D slice viewer of the volumes")
    parser.set_defaults(func=_run_sample)


def _pick(args: argparse.Namespace, name: str, alias: str, default: int) -> int:
    value, seed_value = getattr(args, name), getattr(args, alias)
    if value is not None and seed_value is not None and value != seed_value:
        raise PrditError(f"--{name.replace('_', '-')} {value} and --{alias.replace('_', '-')} {seed_value} disagree; pass one of them")
    chosen = value if value is not None else seed_value if seed_value is not None else default
    if chosen < 1:
        raise PrditError(f"--{name.replace('_', '-')} must be at least 1, got {chosen}")
    return chosen


def _run_sample(args: argparse.Namespace) -> None:
    from prdit.runtime import configure_cpu_threads, describe_precision, keep_freed_memory
    from prdit.sample import load_pipeline, sample_to_folder, write_grid
    from prdit.train.distributed import barrier, setup_distributed, teardown_distributed

    configure_cpu_threads()
    keep_freed_memory()

    if args.pretrained is not None:
        if args.ckpt is not None or args.config is not None:
            raise PrditError("pass --pretrained or --ckpt/--config, not both")
        from prdit.sample import pretrained_weights

        args.ckpt = str(pretrained_weights(args.pretrained))
    if args.ckpt is None:
        if args.config is None:
            raise PrditError("pass --ckpt (a checkpoint or run folder) or --config (its latest run is sampled)")
        from prdit.config import load_config
        from prdit.runs import latest_run_dir

        args.ckpt = latest_run_dir(load_config(args.config), needed_by="sampling")
    if args.new and args.sampler not in (None, "ian-pc"):
        raise PrditError(f"--new selects the ian-pc sampler but --sampler {args.sampler} was given; pass one of them")
    sampler = "ian-pc" if args.new else args.sampler
    if args.weights is not None:
        args.ema = args.weights == "ema"
    num_volumes = _pick(args, "num_volumes", "total_samples", 4)
    batch_size = _pick(args, "batch_size", "num_samples", 1)
    info = setup_distributed(args.device)
    try:
        pipeline = load_pipeline(args.ckpt, device=info.device, use_ema=args.ema, precision=args.precision,
                                 hu_range=tuple(args.hu_range) if args.hu_range else None)
        if info.is_main and not args.list_samplers:
            print(describe_precision(pipeline.precision, pipeline.device), flush=True)
        if args.list_samplers:
            for name in pipeline.diffusion.samplers:
                default = " (default)" if name == pipeline.diffusion.default_sampler else ""
                print(f"{name}: {pipeline.diffusion.resolve(name)[1]} steps by default{default}")
            return
        if sampler is not None and sampler not in pipeline.diffusion.samplers:
            raise PrditError(f"unknown sampler {sampler!r} for this checkpoint; choose one of {', '.join(pipeline.diffusion.samplers)}")
        from prdit.conditioning import parse_attributes

        condition = pipeline.condition(args.mask, parse_attributes(args.attribute), args.guidance_scale)
        if args.pretrained is not None and args.output_dir is None:
            raise PrditError("--pretrained needs --output-dir (the shipped weights live inside the package)")
        out_dir = Path(args.output_dir) if args.output_dir else pipeline.checkpoint.parent.parent / "samples"
        written = sample_to_folder(
            pipeline, out_dir, num_volumes, batch_size=batch_size, seed=args.seed, sampler=sampler, steps=args.steps,
            overwrite=args.overwrite, rank=info.rank, world_size=info.world_size, progress=args.progress and info.is_main,
            save_raw=args.save_raw, save_x0=args.save_x0, grid=not info.enabled, time_grid=args.grid, condition=condition,
        )
        print(f"wrote {len(written)} volume(s) to {out_dir}" + (f" (rank {info.rank})" if info.enabled else ""))
        if info.enabled:  # the grid shows every rank's volumes, so it waits for all of them
            barrier(info)
            if info.is_main:
                write_grid(out_dir, pipeline.spacing)
        if args.report and info.is_main:
            from prdit.report import write_report

            report = write_report(out_dir, out_dir / "report.html", overwrite=True)
            print(f"wrote {report} ({report.stat().st_size / 1e6:.1f} MB): open it in a browser")
    finally:
        teardown_distributed()
