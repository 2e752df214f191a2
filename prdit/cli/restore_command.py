"""The work behind ``prdit restore``: read (or simulate) a measurement, build its operator with the right geometry,
restore with a pipeline, write the NIfTI, sidecar and PNG (and the HTML report). Imported only when the command
runs (``prdit.cli.restore`` holds its arguments), so that ``prdit --help`` loads neither torch nor the library."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from prdit import __version__
from prdit.conditioning import parse_attributes
from prdit.errors import DataError, PrditError
from prdit.inverse.guidance import DataConsistency
from prdit.inverse.metrics import reconstruction_metrics
from prdit.inverse.operators import (
    Deblurring,
    Inpainting,
    Operator,
    SparseViewXray,
    SuperResolution,
    central_cube_mask,
    uniform_angles,
)
from prdit.inverse.outputs import render_restoration, upsampled_affine, write_restoration
from prdit.io import Volume, centered_origin, load_volume, nifti_affine, save_nifti


def parse_angles(angles: str | None, views: int | None) -> list[float]:
    if angles is not None and views is not None:
        raise PrditError("pass --angles or --views, not both")
    if views is not None:
        return uniform_angles(views)
    if angles is None:
        raise PrditError("xray needs the projection angles: --angles 0,90 (degrees) or --views N")
    try:
        return [float(a) for a in angles.split(",") if a.strip()]
    except ValueError:
        raise PrditError(f"--angles {angles!r} must be comma-separated numbers in degrees, e.g. 0,90") from None


def load_projections(path: str | Path) -> np.ndarray:
    """An X-ray stack [views, slices, detector] from .npy or from a NIfTI written by ``--simulate`` (raw array order)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif path.name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            image = nib.load(str(path))
            array = np.asanyarray(image.dataobj).transpose(2, 1, 0)  # type: ignore[attr-defined]  # every NIfTI image has it
        else:
            raise DataError(f"{path}: X-ray projections must be .npy or .nii.gz")
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"{path}: cannot read the projections ({type(error).__name__}: {error})") from None
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise DataError(f"{path}: X-ray projections must be [views, slices, detector], got shape {array.shape}")
    return np.asarray(array, dtype=np.float32)


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]


def _fits(volume: Volume, size: int, what: str) -> None:
    if volume.array.shape != (size,) * 3:
        raise PrditError(f"{volume.path}: {what} has shape {volume.array.shape}, but the model reconstructs {size}^3 volumes; "
                         "resample it first")


def build_operator(args: argparse.Namespace, size: int, spacing: tuple[float, float, float]) -> Operator:
    """The operator of ``args.task`` for a ``size``^3 volume of ``spacing`` (the mask is read here for inpainting)."""
    if args.task == "super-resolution":
        return SuperResolution(args.factor)
    if args.task == "deblurring":
        return Deblurring(args.sigma, args.kernel_size)
    if args.task == "xray":
        return SparseViewXray(parse_angles(args.angles, args.views), (size,) * 3, spacing)
    if args.mask is not None:
        mask = load_volume(args.mask)
        if mask.array.shape != (size,) * 3:
            raise PrditError(f"{args.mask}: the mask has shape {mask.array.shape}, but the volume is {(size,) * 3}")
        return Inpainting(mask.array != 0)
    if args.simulate is None:
        raise PrditError("inpainting needs --mask MASK.nii.gz (non-zero where voxels were measured)")
    return Inpainting(central_cube_mask((size,) * 3, args.missing))


