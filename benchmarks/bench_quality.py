"""Quality at equal compute on phantoms: two-stage PRDiT, stage 1 alone, a plain DiT and the MONAI U-Net (DDPM).

Every contender trains for the same process CPU time (``--minutes``; fair on a shared machine, where wall-clock
time is not; only training steps are counted, never evaluation) on the same phantom volumes with the same batch
size, learning rate and EMA, then draws volumes from its EMA weights with ``--steps`` network calls (PRDiT and
the plain DiT: ``ian-2m``; U-Net: DDIM). Two-stage PRDiT spends the first half of the budget on stage 1 and the
second half on stage 2 (stage 1 frozen), so up to half the budget it *is* the stage-1 contender.

Along training, at ``--points`` equally spaced CPU times, ``--curve-samples`` volumes give the curves of metric vs
CPU minutes; at the end ``--samples`` volumes give the table: weightless metrics (HU histogram, tissue fractions,
power spectrum, anatomy; :mod:`prdit.evaluation.offline`) with bootstrap 95% intervals, FID/MMD on the MedicalNet
features (random-init fallback without weights), all against ``--samples`` held-out phantoms, next to the
real-vs-real floor (a second disjoint set of held-out phantoms of the same size). ``--second-seed-for K`` reruns
the K best contenders (by HU-histogram W1) with another seed (initialisation, batches, noise, samples).

Smoke run: ``python -m benchmarks.bench_quality --minutes 0.2 --samples 4 --curve-samples 2 --points 2``;
the documented run: see benchmarks/README.md. On a machine with several cores, run disjoint ``--contenders`` (or
seeds) as separate one-thread processes with their own ``--name``, then ``--merge NAME ...`` joins their results
into one table, one set of curves and one sample grid.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np
import torch

from benchmarks import common
from prdit.data.intensity import IntensityMapping
from prdit.data.phantom import generate_phantom
from prdit.diffusion import create_diffusion
from prdit.evaluation import evaluate_sets
from prdit.evaluation.descriptions import lookup, metric_lines
from prdit.evaluation.offline import bootstrap_intervals, compare_statistics, volume_statistics
from prdit.train.ema import create_ema, ema_decay_at, update_ema

CONTENDERS = ("prdit-2stage", "prdit-s1", "plain-dit", "unet", "unet-ian")
LABELS = {"prdit-2stage": "PRDiT two-stage", **common.LABELS}
# metric -> (label, the value a perfect generator has: the floor is drawn instead when None)
CURVES = {
    "hu_histogram.wasserstein_hu": ("HU histogram W1 (HU), lower is better", None),
    "tissue_fractions.lung.abs_difference": ("|lung fraction - real|, lower is better", None),
    "tissue_fractions.soft_tissue.abs_difference": ("|soft-tissue fraction - real|, lower is better", None),
    "power_spectrum.high_frequency_power_ratio": ("power above 0.25 cycles/voxel, generated / real (1 is best)", 1.0),
    "anatomy.score": ("anatomy score, lower is better", None),
}
EMA_DECAY = 0.999


def phantoms(seeds: range, size: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    volumes = [generate_phantom(size, seed) for seed in seeds]
    return np.stack([v for v, _ in volumes]), tuple(volumes[0][1])


class Run:
    """One contender's training: its model, EMA, step count and the CPU seconds its training steps used."""

    def __init__(self, bench: common.Bench, seed: int) -> None:
        self.bench, self.ema = bench, create_ema(bench.model)
        self.generator = torch.Generator().manual_seed(seed)
        self.steps, self.cpu_seconds, self.wall_seconds, self.losses = 0, 0.0, 0.0, []

    def train_until(self, data: torch.Tensor, cpu_seconds: float) -> None:
        batch = self.bench.batch.shape[0]
        self.bench.model.train()
        while self.cpu_seconds < cpu_seconds:
            began, wall = time.process_time(), time.perf_counter()
            self.bench.batch = data[torch.randint(0, len(data), (batch,), generator=self.generator)]
            self.losses.append(self.bench.step())
            update_ema(self.ema, self.bench.model, ema_decay_at(self.steps, EMA_DECAY, warmup=True))
            self.steps += 1
            self.cpu_seconds += time.process_time() - began
            self.wall_seconds += time.perf_counter() - wall

    def summary(self) -> dict:
        return {"steps": self.steps, "cpu_seconds": self.cpu_seconds, "wall_seconds": self.wall_seconds,
                "final_loss": float(np.mean(self.losses[-20:])) if self.losses else None, "description": self.bench.description}


