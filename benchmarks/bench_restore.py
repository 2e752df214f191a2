"""Inverse problems with the frozen prior (``prdit.inverse``) against the classical baselines, on held-out phantoms.

Every task measures a held-out phantom (seeds 10000 and up; training uses 0-199) without noise, then compares the
operator's classical baseline, one posterior sample (``num_samples=1``) and the posterior mean of ``--samples``
samples (seeds 0 .. samples-1; sample 0 is the one-sample restore): PSNR and SSIM over the prior's HU window
(the shipped v1 prior's [-1000, 1000] in the stored results), mean absolute error and signed bias (HU) per tissue band of the truth, data consistency ||A x - y|| / ||y|| and
seconds per volume. Tasks: super-resolution x2 and x4, inpainting of a missing central cube (half of each
side), deblurring (Gaussian sigma 2 voxels, 7 taps, as TF-PRDiT's config), sparse-view X-ray with 1, 2, 4, 8 views.

Default (about 45 CPU seconds per volume on one thread, 12 CPU minutes in all; on a loaded shared machine the
wall time is several times that, so ``--max-minutes`` bounds it): ``python -m benchmarks.bench_restore``;
quick check: ``--volumes 2 --tasks sr2 xray2``; another model: ``--ckpt results/...``. Writes
``results/<name>.json`` and ``results/<name>.png`` (metric plot) and ``results/<name>_examples.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks import common
from prdit.data.phantom import generate_phantom
from prdit.demo import SHIPPED_WEIGHTS
from prdit.inverse import Deblurring, Inpainting, Operator, SparseViewXray, SuperResolution, central_cube_mask, uniform_angles
from prdit.inverse.metrics import ERROR_BANDS_HU, reconstruction_metrics
from prdit.io import atomic_write_text
from prdit.sample import load_pipeline

HELD_OUT_SEED = 10_000  # phantoms 0-199 train the shipped model; bench_quality holds out 10000+ as well

TASKS: dict[str, tuple[str, Callable[[int, tuple], Operator]]] = {
    "sr2": ("super-resolution x2", lambda size, spacing: SuperResolution(2)),
    "sr4": ("super-resolution x4", lambda size, spacing: SuperResolution(4)),
    "inpainting": ("inpainting (central cube, 1/2 side)", lambda size, spacing: Inpainting(central_cube_mask((size,) * 3, 0.5))),
    "deblurring": ("deblurring (sigma 2 vox, 7 taps)", lambda size, spacing: Deblurring(2.0, 7)),
    **{f"xray{v}": (f"X-ray {v} view{'s' if v > 1 else ''}",
                    lambda size, spacing, v=v: SparseViewXray(uniform_angles(v), (size,) * 3, spacing)) for v in (1, 2, 4, 8)},
}
METHODS = ("baseline", "restore-1", "restore-mean")


def flatten(metrics: dict) -> dict[str, float]:
    out = {"psnr": metrics["psnr"], "ssim": metrics["ssim"], "data_consistency": metrics["data_consistency"]}
    for band, values in metrics["tissue"].items():
        out[f"{band}_mae"], out[f"{band}_bias"] = values["mae"], values["bias"]
    return out


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = rows[0].keys()
    return {k: {"mean": statistics.fmean(r[k] for r in rows if k in r),
                "std": statistics.pstdev([r[k] for r in rows if k in r])} for k in keys}


def timed(call: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float, float]:
    """The result, wall seconds and process CPU seconds of ``call`` (CPU seconds are what the wall time would be on
    an idle core with one thread; on a shared machine the wall time also counts waiting for the CPU)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def run(args: argparse.Namespace):
    """Yields the results so far after every volume (the script writes them, so a stopped run still reports)."""
    pipeline = load_pipeline(args.ckpt, device="cpu")
    sampler, steps = pipeline.diffusion.resolve(args.sampler, args.steps)
    size = pipeline.input_size
    seeds = range(HELD_OUT_SEED, HELD_OUT_SEED + args.volumes)
    per_volume: dict[str, dict[str, list]] = {task: {m: [] for m in METHODS} for task in args.tasks}
    seconds: dict[str, dict[str, list]] = {task: {} for task in args.tasks}
    examples: dict[str, dict[str, np.ndarray]] = {}
    began = time.perf_counter()
    bar = tqdm(total=len(seeds) * len(args.tasks), desc="restoring", unit="task")
    for index, seed in enumerate(seeds):
        if args.max_minutes and time.perf_counter() - began > 60 * args.max_minutes:
            print(f"stopping after {index} volume(s): --max-minutes {args.max_minutes} spent")
            break
        volume, spacing = generate_phantom(size, seed)
        truth = torch.from_numpy(volume)[None, None]
        for task in args.tasks:
            op = TASKS[task][1](size, tuple(spacing))
            y = op(truth)
            runs = {"baseline": lambda: op.baseline(y),
                    "restore-mean": lambda: pipeline.restore(y, op, steps=steps, sampler=sampler, seed=0,
                                                             num_samples=args.samples, return_samples=True)}
            if index < args.timed_volumes:  # one sample alone: the time a user waits for num_samples=1
                runs["restore-1"] = lambda: pipeline.restore(y, op, steps=steps, sampler=sampler, seed=0)
            outputs = {}
            for method, call in runs.items():
                outputs[method], wall, cpu = timed(call)
                for key, value in (("wall", wall), ("cpu", cpu)):
                    seconds[task].setdefault(f"{method}_{key}", []).append(value)
            baseline, samples = outputs["baseline"], outputs["restore-mean"]
            estimates = {"baseline": baseline, "restore-1": samples[:1], "restore-mean": samples.mean(0, keepdim=True)}
            for method, estimate in estimates.items():
                per_volume[task][method].append(flatten(reconstruction_metrics(op, estimate, truth, y, pipeline.mapping.hu_range())))
            if index == 0:
                examples[task] = {"truth": volume, **{m: e[0, 0].numpy() for m, e in estimates.items()},
                                  "std": samples.std(0, unbiased=False)[0].numpy()}
            bar.update()
        yield summary(args, pipeline, sampler, steps, seeds[: index + 1], per_volume, seconds, examples)
    bar.close()