def restore_command(args: argparse.Namespace) -> None:
    from prdit.demo import SHIPPED_WEIGHTS
    from prdit.runtime import describe_precision, resolve_device
    from prdit.sample import load_pipeline

    if (args.input is None) == (args.simulate is None):
        raise PrditError("pass the measurement with --input FILE, or --simulate TRUTH.nii.gz to make one")
    if args.noise < 0:
        raise PrditError(f"--noise must be non-negative, got {args.noise}")
    out_dir = Path(args.out)
    if (out_dir / "restored.nii.gz").exists() and not args.overwrite:
        raise FileExistsError(f"{out_dir / 'restored.nii.gz'} exists; pass --overwrite to replace it or choose another --out")
    pipeline = load_pipeline(args.ckpt or SHIPPED_WEIGHTS, device=resolve_device(args.device))
    print(describe_precision(pipeline.precision, pipeline.device), flush=True)
    size = pipeline.input_size
    truth_path = args.truth or args.simulate
    truth = load_volume(truth_path) if truth_path else None
    if truth is not None:
        _fits(truth, size, "the truth")

    measurement_files: dict[str, Path] = {}
    if args.simulate:
        assert truth is not None  # --simulate is the truth when --truth is not given
        spacing, affine = truth.spacing, truth.affine
        op = build_operator(args, size, spacing)
        y = op(_tensor(truth.array))
        if args.noise:
            y = y + args.noise * torch.randn(y.shape, generator=torch.Generator().manual_seed(args.seed))
        out_dir.mkdir(parents=True, exist_ok=True)
        measurement_files = _save_measurement(out_dir, op, y, affine, spacing)
    elif args.task == "xray":
        spacing = (float(pipeline.spacing[0]), float(pipeline.spacing[1]), float(pipeline.spacing[2]))
        affine = nifti_affine(spacing, centered_origin((size,) * 3, spacing))
        op = build_operator(args, size, spacing)
        assert isinstance(op, SparseViewXray)
        projections = load_projections(args.input)
        if len(projections) != len(op.angles_deg):
            raise PrditError(f"{args.input}: {len(projections)} projection(s) but {len(op.angles_deg)} angle(s) given; "
                             "pass one angle per projection")
        y = torch.from_numpy(projections)[None]
    else:
        measured = load_volume(args.input)
        if args.task == "super-resolution":
            affine = upsampled_affine(measured.affine, args.factor)
            spacing = tuple(s / args.factor for s in measured.spacing)
        else:
            affine, spacing = measured.affine, measured.spacing
        op = build_operator(args, size, spacing)
        y = _tensor(measured.array)
    op.check_measurement(y, (1, 1) + (size,) * 3, source=str(args.input or args.simulate))

    sampler, steps = pipeline.diffusion.resolve(args.sampler, args.steps)
    attributes = parse_attributes(args.attribute)
    condition = pipeline.condition(args.label_map, attributes, args.guidance_scale)  # checked before any sampling
    began = time.perf_counter()
    restored, std = pipeline.restore(
        y, op, steps=steps, sampler=sampler, seed=args.seed, num_samples=args.num_samples,
        guidance=DataConsistency(args.guidance_iterations), return_std=True, batch_size=args.batch_size,
        progress=args.progress, mask=args.label_map, attributes=attributes, guidance_scale=args.guidance_scale,
    )
    seconds = time.perf_counter() - began
    baseline = op.baseline(y)
    sidecar = {
        "prdit_version": __version__,
        "task": args.task,
        "operator": op.params(),
        "measurement": str(args.input) if args.input else None,
        "simulated_from": str(args.simulate) if args.simulate else None,
        "noise_std": args.noise if args.simulate else None,
        "model": pipeline.model.name,
        "checkpoint": str(pipeline.checkpoint),
        "checkpoint_sha256": pipeline.checkpoint_sha256,
        "seed": args.seed,
        "num_samples": args.num_samples,
        "sampler": sampler,
        "steps": steps,
        "network_calls": pipeline.diffusion.network_calls(sampler, steps),
        "guidance": {"method": "CGLS data consistency on x0_hat", "iterations": args.guidance_iterations
                     if args.guidance_iterations is not None else op.guidance_iterations},
        "seconds": round(seconds, 2),
        **({"condition": condition.record()} if condition is not None else {}),
        "units": "HU",
        "spacing_mm": list(spacing),
    }
    rows = [("baseline", baseline[0, 0].numpy(), "hu"), ("restored", restored[0, 0].numpy(), "hu")]
    if y.shape[2:] == restored.shape[2:] and y.dim() == 5:
        shown = y[0, 0].numpy().copy()
        if isinstance(op, Inpainting):
            shown[~op.mask.numpy()] = np.nan
        rows.insert(0, ("measurement", shown, "hu"))
    elif isinstance(op, SuperResolution):
        coarse = y.repeat_interleave(op.factor, 2).repeat_interleave(op.factor, 3).repeat_interleave(op.factor, 4)
        rows.insert(0, ("measurement\n(low-res)", coarse[0, 0].numpy(), "hu"))
    if args.num_samples > 1:
        rows.append((f"uncertainty\n(std, {args.num_samples} samples)", std[0, 0].numpy(), "std"))
    if truth is not None:
        truth_tensor = _tensor(truth.array)
        sidecar["metrics"] = {
            "restored": reconstruction_metrics(op, restored, truth_tensor, y, pipeline.mapping.hu_range()),
            "baseline": reconstruction_metrics(op, baseline, truth_tensor, y, pipeline.mapping.hu_range()),
        }
        rows += [("truth", truth.array, "hu"), ("|error| baseline", np.abs(baseline[0, 0].numpy() - truth.array), "error"),
                 ("|error| restored", np.abs(restored[0, 0].numpy() - truth.array), "error")]
    title = f"prdit restore {args.task}: {', '.join(f'{k} {v}' for k, v in op.params().items() if k in ('factor', 'views', 'sigma_voxels', 'measured_fraction'))}"
    if truth is not None:
        m = sidecar["metrics"]
        title += f" | PSNR baseline {m['baseline']['psnr']:.1f} dB, restored {m['restored']['psnr']:.1f} dB"
    figure = render_restoration(rows, spacing, projections=y[0].numpy() if isinstance(op, SparseViewXray) else None,
                                window=args.window, title=title)
    sidecar["files"] = {name: path.name for name, path in measurement_files.items()}
    paths = write_restoration(out_dir, restored[0, 0].numpy(), affine, sidecar, figure,
                              std=std[0, 0].numpy() if args.num_samples > 1 else None, baseline=baseline[0, 0].numpy(),
                              overwrite=args.overwrite)
    print(f"restored {args.task} in {seconds:.1f} s -> {paths['restored']} (+ {paths['sidecar'].name}, {paths['figure'].name})")
    if args.report:
        report = write_restore_report(out_dir, paths, sidecar, truth_path)
        print(f"wrote {report} ({report.stat().st_size / 1e6:.1f} MB): open it in a browser")
    if truth is not None:
        m = sidecar["metrics"]
        print(f"PSNR baseline {m['baseline']['psnr']:.2f} dB -> restored {m['restored']['psnr']:.2f} dB; "
              f"SSIM {m['baseline']['ssim']:.3f} -> {m['restored']['ssim']:.3f}")