@torch.no_grad()
def sample(kind: str, model: torch.nn.Module, n: int, size: int, steps: int, seed: int, batch: int = 16) -> torch.Tensor:
    """``n`` volumes in model space with ``steps`` network calls each."""
    model.eval()
    parts = []
    for first in range(0, n, batch):
        shape = (min(batch, n - first), 1, size, size, size)
        generator = torch.Generator().manual_seed(seed + first)
        if kind != "unet":
            parts.append(create_diffusion(None).sample(model, shape, sampler="ian-2m", steps=steps, generator=generator, progress=False))
            continue
        from monai.networks.schedulers import DDIMScheduler

        scheduler = DDIMScheduler(num_train_timesteps=1000)
        scheduler.set_timesteps(steps)
        x = torch.randn(shape, generator=generator)
        for t in scheduler.timesteps:
            x, _ = scheduler.step(model(x, torch.full((shape[0],), int(t))), int(t), x)
        parts.append(x)
    return torch.cat(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=0.5, help="CPU minutes of training per contender")
    parser.add_argument("--points", type=int, default=2, help="evaluations along training (the curves)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--train", type=int, default=64, help="training phantoms")
    parser.add_argument("--samples", type=int, default=8, help="generated (and held-out real) volumes per set at the end")
    parser.add_argument("--curve-samples", type=int, default=4, help="generated volumes per point of the curves")
    parser.add_argument("--steps", type=int, default=10, help="network calls per generated volume")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS[:4]), choices=CONTENDERS,
                        help="unet-ian: the U-Net trained with PRDiT's IaN loss and sampler instead of DDPM (not run by default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--second-seed-for", type=int, default=0, help="rerun the K best contenders with seed + 1")
    parser.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--name", default="quality_cpu")
    parser.add_argument("--merge", nargs="+", metavar="NAME", help="join earlier runs' results/<NAME>.json into --name")
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.name)
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load_before, began = os.getloadavg(), time.perf_counter()
    mapping = IntensityMapping("hu", window=(-1000.0, 1000.0))  # the window of the stored results
    train_hu, spacing = phantoms(range(args.train), args.size)
    held_out, _ = phantoms(range(10_000, 10_000 + args.samples), args.size)
    second_real, _ = phantoms(range(20_000, 20_000 + args.samples), args.size)
    data = torch.from_numpy(mapping.to_model(train_hu))[:, None].float()
    real_stats = volume_statistics(held_out)
    floor = compare_statistics(real_stats, volume_statistics(second_real))
    floor_features = evaluate_sets(list(held_out), list(second_real), spacing=spacing, max_ms_ssim_pairs=10)
    print(f"{args.train} training phantoms {args.size}^3, {args.samples} held-out; {args.minutes} CPU min per contender; "
          f"load average {load_before[0]:.1f}", flush=True)

    def evaluate(kind: str, model: torch.nn.Module, n: int, seed: int) -> tuple[dict, np.ndarray, float]:
        cpu = time.process_time()
        fake = mapping.to_hu(sample(kind, model, n, args.size, args.steps, seed + 7)[:, 0].numpy())
        return compare_statistics(real_stats, volume_statistics(fake)), fake, time.process_time() - cpu

    def run_contenders(kinds: list[str], seed: int) -> dict:
        budget, marks = args.minutes * 60, [args.minutes * 60 * (i + 1) / args.points for i in range(args.points)]
        out: dict = {kind: {"curve": []} for kind in kinds}

        def bench(kind: str) -> common.Bench:
            return common.build_bench(kind, common.PRESETS["tiny"], args.size, args.batch, lr=args.lr, seed=seed)

        def point(kind: str, run: Run, cpu: float, extra: dict | None = None) -> None:
            result, _, seconds = evaluate(kind, run.ema, args.curve_samples, seed)
            out[kind]["curve"].append({"cpu_minutes": cpu / 60, **{k: lookup(result, k) for k in CURVES}, **(extra or {})})
            print(f"  {kind:13} seed {seed} at {cpu / 60:.2f} CPU min ({run.steps} steps): "
                  f"W1 {lookup(result, 'hu_histogram.wasserstein_hu'):.1f} HU (sampling {seconds:.0f} CPU s)", flush=True)

        if {"prdit-s1", "prdit-2stage"} & set(kinds):
            stage1 = Run(bench("prdit-s1"), seed)
            for mark in [m for m in marks if m <= budget / 2]:
                stage1.train_until(data, mark)
                for kind in {"prdit-s1", "prdit-2stage"} & set(kinds):
                    point(kind, stage1, stage1.cpu_seconds)
            stage1.train_until(data, budget / 2)
            half = copy.deepcopy(stage1.ema.state_dict()), stage1.summary()
            if "prdit-s1" in kinds:
                for mark in [m for m in marks if m > budget / 2]:
                    stage1.train_until(data, mark)
                    point("prdit-s1", stage1, stage1.cpu_seconds)
                out["prdit-s1"]["training"], out["prdit-s1"]["model"] = stage1.summary(), stage1.ema
            if "prdit-2stage" in kinds:
                stage2 = Run(bench("prdit-s2"), seed + 1)
                stage2.bench.model.load_stage1_state_dict(half[0])
                stage2.ema = create_ema(stage2.bench.model)
                for mark in [m for m in marks if m > budget / 2]:
                    stage2.train_until(data, mark - half[1]["cpu_seconds"])
                    point("prdit-2stage", stage2, half[1]["cpu_seconds"] + stage2.cpu_seconds)
                out["prdit-2stage"]["training"] = {"stage1": half[1], "stage2": stage2.summary(),
                                                   "cpu_seconds": half[1]["cpu_seconds"] + stage2.cpu_seconds}
                out["prdit-2stage"]["model"] = stage2.ema
        for kind in [kind for kind in ("plain-dit", "unet", "unet-ian") if kind in kinds]:
            run = Run(bench(kind), seed)
            for mark in marks:
                run.train_until(data, mark)
                point(kind, run, run.cpu_seconds)
            out[kind]["training"], out[kind]["model"] = run.summary(), run.ema
        for kind in kinds:  # the table: --samples volumes, bootstrap intervals, FID/MMD
            model = out[kind].pop("model")
            result, fake, seconds = evaluate(kind, model, args.samples, seed)
            fake_stats = volume_statistics(fake)
            intervals = bootstrap_intervals(real_stats, fake_stats, list(CURVES), resamples=args.bootstrap, seed=seed)
            features = evaluate_sets(list(held_out), list(fake), spacing=spacing, max_ms_ssim_pairs=10)
            out[kind].update(offline=result, bootstrap_95={k: list(v) for k, v in intervals.items()}, sampling_cpu_seconds=seconds,
                             fid=features["fid"], mmd=features["mmd"], ms_ssim=features["ms_ssim"]["fake"]["mean"])
            out[kind]["preview"] = fake[:6]
            print(f"{LABELS[kind]} (seed {seed}, {out[kind]['training'].get('steps', '2 stages')} steps):", flush=True)
            for line in metric_lines(result, floor, intervals, prefix="offline."):
                print("    " + line)
            print(f"    FID {features['fid']:.4g} (real vs real {floor_features['fid']:.4g}), MMD {features['mmd']:.4g} "
                  f"(real vs real {floor_features['mmd']:.4g}); lower is better; {features['protocol']['weights']}", flush=True)
        return out

    results = {args.seed: run_contenders(list(args.contenders), args.seed)}
    if args.second_seed_for:
        leaders = sorted(args.contenders, key=lambda k: lookup(results[args.seed][k]["offline"], "hu_histogram.wasserstein_hu"))
        results[args.seed + 1] = run_contenders(leaders[: args.second_seed_for], args.seed + 1)
    previews = {f"{kind} seed {seed}": runs[kind].pop("preview") for seed, runs in results.items() for kind in runs}
    payload = {
        "machine": common.machine(), "args": vars(args), "preset": common.as_dict(common.PRESETS["tiny"]),
        "load_average": {"start": load_before, "end": os.getloadavg()}, "wall_minutes": (time.perf_counter() - began) / 60,
        "floor": {"offline": floor, "fid": floor_features["fid"], "mmd": floor_features["mmd"],
                  "ms_ssim": floor_features["ms_ssim"]["fake"]["mean"]},
        "results": {str(seed): runs for seed, runs in results.items()},
    }
    print(f"wrote {common.write_json(args.name, payload)}")
    np.savez_compressed(common.RESULTS_DIR / f"{args.name}_previews.npz", real=held_out[:6], **previews)
    plot_curves(payload, str(common.RESULTS_DIR / f"{args.name}_curves.png"))
    plot_samples(previews, held_out[:6], str(common.RESULTS_DIR / f"{args.name}_samples.png"))