def summary(args, pipeline, sampler, steps, seeds, per_volume, seconds, examples) -> dict:
    return {
        "protocol": {
            "checkpoint": str(pipeline.checkpoint), "checkpoint_sha256": pipeline.checkpoint_sha256,
            "model": pipeline.model.name, "volumes": len(seeds), "volumes_asked": args.volumes,
            "phantom_seeds": [seeds[0], seeds[-1]], "size": pipeline.input_size, "sampler": sampler, "steps": steps,
            "samples": args.samples, "measurement_noise": 0.0, "tissue_bands_hu": {k: list(v) for k, v in ERROR_BANDS_HU.items()},
            "window_hu": list(pipeline.mapping.hu_range()),
            "threads": torch.get_num_threads(), "timed_volumes": args.timed_volumes,
            "seconds": "per volume, wall and process CPU; restore-1: one sample alone (batch 1) on the first timed_volumes "
                       "volumes; restore-mean: all samples in one batch",
        },
        "machine": common.machine(),
        "tasks": {
            task: {
                "label": TASKS[task][0],
                "metrics": {m: summarise(per_volume[task][m]) for m in METHODS},
                "seconds": {key: statistics.fmean(v) for key, v in seconds[task].items()},
                "per_volume": per_volume[task],
            }
            for task in args.tasks
        },
        "examples": examples,
    }