def write_restore_report(out_dir: Path, paths: dict[str, Path], sidecar: dict, truth_path: str | None) -> Path:
    """``report.html``: the restoration and the baseline in the 3D slice viewer, the truth below them when known."""
    from prdit.report import write_html
    from prdit.report.content import ReportContent, VolumeSet, report_volume

    restored = [report_volume(paths["restored"], 64, f"seed {sidecar['seed']} · {sidecar['num_samples']} sample(s)"),
                report_volume(paths["baseline"], 64, "classical baseline")]
    sets = [VolumeSet("restoration", f"restoration · {sidecar['task']}", "generated", restored, str(out_dir))]
    if truth_path:
        sets.append(VolumeSet("real", "truth", "real", [report_volume(Path(truth_path), 64, "truth")], str(truth_path)))
    notes = [f"operator: {json.dumps(sidecar['operator'])}"]
    if "metrics" in sidecar:
        m = sidecar["metrics"]
        notes.append(f"PSNR baseline {m['baseline']['psnr']:.2f} dB -> restored {m['restored']['psnr']:.2f} dB; "
                     f"SSIM {m['baseline']['ssim']:.3f} -> {m['restored']['ssim']:.3f}; data consistency "
                     f"{m['baseline']['data_consistency']:.4f} -> {m['restored']['data_consistency']:.4f}")
    content = ReportContent(f"prdit restore {sidecar['task']}", sets=sets, models=[{**sidecar, "set": "restoration"}],
                            notes=notes)
    return write_html(content, out_dir / "report.html")


def _save_measurement(out_dir: Path, op: Operator, y: torch.Tensor, affine: np.ndarray,
                      spacing: tuple[float, float, float]) -> dict[str, Path]:
    """The simulated measurement (and mask) as files that ``--input`` (and ``--mask``) read back."""
    files = {}
    if isinstance(op, SparseViewXray):
        files["measurement"] = out_dir / "measurement.npy"
        np.save(files["measurement"], y[0].numpy())
        return files
    if isinstance(op, SuperResolution):
        coarse = np.diag([float(op.factor)] * 3 + [1.0])
        coarse[:3, 3] = (op.factor - 1) / 2
        affine = np.asarray(affine) @ coarse
    files["measurement"] = save_nifti(out_dir / "measurement.nii.gz", y[0, 0].numpy(), affine=affine, overwrite=True)
    if isinstance(op, Inpainting):
        files["mask"] = save_nifti(out_dir / "mask.nii.gz", op.mask.numpy().astype(np.uint8), affine=affine,
                                   dtype=np.uint8, overwrite=True)
    return files
