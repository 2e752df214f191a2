"""The samplers: each a short function that reads like its algorithm (in the style of NVlabs/edm).

Every sampler is called as ``sampler(denoise, x, grid, noise)``: ``denoise(x, time)`` evaluates the network
once (guidance and bookkeeping are already applied), ``grid`` is the time grid in the process's own units from
pure noise to data, and ``noise()`` draws fresh standard-normal noise the shape of ``x``:

- IaN samplers walk the angle ``phi`` from pi/2 (noise) to 0 (data); ``denoise`` returns ``(x0_hat, eps_hat)``.
- Flow samplers walk ``t`` from 0 (noise) to 1 (data); ``denoise`` returns ``(velocity, x0_hat)``.

Every sampler returns ``(x, last x0_hat)``. A process lists its samplers in its table of
:class:`prdit.diffusion.base.SamplerSpec`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Denoise = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
Noise = Callable[[], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------
# IaN samplers: x = cos(phi) x0 + sin(phi) eps, eps ~ N(0, sigma^2); dx/dphi = -sin(phi) x0 + cos(phi) eps
# ----------------------------------------------------------------------------------------------------------


def ian_euler(denoise: Denoise, x: torch.Tensor, phis: Sequence[float], noise: Noise):
    """The paper's deterministic sampler: Euler steps on the angle ODE."""
    for phi, phi_next in zip(phis[:-1], phis[1:]):
        x0, eps = denoise(x, phi)
        x = x + (phi_next - phi) * (-math.sin(phi) * x0 + math.cos(phi) * eps)
    return x, x0


def ian_pc(denoise: Denoise, x: torch.Tensor, phis: Sequence[float], noise: Noise, sigma: float):
    """The paper's hot predictor-corrector sampler.

    Predictor: a deterministic Euler jump of two steps, phi_i -> phi_(i+2). Corrector: exact forward re-noising
    back to phi_(i+1), x <- a x + sqrt(1 - a^2) sigma z with a = cos(phi_(i+1)) / cos(phi_(i+2)), which keeps
    the marginal of the process. As in the paper's code, a step predicts and corrects only while its two-step
    target lies above the data end (phi_(i+2) > 0); the last two steps are plain Euler.
    """
    n = len(phis) - 1
    for i in range(n):
        x0, eps = denoise(x, phis[i])
        slope = -math.sin(phis[i]) * x0 + math.cos(phis[i]) * eps
        if i + 2 <= n and phis[i + 2] > 0:
            x = x + (phis[i + 2] - phis[i]) * slope
            a = math.cos(phis[i + 1]) / math.cos(phis[i + 2])
            x = a * x + math.sqrt(1 - a * a) * sigma * noise()
        else:
            x = x + (phis[i + 1] - phis[i]) * slope
    return x, x0


def ian_2m(denoise: Denoise, x: torch.Tensor, phis: Sequence[float], noise: Noise):
    """Few-step sampler: second-order multistep (one network call a step), DPM-Solver++(2M)'s idea on the angle ODE.

    Both heads are extrapolated linearly in phi from this call and the previous one, and the ODE is integrated
    exactly over the step: with h = phi' - phi and slopes dx0, deps,
        x' = x + (cos phi' - cos phi) x0 + (sin phi' - sin phi) eps
               + (h cos phi' - sin phi' + sin phi) dx0 + (h sin phi' + cos phi' - cos phi) deps.
    The first step has no history (slopes 0): it is DDIM, exact for constant heads.
    """
    previous = None
    for phi, phi_next in zip(phis[:-1], phis[1:]):
        x0, eps = denoise(x, phi)
        h = phi_next - phi
        x = x + (math.cos(phi_next) - math.cos(phi)) * x0 + (math.sin(phi_next) - math.sin(phi)) * eps
        if previous is not None:
            phi_prev, x0_prev, eps_prev = previous
            dx0, deps = (x0 - x0_prev) / (phi - phi_prev), (eps - eps_prev) / (phi - phi_prev)
            x = x + (h * math.cos(phi_next) - math.sin(phi_next) + math.sin(phi)) * dx0
            x = x + (h * math.sin(phi_next) + math.cos(phi_next) - math.cos(phi)) * deps
        previous = (phi, x0, eps)
    return x, x0


# ----------------------------------------------------------------------------------------------------------
# Flow samplers: x = (1 - t) noise + t data, dx/dt = v = data - noise
# ----------------------------------------------------------------------------------------------------------


def flow_euler(denoise: Denoise, x: torch.Tensor, ts: Sequence[float], noise: Noise):
    """Euler steps on dx/dt = v from t = 0 (noise) to t = 1 (data)."""
    for t, t_next in zip(ts[:-1], ts[1:]):
        v, x0 = denoise(x, t)
        x = x + (t_next - t) * v
    return x, x0


def flow_heun(denoise: Denoise, x: torch.Tensor, ts: Sequence[float], noise: Noise, correct_last: bool = True):
    """Heun's second-order method (EDM's Algorithm 1 without churn); two network calls a step.

    ``correct_last=False`` skips the correction on the last step, as EDM does: guided sampling needs it, since a
    guided x0_hat has no finite velocity at the data end t = 1.
    """
    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        v, x0 = denoise(x, t)
        x_next = x + (t_next - t) * v
        if correct_last or i < len(ts) - 2:
            v_next, x0 = denoise(x_next, t_next)
            x_next = x + (t_next - t) * 0.5 * (v + v_next)
        x = x_next
    return x, x0
