"""Measurement-guided sampling with a frozen PRDiT prior.

TF-PRDiT (Fredy-Zhang/TF-PRDiT, ``diffusion/image_noise_diffusion.py``) guides the paper's predictor-corrector
sampler by the gradient of ||A x0_hat - y|| taken with respect to the denoised estimate x0_hat (not through the
network), added to each predictor step. prdit does the same through the sampler's guidance hook, which
replaces x0_hat at every network call, with the gradient step made a few conjugate-gradient steps on the
least-squares problem min ||A x - y||^2 started from x0_hat (CGLS): the estimate moves to agree with the
measurement along the operator's row space and keeps what the prior put in its null space (the decomposed
diffusion sampler of Chung et al., ICLR 2024). The sampler then continues from the guided x0_hat; the result is
the last guided x0_hat. Only ``op.linear`` and ``op.adjoint`` are needed, no network gradient, so guidance costs
a few operator applications per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from prdit.errors import PrditError
from prdit.inverse.operators import Operator


@dataclass(frozen=True)
class DataConsistency:
    """How the measurement steers the sampler.

    ``iterations``: conjugate-gradient steps on ||A x - y||^2 per network call (0: unguided sampling; None: the
    operator's ``guidance_iterations``). Few steps regularise (they fix the components the operator measures
    well first); many approach the projection onto the measurement.
    """

    iterations: int | None = None

    def __post_init__(self) -> None:
        value = self.iterations
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 0):
            raise PrditError(f"guidance iterations must be a non-negative integer, got {self.iterations!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-batch-element inner products [B]."""
    return (a * b).flatten(1).sum(1)


def _scale(c: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batch element i of ``v`` times ``c[i]``."""
    return c.view(-1, *(1,) * (v.dim() - 1)) * v


def conjugate_gradient_least_squares(op: Operator, y: torch.Tensor, x: torch.Tensor, iterations: int) -> torch.Tensor:
    """``iterations`` CGLS steps on min ||op(x) - y||^2 from ``x`` (each batch element on its own).

    CG on the normal equations A^T A x = A^T (y - op(0)) without forming A^T A; with A = I one step lands on y.
    """
    residual = y - op(x)
    gradient = op.adjoint(residual)
    direction = gradient
    gamma = _dot(gradient, gradient)
    for _ in range(iterations):
        image = op.linear(direction)
        curvature = _dot(image, image)
        alpha = torch.where(curvature > 0, gamma / curvature.clamp(min=torch.finfo(curvature.dtype).tiny), 0.0)
        x = x + _scale(alpha, direction)
        residual = residual - _scale(alpha, image)
        gradient = op.adjoint(residual)
        gamma_next = _dot(gradient, gradient)
        beta = torch.where(gamma > 0, gamma_next / gamma.clamp(min=torch.finfo(gamma.dtype).tiny), 0.0)
        direction = gradient + _scale(beta, direction)
        gamma = gamma_next
    return x


def measurement_guidance(
    op: Operator, y: torch.Tensor, to_hu: Callable[[torch.Tensor], torch.Tensor],
    to_model: Callable[[torch.Tensor], torch.Tensor], config: DataConsistency,
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """The sampler hook ``guidance(x0_hat, t) -> x0_hat`` in model space for measurement ``y`` (broadcast over the batch).

    ``to_hu`` and ``to_model`` are the (affine, unclipped) maps between model space and HU.
    """
    iterations = op.guidance_iterations if config.iterations is None else config.iterations

    def guide(x0_hat: torch.Tensor, t: float) -> torch.Tensor:
        if iterations == 0:
            return x0_hat
        # fp32 whatever the network's precision: under bf16 autocast the operators' matrix products would round
        with torch.autocast(x0_hat.device.type, enabled=False):
            start = to_hu(x0_hat.float().clamp(-1, 1))
            target = y.to(start).expand(start.shape[0], *y.shape[1:])
            return to_model(conjugate_gradient_least_squares(op, target, start, iterations))

    return guide
