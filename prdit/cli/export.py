"""``prdit export``: a checkpoint's weights as a small .safetensors file."""

from __future__ import annotations

import argparse

from prdit.errors import PrditError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
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
    from prdit.checkpoint import export_weights

    if not args.out.endswith(".safetensors"):
        raise PrditError(f"--out {args.out}: use a .safetensors file name")
    path = export_weights(args.ckpt, args.out, weights=args.weights, half=not args.fp32, overwrite=args.overwrite)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
