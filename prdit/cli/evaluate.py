"""``prdit evaluate fid|mmd|msssim|wgan|offline|memorisation`` and the seed-compatible ``evaluations/*.py`` scripts.

Each command prints its headline number, then the full result with its protocol as JSON (``--out`` also writes
it atomically). The flag names follow the original scripts (``--data_root_real``, ``--img_size``, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Callable

from prdit.cli.common import add_device_argument, run_command, set_openmp_waiting
from prdit.errors import ConfigError

# ----------------------------------------------------------------------------------------------------------
# Shared arguments and helpers
# ----------------------------------------------------------------------------------------------------------


def _add_data_arguments(parser: argparse.ArgumentParser, fake_flags: tuple[str, ...] = ("--data_root_fake",), real_required: bool = True) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data_root_real", required=real_required,
                      help="real volumes: folder (NIfTI/.npy/.npz, recursive), list file, or one .npy/.npz stack [N, D, H, W]")
    for flag in fake_flags:
        data.add_argument(flag, required=flag != "--data_root_fake_1", help="generated volumes, same formats as --data_root_real")
    data.add_argument("--space", choices=["hu", "model"], default="hu",
                      help="intensities of the files: Hounsfield units or the generating model's space (prdit sample "
                      "--save-raw files, mapped back to HU through their sidecars or --intensity-from; default hu)")
    _add_intensity_argument(data)
    data.add_argument("--img_size", type=int, default=None, help="compare at S^3 voxels (default: the volumes' own shape)")
    data.add_argument("--resize", choices=["error", "trilinear"], default="error",
                      help="volumes that are not S^3: stop with an error (default) or resample trilinearly")
    data.add_argument("--limit", type=int, default=None, help="use only the first N volumes of each set")
    data.add_argument("--dataset", default=None, help="dataset name, recorded in the protocol (e.g. LIDC-IDRI)")


def _add_intensity_argument(group) -> None:
    group.add_argument("--intensity-from", "--intensity_from", dest="intensity_from", default=None, metavar="CHECKPOINT",
                       help="the generating model's intensity mapping: its checkpoint, run folder, .safetensors, or a "
                       "sample's .json sidecar (default: the sidecars beside the files)")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    output = parser.add_argument_group("output")
    output.add_argument("--out", default=None, help="also write the JSON result to this file")
    output.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    output.add_argument("--no-progress", "--no_progress", dest="progress", action="store_false", help="no progress bars")


def _add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    features = parser.add_argument_group("feature network")
    features.add_argument("--pretrain_path", default=None,
                          help="MedicalNet resnet_50_23dataset.pth or resnet_50.pth; without it a fixed-seed random network "
                               "is used and every output says so (not comparable to published numbers)")
    features.add_argument("--normalization", choices=["none", "zscore"], default="none",
                          help="per-volume input normalisation: none (model space [-1, 1]) or MedicalNet-style z-score")
    features.add_argument("--batch_size", type=int, default=4, help="volumes per forward pass (default 4)")
    add_device_argument(features)
    features.add_argument("--cache_dir", "--cache-dir", dest="cache_dir", default=None,
                          help="real-set feature cache (default $PRDIT_CACHE_DIR, else ~/.cache/prdit)")
    features.add_argument("--no_cache", "--no-cache", dest="cache", action="store_false", help="do not read or write the cache")


def _load(args: argparse.Namespace, flag: str, name: str):
    from prdit.evaluation.data import load_volume_set

    if args.intensity_from and not hasattr(args, "mapping"):
        from prdit.sample import load_mapping

        args.mapping = load_mapping(args.intensity_from)
    return load_volume_set(getattr(args, flag), space=args.space, size=args.img_size, resize=args.resize, limit=args.limit,
                           name=name, mapping=getattr(args, "mapping", None))


def _output_path(args: argparse.Namespace, default: Path | None = None) -> Path | None:
    """The JSON output file, checked before any work so that an existing result is never computed for nothing."""
    out = Path(args.out) if args.out else default
    if out is not None and out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it (or --out another file)")
    if out is not None:
        from prdit.io import ensure_writable

        ensure_writable(out.parent)
    return out


def _emit(headline: str, result: dict, out: Path | None, overwrite: bool) -> None:
    """Print the headline and the JSON result; write it to ``out`` atomically."""
    from prdit.io import atomic_write_text

    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(headline)
    print(text)
    if out:
        atomic_write_text(out, text + "\n", overwrite=overwrite)
        print(f"wrote {out}", file=sys.stderr)


def _extractor(args: argparse.Namespace):
    from prdit.evaluation.medicalnet import MedicalNetFeatures

    extractor = MedicalNetFeatures(args.pretrain_path, normalization=args.normalization)
    if extractor.weights_sha256:
        print(f"MedicalNet weights {args.pretrain_path} sha256 {extractor.weights_sha256}", file=sys.stderr)
    else:
        print(f"warning: no --pretrain_path: {extractor.weights}", file=sys.stderr)
    return extractor


# ----------------------------------------------------------------------------------------------------------
# fid / mmd
# ----------------------------------------------------------------------------------------------------------


def _feature_comparison(args: argparse.Namespace) -> dict:
    from prdit.evaluation.data import DEFAULT_CACHE_DIR
    from prdit.evaluation.evaluate import compare_features
    from prdit.runtime import resolve_device

    real, fake = _load(args, "data_root_real", "real"), _load(args, "data_root_fake", "fake")
    extractor = _extractor(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # printed once below, as one line
        result = compare_features(real, fake, extractor, args.space, args.resize, args.batch_size, resolve_device(args.device),
                                  args.progress, Path(args.cache_dir or DEFAULT_CACHE_DIR) if args.cache else None)
    for note in result["protocol"]["warnings"]:
        print(f"warning: {note}", file=sys.stderr)
    result["protocol"]["dataset"] = args.dataset
    return result


def _run_fid(args: argparse.Namespace) -> None:
    out = _output_path(args)
    result = _feature_comparison(args)
    protocol = result["protocol"]
    _emit(f"FID: {result['fid']:.6g}  ({protocol['n_real']} real, {protocol['n_fake']} fake; weights: {protocol['weights']})",
          {"fid": result["fid"], "protocol": protocol}, out, args.overwrite)


def _run_mmd(args: argparse.Namespace) -> None:
    out = _output_path(args)
    result = _feature_comparison(args)
    protocol = result["protocol"]
    keys = ("mmd", "mmd2_rbf_biased", "mmd2_rbf_unbiased", "mmd2_linear_biased", "mmd2_linear_unbiased")
    _emit(f"MMD: {result['mmd']:.6g}  (paper protocol; {protocol['n_real']} real, {protocol['n_fake']} fake; weights: {protocol['weights']})",
          {**{k: result[k] for k in keys}, "protocol": protocol}, out, args.overwrite)


def _add_feature_metric_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_arguments(parser)
    _add_feature_arguments(parser)
    _add_output_arguments(parser)


# ----------------------------------------------------------------------------------------------------------
# msssim / offline
# ----------------------------------------------------------------------------------------------------------


def _add_msssim_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_arguments(parser, real_required=False)
    parser.add_argument("--max_pairs", type=int, default=100, help="at most this many random unordered pairs per set (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair subset (default 0)")
    parser.add_argument("--protocol", choices=["prdit", "paper"], default="prdit",
                        help="prdit: 11^3 Gaussian window (the usual SSIM window, default); paper: 3^3 window as the "
                        "paper's evaluation, for numbers comparable with its table")
    _add_output_arguments(parser)


def _run_msssim(args: argparse.Namespace) -> None:
    from prdit.evaluation.metrics import MS_SSIM_KERNEL, MS_SSIM_PAPER_KERNEL, ms_ssim_diversity

    out = _output_path(args)
    kernel = MS_SSIM_PAPER_KERNEL if args.protocol == "paper" else MS_SSIM_KERNEL
    fake = _load(args, "data_root_fake", "fake")
    result = {"fake": ms_ssim_diversity(fake.model_space(), max_pairs=args.max_pairs, seed=args.seed, kernel_size=kernel)}
    if args.data_root_real:
        real = _load(args, "data_root_real", "real")
        result["real"] = ms_ssim_diversity(real.model_space(), max_pairs=args.max_pairs, seed=args.seed, kernel_size=kernel)
    result["protocol"] = {"n_fake": len(fake), "fake_source": fake.source, "n_real": len(real) if args.data_root_real else None,
                          "image_size": list(fake.shape), "resize": args.resize, "dataset": args.dataset,
                          "input_space": args.space, "protocol": args.protocol, "meaning": "mean MS-SSIM between generated volumes; lower = more diverse"}
    reference = f" (real: {result['real']['mean']:.4f})" if "real" in result else ""
    _emit(f"MS-SSIM diversity: {result['fake']['mean']:.4f}{reference} over {result['fake']['pairs']} unordered pairs", result, out, args.overwrite)


def _add_offline_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_arguments(parser)
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for 95%% intervals, 0 for none (default 200)")
    parser.add_argument("--hu-window", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="clip both sets to the generating model's HU window first (e.g. -1000 1000): real CT holds "
                        "values such a model can never produce (air at -1024 HU, dense bone), which would count as error")
    _add_output_arguments(parser)


def _run_offline(args: argparse.Namespace) -> None:
    import numpy as np

    from prdit.evaluation.data import check_same_shape
    from prdit.evaluation.descriptions import METRICS, metric_lines
    from prdit.evaluation.evaluate import base_protocol
    from prdit.evaluation.offline import bootstrap_intervals, compare_statistics, real_floor, volume_statistics

    out = _output_path(args)
    real, fake = _load(args, "data_root_real", "real"), _load(args, "data_root_fake", "fake")
    check_same_shape(real, fake)
    window = args.hu_window
    if window is not None and not window[0] < window[1]:
        raise ConfigError(f"--hu-window: LOW must be below HIGH, got {window[0]:g} {window[1]:g}")
    real_volumes, fake_volumes = (np.clip(v, *window) for v in (real.volumes, fake.volumes)) if window else (real.volumes, fake.volumes)
    real_stats, fake_stats = volume_statistics(real_volumes), volume_statistics(fake_volumes)
    result = compare_statistics(real_stats, fake_stats)
    floor = real_floor(real_stats) if len(real) >= 4 else None
    described = [key.removeprefix("offline.") for key in METRICS if key.startswith("offline.")]
    intervals = bootstrap_intervals(real_stats, fake_stats, described, resamples=args.bootstrap) if args.bootstrap else {}
    result["real_vs_real_floor"] = floor
    result["bootstrap_95"] = {key: list(interval) for key, interval in intervals.items()}
    result["protocol"] = {**base_protocol(real, fake, args.space, args.resize), "dataset": args.dataset,
                          "floor": "the same metrics between two random halves of the real set (None below 4 real volumes)",
                          "bootstrap": f"percentile intervals over {args.bootstrap} resamples of both sets",
                          "hu_window": list(window) if window else None}
    _emit("\n".join(metric_lines(result, floor, intervals, prefix="offline.")), result, out, args.overwrite)


# ----------------------------------------------------------------------------------------------------------
# memorisation
# ----------------------------------------------------------------------------------------------------------


def _add_memorisation_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data (each: folder, list file such as data/phantom/train.txt, or .npy/.npz stack)")
    data.add_argument("--data_root_fake", required=True, help="generated volumes")
    data.add_argument("--data_root_train", required=True, help="the volumes the model was trained on")
    data.add_argument("--data_root_heldout", required=True,
                      help="real volumes the model never saw (at least 4, fewer than the training volumes)")
    data.add_argument("--space", choices=["hu", "model"], default="hu", help="intensities of the files (default hu)")
    _add_intensity_argument(data)
    data.add_argument("--img_size", type=int, default=None, help="compare at S^3 voxels (default: the volumes' own shape)")
    data.add_argument("--resize", choices=["error", "trilinear"], default="error", help="volumes that are not S^3 (default error)")
    data.add_argument("--limit", type=int, default=None, help="use only the first N volumes of each set")
    parser.add_argument("--subsets", type=int, default=20, help="random training subsets for the equal-size ratio (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets and of the floor's split (default 0)")
    _add_output_arguments(parser)


def _run_memorisation(args: argparse.Namespace) -> None:
    from prdit.errors import DataError
    from prdit.evaluation.data import check_same_shape
    from prdit.evaluation.memorisation import memorisation_report

    out = _output_path(args)
    fake, train, heldout = (_load(args, f"data_root_{name}", name) for name in ("fake", "train", "heldout"))
    check_same_shape(train, fake)
    check_same_shape(train, heldout)
    if not 4 <= len(heldout) <= len(train):
        raise DataError(f"--data_root_heldout: need at least 4 held-out volumes and no more than the {len(train)} training "
                        f"volumes, got {len(heldout)}")
    if fake.mapping is None:
        raise DataError("--data_root_fake: distances are taken inside the generating model's HU range, and these files "
                        "have no sample sidecars beside them: pass --intensity-from CHECKPOINT (or a sample's .json)")
    names = [[path.name for path in s.files] if len(s.files) == len(s) else None for s in (fake, train)]  # a stack: indices
    result = memorisation_report(fake.volumes, train.volumes, heldout.volumes, fake.mapping.hu_range(), seed=args.seed, subsets=args.subsets,
                                 sample_names=names[0], train_names=names[1])
    result["protocol"].update(fake_source=fake.source, train_source=train.source, heldout_source=heldout.source)
    s, f, c = result["samples"], result["floor"], result["copies"]
    _emit("\n".join([
        f"NN distance to the training set, samples / held-out volumes: {s['nn_ratio']:.3f}  (below 1 = samples closer to "
        f"the training data than new real volumes are; real vs real {f['nn_ratio']:.3f})",
        f"same at equal set sizes, to training / to held-out: {s['equal_size_ratio']:.3f}, p(closer to training) = "
        f"{s['p_closer_to_train']:.3g}  (about 1 = no memorisation, below 1 = memorisation; real vs real "
        f"{f['equal_size_ratio']:.3f}, p = {f['p_closer_to_train']:.3g})",
        f"samples closer to the training set than 95% of held-out volumes: {c['fraction_below']:.1%}  (lower is better; "
        f"{c['expected_fraction']:.0%} for new real volumes)",
    ]), result, out, args.overwrite)


# ----------------------------------------------------------------------------------------------------------
# wgan
# ----------------------------------------------------------------------------------------------------------


def _add_wgan_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_arguments(parser, fake_flags=("--data_root_fake_0", "--data_root_fake_1"))
    critic = parser.add_argument_group("critic")
    critic.add_argument("--save_path", required=True, help="folder of the critic checkpoints (critic_fake_0.pt, critic_fake_1.pt)")
    critic.add_argument("--eval", action="store_true", help="estimate the Wasserstein distance on the validation split")
    critic.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and batches (default 0)")
    critic.add_argument("--train_size", type=int, default=None, help="training volumes per set (default: all but --val_size)")
    critic.add_argument("--val_size", type=int, default=None, help="validation volumes per set (default: 20%%)")
    critic.add_argument("--steps", type=int, default=2000, help="critic updates (default 2000)")
    critic.add_argument("--batch_size", type=int, default=8, help="volumes of each set per update (default 8)")
    critic.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate, betas (0, 0.9) (default 1e-4)")
    critic.add_argument("--width", type=int, default=16, help="channels of the first critic layer (default 16)")
    critic.add_argument("--checkpoint_every", type=int, default=200, help="save every N steps (default 200)")
    add_device_argument(critic)
    _add_output_arguments(parser)


def _run_wgan(args: argparse.Namespace) -> None:
    from prdit.errors import CheckpointError, DataError
    from prdit.evaluation.critic import CriticConfig, load_critic, split_indices, train_critic, wasserstein_estimate
    from prdit.evaluation.data import check_same_shape
    from prdit.evaluation.evaluate import base_protocol
    from prdit.runtime import resolve_device

    save_path = Path(args.save_path)
    out = _output_path(args, save_path / "wgan_eval.json") if args.eval else None
    device = resolve_device(args.device)
    real = _load(args, "data_root_real", "real")
    fakes = {name: _load(args, f"data_root_{name}", name) for name in ("fake_0", "fake_1") if getattr(args, f"data_root_{name}")}
    size = real.shape[0]
    if len(set(real.shape)) != 1 or size < 8 or size & (size - 1):
        raise DataError(f"the critic needs cubic volumes of a power-of-two side >= 8, got {real.shape}; pass --img_size S --resize trilinear")
    config = CriticConfig(image_size=size, steps=args.steps, batch_size=args.batch_size, lr=args.lr, width=args.width, seed=args.seed)
    real_train, real_val = split_indices(len(real), args.train_size, args.val_size, args.seed, "real")
    real_model = real.model_space()
    results: dict = {}
    for name, fake in fakes.items():
        check_same_shape(real, fake)
        fake_train, fake_val = split_indices(len(fake), args.train_size, args.val_size, args.seed, name)
        checkpoint = save_path / f"critic_{name}.pt"
        meta = {"real_source": real.source, "fake_source": fake.source, "seed": args.seed,
                "train_size": [len(real_train), len(fake_train)], "val_size": [len(real_val), len(fake_val)]}
        fake_model = fake.model_space()
        if not args.eval:
            train_critic(real_model[real_train], fake_model[fake_train], config, checkpoint, device,
                         args.checkpoint_every, args.progress, f"critic real vs {name}", meta)
            print(f"{name}: critic trained for {config.steps} steps -> {checkpoint}")
            continue
        critic, state = load_critic(checkpoint, device)
        if state["meta"] != meta:
            raise CheckpointError(f"{checkpoint}: trained on {state['meta']}, but this evaluation uses {meta}; use the training flags")
        results[name] = {
            "wasserstein": wasserstein_estimate(critic, real_model[real_val], fake_model[fake_val], args.batch_size, device),
            "fake_source": fake.source, "n_fake": len(fake),
            "n_val_real": len(real_val), "n_val_fake": len(fake_val), "checkpoint": str(checkpoint), "critic": state["config"],
        }
    if not args.eval:
        return
    protocol = {**base_protocol(real, next(iter(fakes.values())), args.space, args.resize), "dataset": args.dataset,
                "estimate": "mean critic(real) - mean critic(fake) on the validation split, WGAN-GP critic (lambda 10), "
                            "identical budget for every fake set"}
    for per_fake_key in ("fake_source", "n_fake"):  # reported per fake set below
        del protocol[per_fake_key]
    headline = ", ".join(f"W(real, {name}) = {value['wasserstein']:.5g}" for name, value in results.items())
    _emit(headline, {"wasserstein": results, "protocol": protocol}, out, args.overwrite)


# ----------------------------------------------------------------------------------------------------------
# Wiring
# ----------------------------------------------------------------------------------------------------------

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {
    "fid": ("3D FID on MedicalNet ResNet-50 features", _add_feature_metric_arguments, _run_fid),
    "mmd": ("MMD on MedicalNet features (paper protocol: biased RBF MMD, median-heuristic bandwidth)", _add_feature_metric_arguments, _run_mmd),
    "msssim": ("3D MS-SSIM diversity of generated volumes", _add_msssim_arguments, _run_msssim),
    "wgan": ("train WGAN-GP critics (real vs fake_0, fake_1) or --eval their Wasserstein estimate", _add_wgan_arguments, _run_wgan),
    "offline": ("weightless metrics: HU histogram, tissue fractions, radial power spectrum, anatomy; real-vs-real floor and "
                "bootstrap intervals", _add_offline_arguments, _run_offline),
    "memorisation": ("nearest-neighbour distances of samples to the training set vs held-out real volumes",
                     _add_memorisation_arguments, _run_memorisation),
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` with its sub-subcommands to the ``prdit`` command's subparsers."""
    parser = subparsers.add_parser("evaluate", help="evaluate generated volumes against real ones",
                                   description="FID, MMD, MS-SSIM, WGAN-GP Wasserstein critic and weightless metrics, each with its protocol.")
    commands = parser.add_subparsers(dest="evaluate_command", metavar="METRIC", required=True)
    for name, (summary, add_arguments, run) in COMMANDS.items():
        command = commands.add_parser(name, help=summary, description=summary)
        add_arguments(command)
        command.set_defaults(func=run)


def script_main(name: str, argv: list[str] | None = None) -> int:
    """Entry point of ``evaluations/<name>.py``: the ``prdit evaluate <name>`` command as a standalone script."""
    set_openmp_waiting()
    summary, add_arguments, run = COMMANDS[name]
    parser = argparse.ArgumentParser(description=summary)
    add_arguments(parser)
    return run_command(run, parser.parse_args(argv), parser.prog)
