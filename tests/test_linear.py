import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prdit.models import linear as lin
from prdit.models.linear import Linear, linear, set_cpu_onednn

needs_onednn = pytest.mark.skipif(not lin._ENABLED, reason="this torch build has no oneDNN linear")


def _grads(fn, x, weight, bias):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, weight, bias)]
    out = fn(*leaves)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    return out.detach(), [t.grad if t is not None else None for t in leaves]


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 5), (2, 9, 5), (1, 1, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_output_and_all_gradients_match_f_linear(shape, with_bias):
    torch.manual_seed(0)
    x, weight = torch.randn(shape), torch.randn(11, 5)
    bias = torch.randn(11) if with_bias else None
    ours, our_grads = _grads(linear, x, weight, bias)
    ref, ref_grads = _grads(F.linear, x, weight, bias)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(our_grads, ref_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_uses_onednn_for_fp32_cpu_and_saves_only_what_backward_needs():
    x, weight = torch.randn(4, 3), torch.randn(2, 3, requires_grad=True)
    out = linear(x, weight)
    assert type(out.grad_fn).__name__ == "_OneDNNLinearBackward"
    frozen = linear(torch.randn(4, 3, requires_grad=True), torch.randn(2, 3))
    rows, saved_weight = frozen.grad_fn.saved_tensors
    assert rows is None and saved_weight is not None  # a frozen layer keeps no copy of its input


@needs_onednn
def test_non_contiguous_gradient_and_input():
    torch.manual_seed(1)
    base = torch.randn(6, 10)
    x = base[:, ::2]  # strided view
    weight = torch.randn(4, 5, requires_grad=True)
    out = linear(x, weight)
    grad = torch.randn(4, 6).t()  # transposed gradient
    out.backward(grad)
    torch.testing.assert_close(weight.grad, grad.t() @ x, rtol=1e-5, atol=1e-5)


def test_falls_back_to_f_linear_elsewhere():
    weight = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(linear, (x, weight))  # float64 takes F.linear
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(torch.randn(4, 3), torch.randn(2, 3)).dtype == torch.bfloat16
    previous = set_cpu_onednn(False)
    try:
        x32, w32 = torch.randn(4, 3), torch.randn(2, 3)
        assert torch.equal(linear(x32, w32), F.linear(x32, w32))
    finally:
        set_cpu_onednn(previous)


def test_module_is_an_nn_linear_with_the_same_state_dict():
    torch.manual_seed(2)
    ours = Linear(5, 3)
    plain = nn.Linear(5, 3)
    plain.load_state_dict(ours.state_dict())
    assert isinstance(ours, nn.Linear) and list(ours.state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 5)
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-6)