def merge(names: list[str], name: str) -> None:
    """Join runs of the same protocol (same phantoms, budget and sampling) made as separate processes."""
    payloads = [json.loads((common.RESULTS_DIR / f"{n}.json").read_text()) for n in names]
    protocol = ("minutes", "points", "size", "train", "samples", "curve_samples", "steps", "batch", "lr", "bootstrap")
    for other, n in zip(payloads[1:], names[1:]):
        differing = [k for k in protocol if other["args"][k] != payloads[0]["args"][k]]
        if differing:
            raise SystemExit(f"error: {n}.json differs from {names[0]}.json in {', '.join(differing)}: not the same study")
    results: dict = {}
    for payload in payloads:
        for seed, runs in payload["results"].items():
            results.setdefault(seed, {}).update(runs)
    merged = {**payloads[0], "results": results, "merged_from": names,
              "wall_minutes": max(p["wall_minutes"] for p in payloads),
              "load_average": {n: p["load_average"] for n, p in zip(names, payloads)}}
    merged["args"] = {**payloads[0]["args"], "seed": min(int(s) for s in results), "contenders": sorted({k for r in results.values() for k in r})}
    previews: dict = {}
    for n in names:
        with np.load(common.RESULTS_DIR / f"{n}_previews.npz") as stored:
            real = stored["real"]
            previews.update({key: stored[key] for key in stored.files if key != "real"})
    print(f"wrote {common.write_json(name, merged)}")
    for seed, runs in sorted(results.items()):
        for kind, run in runs.items():
            values = {key: lookup(run["offline"], key) for key in CURVES}
            print(f"{LABELS[kind]} (seed {seed}): " + ", ".join(f"{key} {value:.4g}" for key, value in values.items() if value is not None))
    plot_curves(merged, str(common.RESULTS_DIR / f"{name}_curves.png"))
    plot_samples(dict(sorted(previews.items())), real, str(common.RESULTS_DIR / f"{name}_samples.png"))


