"""``prdit export``: a checkpoint's weights as a small .safetensors file with a model card, or as a MONAI bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from prdit.errors import PrditError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="share a model: a small .safetensors file with a model card, and/or a MONAI bundle",
        description="Write the EMA (or raw) weights of a checkpoint, fp16 by default, with the metadata sampling needs "
                    "(model, diffusion, intensity mapping, spacing) as .safetensors: no optimizer state, no pickle. "
                    "A model card (README.md, Hugging Face front matter: data, resolution, intensity mapping, metrics, "
                    "intended use and limitations) is written beside it. --bundle DIR writes a MONAI bundle that "
                    "`python -m monai.bundle run --config_file DIR/configs/inference.json` samples NIfTI volumes from.",
    )
    parser.add_argument("ckpt", help="checkpoint file, run folder, or an exported .safetensors file")
    parser.add_argument("--out", default=None, help="output .safetensors path")
    parser.add_argument("--bundle", default=None, help="also (or instead) write a MONAI bundle into this folder")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights (default ema)")
    parser.add_argument("--fp32", action="store_true", help="keep float32 (default: float16, half the size)")
    parser.add_argument("--card", default=None, help="model card path (default: README.md beside --out)")
    parser.add_argument("--no-card", dest="write_card", action="store_false", help="no model card beside --out")
    parser.add_argument("--metrics", default=None, help="metrics JSON for the card (prdit evaluate output or a demo metrics.json)")
    parser.add_argument("--config", default=None, help="training config YAML for the card, when the weights file carries none")
    parser.add_argument("--license", default="apache-2.0", help="license in the card's front matter (default apache-2.0)")
    parser.add_argument("--bundle-volumes", dest="bundle_volumes", type=int, default=4,
                        help="volumes the bundle's inference.json samples by default (default 4)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    import shutil

    from prdit.checkpoint import export_weights
    from prdit.config import load_config

    if args.out is None and args.bundle is None:
        raise PrditError("pass --out FILE.safetensors, --bundle DIR, or both")
    if args.out is not None and not args.out.endswith(".safetensors"):
        raise PrditError(f"--out {args.out}: use a .safetensors file name")
    card_options = {"metrics": args.metrics, "license": args.license,
                    "config": load_config(args.config).to_dict() if args.config else None}
    if args.out is not None:
        out = Path(args.out)
        card = Path(args.card) if args.card else out.with_name("README.md")
        for path in [out] + ([card] if args.write_card else []):
            if path.exists() and not args.overwrite:
                raise PrditError(f"{path} exists; pass --overwrite" + (", --card OTHER.md or --no-card" if path == card else ""))
        if args.ckpt.endswith(".safetensors"):
            shutil.copyfile(args.ckpt, out)
        else:
            export_weights(args.ckpt, out, weights=args.weights, half=not args.fp32, overwrite=args.overwrite)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
        if args.write_card:
            from prdit.io import atomic_write_text
            from prdit.modelcard import model_card

            atomic_write_text(card, model_card(out, **card_options))
            print(f"wrote {card} (model card)")
    if args.bundle is not None:
        from prdit.bundle import write_bundle

        if args.bundle_volumes < 1:
            raise PrditError("--bundle-volumes must be at least 1")
        bundle = write_bundle(args.ckpt, args.bundle, num_volumes=args.bundle_volumes, half=not args.fp32,
                              overwrite=args.overwrite, **card_options)
        print(f"wrote the MONAI bundle {bundle}; sample with:\n"
              f"  cd {bundle} && python -m monai.bundle run --config_file configs/inference.json")
