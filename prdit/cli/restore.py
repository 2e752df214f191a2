"""``prdit restore``: super-resolution, inpainting, deblurring and sparse-view X-ray to CT with a frozen PRDiT prior."""

from __future__ import annotations

import argparse

from prdit.cli.common import add_device_argument

TASKS = {
    "super-resolution": "a low-resolution NIfTI (average-pooled by --factor) -> the full-resolution volume",
    "inpainting": "a NIfTI with missing voxels plus a --mask NIfTI (non-zero = measured) -> the filled volume",
    "deblurring": "a NIfTI blurred by a Gaussian of --sigma voxels -> the sharp volume",
    "xray": "a stack of parallel-beam projections [views, slices, detector] (.npy or .nii.gz) at --angles -> CT",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "restore",
        help="inverse problems with the trained model as prior: super-resolution, inpainting, deblurring, X-ray to CT",
        description=(
            "Reconstruct a CT volume in HU from a measurement with a trained PRDiT as the prior (TF-PRDiT's "
            "measurement-guided sampling: conjugate-gradient data consistency at every sampler step). Writes to --out: "
            "restored.nii.gz (HU, the measurement's geometry), restored.json (operator, parameters, checkpoint "
            "SHA256, seed), restored.png (measurement, baseline, restoration, uncertainty, and errors with --truth), "
            "baseline.nii.gz (the classical reconstruction) and, with --num-samples > 1, restored_std.nii.gz. "
            "Try it without data: --simulate TRUTH.nii.gz makes the measurement from a volume (e.g. from prdit data phantom)."
        ),
    )
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for task, summary in TASKS.items():
        sub = tasks.add_parser(task, help=summary, description=f"{task}: {summary}.")
        _add_common_arguments(sub)
        group = sub.add_argument_group(f"{task} operator")
        if task == "super-resolution":
            group.add_argument("--factor", type=int, default=2, help="downsampling factor per axis (default 2)")
        elif task == "inpainting":
            group.add_argument("--mask", default=None,
                               help="mask NIfTI, non-zero where voxels were measured (with --simulate, default: a missing "
                                    "central cube of --missing of each side)")
            group.add_argument("--missing", type=float, default=0.5,
                               help="with --simulate and no --mask: side of the missing central cube as a fraction (default 0.5)")
        elif task == "deblurring":
            group.add_argument("--sigma", type=float, default=2.0, help="Gaussian standard deviation in voxels (default 2)")
            group.add_argument("--kernel-size", dest="kernel_size", type=int, default=None,
                               help="odd kernel length in voxels (default 2 ceil(3 sigma) + 1)")
        else:
            group.add_argument("--angles", default=None,
                               help="projection angles in degrees, comma-separated, e.g. 0,90 (0 = frontal, 90 = lateral)")
            group.add_argument("--views", type=int, default=None,
                               help="instead of --angles: this many views evenly over [0, 180) degrees")
        sub.set_defaults(func=_run_restore)


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("measurement")
    source.add_argument("--input", default=None, help="the measurement file")
    source.add_argument("--simulate", default=None, metavar="TRUTH",
                        help="make the measurement from this ground-truth HU volume instead (also used as --truth)")
    source.add_argument("--noise", type=float, default=0.0,
                        help="with --simulate: Gaussian noise std added to the measurement, in its units (default 0)")
    source.add_argument("--truth", default=None, help="ground-truth HU volume: adds error maps and metrics")
    parser.add_argument("--ckpt", default=None,
                        help="checkpoint, run folder or .safetensors (default: the shipped phantom-32 model)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-samples", dest="num_samples", type=int, default=1,
                        help="posterior samples; > 1 returns their mean and writes the std as an uncertainty map (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first sample; sample k uses seed + k (default 0)")
    parser.add_argument("--sampler", default=None, help="sampler (default: the checkpoint's diffusion default)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the sampler's own default)")
    parser.add_argument("--guidance-iterations", dest="guidance_iterations", type=int, default=None,
                        help="conjugate-gradient data-consistency steps per network call (default: the operator's; 0: unguided)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=None,
                        help="samples per forward pass (default: all of them)")
    add_device_argument(parser)
    parser.add_argument("--window", default="lung", help="display window of the PNG: lung, mediastinal, bone, wide (default lung)")
    parser.add_argument("--overwrite", action="store_true", help="replace restored.nii.gz if --out already has one")
    parser.add_argument("--label-map", dest="label_map", default=None,
                        help="conditional models (--ckpt of phantom-mask-32.safetensors): a label map the restored volume "
                        "follows besides the measurement (docs/conditional.md)")
    parser.add_argument("--attribute", action="append", default=None, metavar="NAME=VALUE",
                        help="conditional models: a body attribute, e.g. body_diameter_mm=290 (repeatable)")
    parser.add_argument("--guidance-scale", dest="guidance_scale", type=float, default=None,
                        help="classifier-free guidance w of --label-map/--attribute (default 1)")
    parser.add_argument("--report", action="store_true",
                        help="also write OUT/report.html: the restoration, baseline and truth in a 3D slice viewer")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _run_restore(args: argparse.Namespace) -> None:
    from prdit.cli.restore_command import restore_command

    restore_command(args)
