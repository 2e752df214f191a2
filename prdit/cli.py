"""The ``prdit`` command: one subcommand per task, each a thin door into the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prdit import __version__
from prdit.data.commands import add_data_subcommands
from prdit.errors import PrditError
from prdit.evaluation.commands import add_evaluate_subcommands


def _add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="YAML config, e.g. configs/phantom/local.yaml")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. training.lr=3e-4 data.image_size=64"
    )


# ----------------------------------------------------------------------------------------------------------
# prdit data phantom
# ----------------------------------------------------------------------------------------------------------


def _add_phantom_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="generate procedural chest-CT phantoms (NIfTI in HU) + train/val lists",
        description="Write NUM procedural chest-CT phantoms as int16 HU NIfTI (real affine) with train.txt / val.txt.",
    )
    parser.add_argument("--num", type=int, default=200, help="number of volumes (default 200)")
    parser.add_argument("--size", type=int, default=64, help="voxels per side, 32-256 (default 64)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first volume; volume i uses seed+i (default 0)")
    parser.add_argument("--spacing", type=float, default=None, help="voxel spacing in mm (default: the whole chest fits)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate volumes that already exist")
    parser.set_defaults(func=_run_phantom)


def _run_phantom(args: argparse.Namespace) -> None:
    from prdit.data.phantom import write_phantom_dataset

    if not 32 <= args.size <= 256:
        raise PrditError(f"--size {args.size} is out of range: phantoms are 32 to 256 voxels per side")
    if args.num < 1:
        raise PrditError("--num must be at least 1")
    summary = write_phantom_dataset(
        args.out, num=args.num, size=args.size, seed=args.seed, spacing_mm=args.spacing, workers=args.workers, overwrite=args.overwrite
    )
    print(f"wrote {summary['written']} volume(s), kept {summary['skipped']} existing, in {args.out}")


# ----------------------------------------------------------------------------------------------------------
# prdit preview
# ----------------------------------------------------------------------------------------------------------


def _add_preview_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "preview",
        help="PNG montage (axial, coronal, sagittal) of a volume",
        description="Write a PNG montage of axial, coronal and sagittal slices of a NIfTI/.npy/.npz volume in HU.",
    )
    parser.add_argument("file", help="volume file (.nii.gz, .nii, .npy, .npz)")
    parser.add_argument("--window", default="lung", help="lung, mediastinal, bone, or LEVEL,WIDTH in HU (default lung)")
    parser.add_argument("--out", default=None, help="PNG path (default: next to the file, FILE.png)")
    parser.set_defaults(func=_run_preview)


def _parse_window(text: str):
    from prdit.preview import WINDOWS

    if text in WINDOWS:
        return text
    try:
        level, width = (float(v) for v in text.split(","))
    except ValueError:
        raise PrditError(f"--window {text!r}: use one of {', '.join(WINDOWS)} or LEVEL,WIDTH such as -600,1500") from None
    return (level, width)


def _run_preview(args: argparse.Namespace) -> None:
    from prdit.io import volume_stem
    from prdit.preview import save_montage

    source = Path(args.file)
    out = Path(args.out) if args.out else source.with_name(volume_stem(source) + ".png")
    save_montage(source, out, window=_parse_window(args.window), title=source.name)
    print(f"wrote {out}")


# ----------------------------------------------------------------------------------------------------------
# prdit config
# ----------------------------------------------------------------------------------------------------------


def _add_config_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "config",
        help="validate a config and print it resolved (defaults + overrides)",
        description="Load a YAML config, apply section.key=value overrides, validate every key and print the result.",
    )
    _add_config_arguments(parser)
    parser.set_defaults(func=_run_config)


def _run_config(args: argparse.Namespace) -> None:
    from prdit.config import load_config

    print(load_config(args.config, args.overrides).to_yaml(), end="")


# ----------------------------------------------------------------------------------------------------------
# prdit train
# ----------------------------------------------------------------------------------------------------------


def _add_train_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a PRDiT stage (or both) on a config",
        description=(
            "Train PRDiT. Stage 1 (depth 0) trains the local denoiser; stage 2 (depth > 0) loads the stage-1 checkpoint "
            "from model.pretrained_path, freezes it and trains the global residual DiT. Multi-GPU: "
            "torchrun --nproc_per_node=N train.py --config X.yaml"
        ),
    )
    _add_config_arguments(parser)
    parser.add_argument("--resume_training", "--resume", dest="resume", action="store_true",
                        help="continue the latest run of this config (or --run-dir) exactly where its last checkpoint stopped")
    parser.add_argument("--debug", action="store_true", help="tiny smoke run: 8 steps, batch 2, logs every step, results/debug/")
    parser.add_argument("--from_scratch", "--from-scratch", dest="from_scratch", action="store_true",
                        help="random initialisation for every part (ignore model.pretrained_path, freeze nothing)")
    parser.add_argument("--init-from", "--init_from", dest="init_from", default=None,
                        help="checkpoint or run folder to initialise from (e.g. a 128^3 run for a 256^3 model)")
    parser.add_argument("--run-dir", dest="run_dir", default=None, help="run folder to resume (default: the latest of this model)")
    parser.add_argument("--stages", choices=["both"], default=None,
                        help="both: run the stage-1 config, then the stage-2 config initialised from its checkpoint")
    parser.add_argument("--stage2-config", dest="stage2_config", default=None,
                        help="stage-2 config for --stages both (default: global.yaml next to --config)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar (for logs)")
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from prdit.config import load_config
    from prdit.train.trainer import TrainOptions, train

    options = TrainOptions(resume=args.resume, debug=args.debug, from_scratch=args.from_scratch, init_from=args.init_from,
                           run_dir=args.run_dir, progress=args.progress)
    config = load_config(args.config, args.overrides)
    if args.stages != "both":
        print(f"run folder: {train(config, options)}")
        return
    stage2_path = Path(args.stage2_config) if args.stage2_config else Path(args.config).with_name("global.yaml")
    stage2 = load_config(stage2_path, args.overrides)
    stage1_dir = train(config, options)
    print(f"stage 1 done: {stage1_dir}")
    print(f"stage 2 done: {train(stage2.with_pretrained(stage1_dir), TrainOptions(debug=args.debug, progress=args.progress))}")


# ----------------------------------------------------------------------------------------------------------
# prdit sample
# ----------------------------------------------------------------------------------------------------------


def _add_sample_parser(subparsers) -> None:
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
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the sampler's own default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first volume (default 0)")
    parser.add_argument("--ema", dest="ema", action="store_true", default=True, help="use the EMA weights (default)")
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="use the raw training weights")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--overwrite", action="store_true", help="redo volumes that already exist in --output-dir")
    parser.add_argument("--save-raw", dest="save_raw", action="store_true", help="also write the model-space output (sample_<seed>_raw.nii.gz)")
    parser.add_argument("--save-x0", dest="save_x0", action="store_true", help="also write the final x0 prediction (sample_<seed>_x0.nii.gz)")
    parser.add_argument("--list-samplers", dest="list_samplers", action="store_true", help="print the checkpoint's samplers and exit")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
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
    from prdit.sample import load_pipeline, sample_to_folder, write_grid
    from prdit.train.distributed import barrier, setup_distributed, teardown_distributed

    if args.ckpt is None:
        if args.config is None:
            raise PrditError("pass --ckpt (a checkpoint or run folder) or --config (its latest run is sampled)")
        from prdit.config import load_config
        from prdit.train.trainer import latest_run_dir

        args.ckpt = latest_run_dir(load_config(args.config), needed_by="sampling")
    if args.new and args.sampler not in (None, "ian-pc"):
        raise PrditError(f"--new selects the ian-pc sampler but --sampler {args.sampler} was given; pass one of them")
    sampler = "ian-pc" if args.new else args.sampler
    num_volumes = _pick(args, "num_volumes", "total_samples", 4)
    batch_size = _pick(args, "batch_size", "num_samples", 1)
    info = setup_distributed(args.device or "auto")
    try:
        pipeline = load_pipeline(args.ckpt, device=info.device, use_ema=args.ema, precision=args.precision)
        if args.list_samplers:
            for name in pipeline.diffusion.samplers:
                default = " (default)" if name == pipeline.diffusion.default_sampler else ""
                print(f"{name}: {pipeline.diffusion.default_steps(name)} steps by default{default}")
            return
        if sampler is not None and sampler not in pipeline.diffusion.samplers:
            raise PrditError(f"unknown sampler {sampler!r} for this checkpoint; choose one of {', '.join(pipeline.diffusion.samplers)}")
        out_dir = Path(args.output_dir) if args.output_dir else pipeline.checkpoint.parent.parent / "samples"
        written = sample_to_folder(
            pipeline, out_dir, num_volumes, batch_size=batch_size, seed=args.seed, sampler=sampler, steps=args.steps,
            overwrite=args.overwrite, rank=info.rank, world_size=info.world_size, progress=args.progress and info.is_main,
            save_raw=args.save_raw, save_x0=args.save_x0, grid=not info.enabled,
        )
        print(f"wrote {len(written)} volume(s) to {out_dir}" + (f" (rank {info.rank})" if info.enabled else ""))
        if info.enabled:  # the grid shows every rank's volumes, so it waits for all of them
            barrier(info)
            if info.is_main:
                write_grid(out_dir, pipeline.spacing)
    finally:
        teardown_distributed()


# ----------------------------------------------------------------------------------------------------------
# prdit demo
# ----------------------------------------------------------------------------------------------------------


def _add_demo_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="end to end on phantom chest CT: data -> stage 1 -> stage 2 -> samples -> metrics -> index.md",
        description=(
            "Generate phantom chest CTs, train both PRDiT stages briefly, sample NIfTI volumes in HU (from the shipped "
            "phantom model, and from the model just trained), compute metrics, and write OUT/index.md with the "
            "pictures and numbers. About 10-15 minutes on 2 CPU cores; --quick is a <= 3-minute smoke run."
        ),
    )
    parser.add_argument("--out", default="results/demo", help="output folder (default results/demo)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny training and 2 samples (<= 3 minutes)")
    parser.add_argument("--train-full", dest="train_full", action="store_true",
                        help="train the full phantom recipe (configs/phantom; hours on CPU) and sample from it instead of the shipped model")
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> None:
    from prdit.demo import run_demo

    run_demo(args.out, quick=args.quick, train_full=args.train_full, device=args.device, progress=args.progress,
             overwrite=args.overwrite)


# ----------------------------------------------------------------------------------------------------------
# prdit export
# ----------------------------------------------------------------------------------------------------------


def _add_export_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint's weights to a small .safetensors file for sharing and sampling",
        description="Write the EMA (or raw) weights of a checkpoint, fp16 by default, with the metadata sampling needs "
                    "(model, diffusion, intensity mapping, spacing) as .safetensors: no optimizer state, no pickle.",
    )
    parser.add_argument("ckpt", help="checkpoint file or run folder")
    parser.add_argument("--out", required=True, help="output .safetensors path")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights (default ema)")
    parser.add_argument("--fp32", action="store_true", help="keep float32 (default: float16, half the size)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    from prdit.train.checkpoint import export_weights

    if not args.out.endswith(".safetensors"):
        raise PrditError(f"--out {args.out}: use a .safetensors file name")
    path = export_weights(args.ckpt, args.out, weights=args.weights, half=not args.fp32, overwrite=args.overwrite)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


# ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prdit",
        description="PRDiT: pixel-level residual diffusion transformer for 3D CT volume generation.",
    )
    parser.add_argument("--version", action="version", version=f"prdit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    data = commands.add_parser(
        "data", help="prepare data: phantoms, LIDC-IDRI, RAD-ChestCT, train/val splits",
        description="Prepare training data: NIfTI volumes in HU with their real geometry, manifests and train/val lists.",
    )
    data_commands = data.add_subparsers(dest="data_command", metavar="SOURCE", required=True)
    _add_phantom_parser(data_commands)
    add_data_subcommands(data_commands)

    _add_demo_parser(commands)
    _add_train_parser(commands)
    _add_sample_parser(commands)
    _add_export_parser(commands)
    add_evaluate_subcommands(commands)
    _add_preview_parser(commands)
    _add_config_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        args.func(args)
    except PrditError as error:
        print(f"prdit: error: {error}", file=sys.stderr)
        return 2
    except FileExistsError as error:
        print(f"prdit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prdit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