def plot(results: dict, path) -> None:
    """PSNR and soft-tissue MAE per task, baseline vs restore (1 sample) vs posterior mean."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = list(results["tasks"])
    figure = Figure(figsize=(max(8, 1.2 * len(tasks)), 6.5))
    FigureCanvasAgg(figure)
    labels = {"baseline": "classical baseline", "restore-1": "restore, 1 sample",
              "restore-mean": f"restore, mean of {results['protocol']['samples']}"}
    for row, (key, name) in enumerate((("psnr", f"PSNR (dB) over {results['protocol'].get('window_hu', [-1000, 1000])} HU, higher is better"),
                                       ("soft_tissue_mae", "soft tissue MAE (HU), lower is better"))):
        axes = figure.add_subplot(2, 1, row + 1)
        width = 0.27
        for k, method in enumerate(METHODS):
            means = [results["tasks"][t]["metrics"][method][key]["mean"] for t in tasks]
            stds = [results["tasks"][t]["metrics"][method][key]["std"] for t in tasks]
            axes.bar(np.arange(len(tasks)) + (k - 1) * width, means, width, yerr=stds, label=labels[method], capsize=2)
        axes.set_xticks(np.arange(len(tasks)), [results["tasks"][t]["label"].split(" (")[0] for t in tasks], fontsize=8)
        axes.set_title(name, fontsize=9)
        axes.grid(axis="y", alpha=0.3)
        if row == 0:
            axes.legend(fontsize=8, ncols=3)
    p = results["protocol"]
    figure.suptitle(f"prdit restore on {p['volumes']} held-out phantoms ({p['model']}, {p['sampler']} {p['steps']} steps)",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def plot_examples(results: dict, path) -> None:
    """The central axial slice of the first phantom for every task: truth, baseline, restorations, uncertainty."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    examples = results["examples"]
    columns = [("truth", "truth"), ("baseline", "baseline"), ("restore-1", "restore (1 sample)"),
               ("restore-mean", f"mean of {results['protocol']['samples']}"), ("std", "std (uncertainty)")]
    figure = Figure(figsize=(2.0 * len(columns) + 1.2, 2.0 * len(examples) + 0.4), facecolor="black")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(len(examples), len(columns), left=0.14, right=0.99, bottom=0.01, top=0.95, wspace=0.03, hspace=0.05)
    for row, (task, images) in enumerate(examples.items()):
        for column, (key, title) in enumerate(columns):
            axes = figure.add_subplot(grid[row, column])
            image = np.asarray(images[key])[len(images[key]) // 2]
            if key == "std":
                axes.imshow(image, cmap="magma", vmin=0, vmax=300, interpolation="nearest")
            else:
                axes.imshow(image, cmap="gray", vmin=-1350, vmax=150, interpolation="nearest")
            axes.set_xticks([]), axes.set_yticks([])
            if row == 0:
                axes.set_title(title, color="white", fontsize=8)
            if column == 0:
                axes.set_ylabel(results["tasks"][task]["label"].split(" (")[0], color="white", fontsize=8)
    figure.suptitle("axial slice of held-out phantom 10000 (lung window; std 0-300 HU)", color="white", fontsize=9)
    figure.savefig(path, dpi=100, facecolor="black")


def table(results: dict) -> str:
    """The Markdown table of benchmarks/README.md."""
    header = ("| task | method | PSNR (dB) | SSIM | MAE air / lung / fat / soft tissue / bone (HU) | bias soft tissue / bone (HU) "
              "| data consistency | CPU s (wall s) / volume |\n|---|---|---|---|---|---|---|---|")
    lines = [header]
    names = {"baseline": "baseline", "restore-1": "restore, 1 sample", "restore-mean": f"restore, mean of {results['protocol']['samples']}"}
    for task, entry in results["tasks"].items():
        for method in METHODS:
            m = entry["metrics"][method]
            mae = " / ".join(f"{m[f'{b}_mae']['mean']:.0f}" if f"{b}_mae" in m else "-" for b in ERROR_BANDS_HU)
            bias = " / ".join(f"{m[f'{b}_bias']['mean']:+.0f}" if f"{b}_bias" in m else "-" for b in ("soft_tissue", "bone"))
            wall, cpu = entry["seconds"].get(f"{method}_wall"), entry["seconds"].get(f"{method}_cpu")
            seconds = "-" if wall is None else f"{cpu:.1f} ({wall:.1f})"
            lines.append(
                f"| {entry['label'] if method == 'baseline' else ''} | {names[method]} | {m['psnr']['mean']:.2f} ± {m['psnr']['std']:.2f} "
                f"| {m['ssim']['mean']:.3f} | {mae} | {bias} | {m['data_consistency']['mean']:.3f} "
                f"| {seconds} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=str(SHIPPED_WEIGHTS), help="the prior (default: the shipped phantom model)")
    parser.add_argument("--volumes", type=int, default=16, help="held-out phantoms (default 16)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--samples", type=int, default=4, help="posterior samples for the mean (default 4)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the sampler's own)")
    parser.add_argument("--sampler", default=None, help="sampler (default: the checkpoint's default)")
    parser.add_argument("--timed-volumes", dest="timed_volumes", type=int, default=1,
                        help="volumes on which the one-sample restore is also run and timed alone (default 1)")
    parser.add_argument("--max-minutes", dest="max_minutes", type=float, default=None,
                        help="start no new volume after this many minutes (results cover the volumes done)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--name", default="restore_cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    for results in run(args):  # rewritten after every volume
        results["wall_seconds"] = time.perf_counter() - began
        examples = results.pop("examples")
        path = common.RESULTS_DIR / f"{args.name}.json"
        atomic_write_text(path, json.dumps(results, indent=2) + "\n")
    plot(results, common.RESULTS_DIR / f"{args.name}.png")
    plot_examples({**results, "examples": examples}, common.RESULTS_DIR / f"{args.name}_examples.png")
    print(table(results))
    print(f"wrote {path} and {args.name}.png, {args.name}_examples.png in {results['wall_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