def plot_curves(payload: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.6))
    for ax, (key, (label, target)) in zip(axes, CURVES.items()):
        for seed, runs in payload["results"].items():
            for index, (kind, run) in enumerate(runs.items()):
                xs = [p["cpu_minutes"] for p in run["curve"]]
                ax.plot(xs, [p[key] for p in run["curve"]], "o-" if seed == str(payload["args"]["seed"]) else "s--",
                        color=f"C{CONTENDERS.index(kind)}", label=f"{LABELS[kind]} (seed {seed})", markersize=4)
        reference = target if target is not None else lookup(payload["floor"]["offline"], key)
        ax.axhline(reference, color="grey", linestyle=":", label="real vs real" if target is None else "real")
        ax.set_xlabel("training CPU minutes")
        ax.set_title(label, fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)


def plot_samples(previews: dict, real: np.ndarray, path: str) -> None:
    """Axial middle slices (lung window): a row per contender and seed, the held-out phantoms last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {**{f"{LABELS[name.split(' seed')[0]]} (seed{name.split(' seed')[1]})": v for name, v in previews.items()},
            "held-out phantoms": real}
    columns = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns, 1.7 * len(rows)), squeeze=False)
    for row, (name, volumes) in enumerate(rows.items()):
        for column in range(columns):
            ax = axes[row, column]
            ax.axis("off")
            if column < len(volumes):
                ax.imshow(volumes[column][len(volumes[column]) // 2], cmap="gray", vmin=-1350, vmax=150)
        axes[row, 0].set_title(name, fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
