"""Quality at equal compute on phantoms: two-stage PRDiT, stage 1 alone, a plain DiT and the MONAI U-Net (DDPM).

Every contender trains for the same CPU time (``--minutes`` of process CPU time, which is fair on a shared
machine where wall-clock time is not) on the same phantom volumes and batches, then draws ``--samples``
volumes with ``--steps`` network calls (PRDiT and plain DiT: the default IaN sampler; U-Net: DDIM). Two-stage
PRDiT spends half the budget on stage 1 and half on stage 2 (frozen stage 1), so its total is the same.
Metrics against held-out phantoms: FID and MMD (MedicalNet features; random-init fallback without weights)
and the weightless HU-histogram and power-spectrum distances, next to the real-vs-real floor of two disjoint
real sets of the same size.

Default (a few minutes on 2 cores): ``python -m benchmarks.bench_quality``; longer: ``--minutes 10 --samples 32``.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from benchmarks import common
from prdit.data.intensity import IntensityMapping
from prdit.data.phantom import generate_phantom
from prdit.diffusion import create_diffusion
from prdit.evaluation import evaluate_sets

CONTENDERS = ("prdit-2stage", "prdit-s1", "plain-dit", "unet")
LABELS = {"prdit-2stage": "PRDiT two-stage", **common.LABELS}


def phantoms(seeds: range, size: int) -> tuple[list[np.ndarray], tuple[float, float, float]]:
    volumes = [generate_phantom(size, seed) for seed in seeds]
    return [v for v, _ in volumes], tuple(volumes[0][1])


def train(bench: common.Bench, data: torch.Tensor, cpu_seconds: float, seed: int) -> dict:
    """Train on random batches of ``data`` until ``cpu_seconds`` of process CPU time are spent."""
    generator = torch.Generator().manual_seed(seed)
    batch = bench.batch.shape[0]
    began, wall, steps, losses = time.process_time(), time.perf_counter(), 0, []
    bench.model.train()
    while time.process_time() - began < cpu_seconds:
        bench.batch = data[torch.randint(0, len(data), (batch,), generator=generator)]
        losses.append(bench.step())
        steps += 1
    return {"steps": steps, "cpu_seconds": time.process_time() - began, "wall_seconds": time.perf_counter() - wall,
            "final_loss": float(np.mean(losses[-20:]))}


@torch.no_grad()
def sample(kind: str, model: torch.nn.Module, n: int, size: int, steps: int, seed: int) -> torch.Tensor:
    """``n`` volumes in model space with ``steps`` network calls each."""
    model.eval()
    shape = (n, 1, size, size, size)
    generator = torch.Generator().manual_seed(seed)
    if kind != "unet":
        diffusion = create_diffusion(None)
        return diffusion.sample(model, shape, sampler="ian-2m", steps=steps, generator=generator, progress=False)
    from monai.networks.schedulers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=generator)
    for t in scheduler.timesteps:
        x, _ = scheduler.step(model(x, torch.full((n,), int(t))), int(t), x)
    return x


def metrics(real: list[np.ndarray], fake: list[np.ndarray], spacing: tuple[float, float, float]) -> dict:
    report = evaluate_sets(real, fake, spacing=spacing, max_ms_ssim_pairs=10)
    return {"fid": report["fid"], "mmd": report["mmd"], "offline": report.get("offline"),
            "weights": report["protocol"].get("weights")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=0.5, help="CPU minutes of training per contender")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--train", type=int, default=64, help="training phantoms")
    parser.add_argument("--samples", type=int, default=8, help="generated (and held-out real) volumes per set")
    parser.add_argument("--steps", type=int, default=10, help="network calls per generated volume")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="quality_cpu")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    preset = common.PRESETS["tiny"]
    budget = args.minutes * 60

    mapping = IntensityMapping("hu")
    train_hu, spacing = phantoms(range(args.train), args.size)
    held_out, _ = phantoms(range(10_000, 10_000 + args.samples), args.size)
    second_real, _ = phantoms(range(20_000, 20_000 + args.samples), args.size)
    data = torch.from_numpy(np.stack([mapping.to_model(v) for v in train_hu]))[:, None].float()
    print(f"{len(train_hu)} training phantoms {args.size}^3, {args.samples} held-out; {budget:.0f} CPU s each", flush=True)

    def bench(kind: str) -> common.Bench:
        return common.build_bench(kind, preset, args.size, args.batch, lr=args.lr)

    runs: dict[str, dict] = {}
    trained: dict[str, torch.nn.Module] = {}
    wanted = set(args.contenders)
    if wanted & {"prdit-s1", "prdit-2stage"}:
        stage1 = bench("prdit-s1")
        first_half = train(stage1, data, budget / 2, args.seed)
        half_weights = copy.deepcopy(stage1.model.state_dict())
        second_half = train(stage1, data, budget / 2, args.seed + 1)
        runs["prdit-s1"] = {"steps": first_half["steps"] + second_half["steps"],
                            "cpu_seconds": first_half["cpu_seconds"] + second_half["cpu_seconds"],
                            "final_loss": second_half["final_loss"], "description": stage1.description}
        trained["prdit-s1"] = stage1.model
        if "prdit-2stage" in wanted:
            stage2 = bench("prdit-s2")
            stage2.model.load_stage1_state_dict(half_weights)
            run = train(stage2, data, budget / 2, args.seed + 1)
            runs["prdit-2stage"] = {"stage1_steps": first_half["steps"], "stage2_steps": run["steps"],
                                    "cpu_seconds": first_half["cpu_seconds"] + run["cpu_seconds"],
                                    "final_loss": run["final_loss"], "description": stage2.description}
            trained["prdit-2stage"] = stage2.model
    for kind in ("plain-dit", "unet"):
        if kind in wanted:
            contender = bench(kind)
            runs[kind] = {**train(contender, data, budget, args.seed), "description": contender.description}
            trained[kind] = contender.model
    for kind in args.contenders:
        print(f"{kind:13} trained {runs[kind]}", flush=True)

    results = {"real-vs-real floor": metrics(held_out, second_real, spacing)}
    print(f"{'real-vs-real':13} FID {results['real-vs-real floor']['fid']:.4g}  MMD {results['real-vs-real floor']['mmd']:.4g}")
    for kind in args.contenders:
        began = time.perf_counter()
        fake = sample(kind, trained[kind], args.samples, args.size, args.steps, args.seed + 7)
        seconds = time.perf_counter() - began
        fake_hu = [mapping.to_hu(v[0].numpy()) for v in fake]
        results[kind] = {**metrics(held_out, fake_hu, spacing), "training": runs[kind], "sampling_seconds": seconds}
        print(f"{kind:13} FID {results[kind]['fid']:.4g}  MMD {results[kind]['mmd']:.4g}  "
              f"sampling {seconds:.1f} s", flush=True)
    payload = {"machine": common.machine(), "args": vars(args), "preset": common.as_dict(preset), "results": results}
    print(f"wrote {common.write_json(args.name, payload)}")
    plot(results, str(common.RESULTS_DIR / f"{args.name}.png"))


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("fid", "mmd")):
        ax.bar(range(len(names)), [results[n][key] for n in names], color=["grey"] + ["C0"] * (len(names) - 1))
        ax.set_xticks(range(len(names)), [LABELS.get(n, n) for n in names], rotation=20, fontsize=8)
        ax.set_title(f"{key.upper()} to held-out phantoms (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
