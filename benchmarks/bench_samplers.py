"""Few-step sampler accuracy on analytic problems, against the paper's ian-euler with 1000 steps.

The "network" is the exact posterior-mean denoiser of data whose voxels are i.i.d. from a known 1D
distribution, so every error below is the sampler's own. Problems: a Gaussian N(0.3, 0.2^2) and a two-mode
mixture (0.3 N(-0.6, 0.05^2) + 0.7 N(0.4, 0.1^2)). Columns:

- mean / std err: |sample - exact| relative to the data std, in %;
- mode err: |fraction of samples in the low mode - 0.3|, in percentage points (mixture only);
- W1: Wasserstein-1 distance to exact data draws, in units of the data std (its floor is the sampling noise);
- vs euler1000 / vs exact: RMS distance, sample by sample from the same starting noise, to ian-euler with 1000
  steps and to the exact ODE solution F^-1(Phi(z)), relative to the data std (empty for the stochastic ian-pc).

Run: ``python benchmarks/bench_samplers.py`` (CPU, about a minute).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from prdit.diffusion import create_diffusion
from prdit.diffusion.testing import MixtureDenoiser

PROBLEMS = {
    "gaussian": ([1.0], [0.3], [0.2]),
    "mixture": ([0.3, 0.7], [-0.6, 0.4], [0.05, 0.1]),
}
RUNS = {
    "ian": [("ian-euler", 1000), ("ian-pc", 1000), ("ian-euler", 50), ("ian-pc", 50), ("ian-2m", 50), ("ian-2m", 25),
            ("ian-2m", 15)],
    "flow": [("flow-euler", 100), ("flow-euler", 50), ("flow-heun", 25), ("flow-heun", 10)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8192, help="voxels per run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    shape = (1, 1, args.samples, 1, 1)  # one batch element: the analytic network's cost is per call
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    print(f"{'problem':9} {'sampler':10} {'steps':>5} {'NFE':>5} {'mean err%':>9} {'std err%':>8} {'mode err':>8} "
          f"{'W1':>7} {'vs euler1000':>12} {'vs exact':>8} {'s':>5}")
    for name, (weights, means, stds) in PROBLEMS.items():
        for process, runs in RUNS.items():
            diffusion = create_diffusion(process=process)
            model = MixtureDenoiser(diffusion, weights, means, stds)
            data = model.sample_data((args.samples,), torch.Generator().manual_seed(args.seed + 1)).numpy()
            scale = data.std()
            exact = model.transport(noise).flatten().numpy()
            if process == "ian":
                reference = diffusion.sample(model, shape, "ian-euler", 1000, noise=noise, progress=False).flatten().numpy()
            for sampler, steps in runs:
                began = time.perf_counter()
                x = diffusion.sample(model, shape, sampler, steps, noise=noise, progress=False,
                                     generator=torch.Generator().manual_seed(args.seed + 2)).flatten().numpy()
                seconds = time.perf_counter() - began
                mode_err = abs(np.mean(x < (means[0] + means[-1]) / 2) - weights[0]) * 100 if len(means) > 1 else float("nan")
                rms = lambda y: "" if sampler == "ian-pc" else f"{np.sqrt(np.mean((x - y) ** 2)) / scale:.4f}"  # noqa: E731
                print(f"{name:9} {sampler:10} {steps:5d} {diffusion.network_calls(sampler, steps):5d} "
                      f"{abs(x.mean() - data.mean()) / scale * 100:9.2f} {abs(x.std() - data.std()) / scale * 100:8.2f} "
                      f"{mode_err:8.2f} {wasserstein_distance(x, data) / scale:7.4f} {rms(reference):>12} {rms(exact):>8} "
                      f"{seconds:5.1f}")


if __name__ == "__main__":
    main()
