"""``Linear``: ``nn.Linear`` (same parameters, same state-dict keys) whose fp32 CPU matmuls go through oneDNN.

On CPU, fp32 ``F.linear`` and its backward run on the BLAS that torch was built with (MKL in the official
wheels). MKL takes a slower code path on non-Intel processors; oneDNN, which torch also ships and already uses
for bf16, picks its kernels from the instruction set alone. On an AVX-512 AMD EPYC, a DiT MLP layer
([512, 768] x [768, 3072], forward and both gradients) ran 1.5x faster through oneDNN than through MKL. The
three products of a linear layer (output, input gradient, weight gradient) are therefore computed with
oneDNN's inner product here, as the same mathematics in a different summation order.

Everything else takes the ordinary ``F.linear``: CUDA, autocast (bf16 already runs on oneDNN), other dtypes,
``torch.compile`` (inductor picks its own kernels) and builds without oneDNN. ``set_cpu_onednn(False)``
switches the CPU path off, e.g. to compare the two.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

_ENABLED = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def set_cpu_onednn(enabled: bool) -> bool:
    """Route fp32 CPU linear layers through oneDNN (``True``, the default where available); returns the old value."""
    global _ENABLED
    previous = _ENABLED
    _ENABLED = bool(enabled) and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    return previous


def _inner_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] @ weight[N, K]^T (+ bias) -> [M, N] with oneDNN; both operands may be transposed views."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        # Keep only what the backward needs: a frozen layer saves no input, a first layer no weight.
        ctx.save_for_backward(rows if ctx.needs_input_grad[1] else None, weight if ctx.needs_input_grad[0] else None)
        ctx.input_shape = x.shape
        return _inner_product(rows, weight, bias).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _inner_product(grad_rows, weight.t(), None).reshape(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_weight = _inner_product(grad_rows.t(), rows.t(), None)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` with the oneDNN path for fp32 on CPU (see the module docstring)."""
    if (
        _ENABLED
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    ):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` computed by :func:`linear`; parameters and state-dict keys are nn.Linear's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
