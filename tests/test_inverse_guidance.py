"""Data-consistency guidance: CGLS solves least squares, lands on the measurement for the identity, and keeps what
the operator does not see."""

import pytest
import torch

from prdit.errors import PrditError
from prdit.inverse.guidance import DataConsistency, conjugate_gradient_least_squares, measurement_guidance
from prdit.inverse.operators import Identity, Operator, SuperResolution


class MatrixOperator(Operator):
    """y = M vec(x) + c for a dense matrix: least squares has a closed form to compare with."""

    name = "matrix"

    def __init__(self, matrix: torch.Tensor, offset: torch.Tensor):
        self.matrix, self.offset = matrix, offset

    def forward(self, x):
        return x.flatten(1) @ self.matrix.T + self.offset

    def adjoint(self, r):
        return (r @ self.matrix).view(r.shape[0], 1, 2, 2, 3)

    def measurement_shape(self, volume_shape):
        return (volume_shape[0], self.matrix.shape[0])


def test_cgls_reaches_the_least_squares_solution():
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(20, 12, generator=generator, dtype=torch.float64)
    op = MatrixOperator(matrix, torch.randn(20, generator=generator, dtype=torch.float64))
    y = torch.randn(2, 20, generator=generator, dtype=torch.float64)
    start = torch.randn(2, 1, 2, 2, 3, generator=generator, dtype=torch.float64)
    solution = conjugate_gradient_least_squares(op, y, start, iterations=12)  # n steps solve an n-unknown problem
    expected = torch.linalg.lstsq(matrix, (y - op.offset).T).solution.T
    torch.testing.assert_close(solution.flatten(1), expected, rtol=1e-7, atol=1e-7)
    # each step lowers the residual
    residuals = [float((op(conjugate_gradient_least_squares(op, y, start, k)) - y).norm()) for k in range(5)]
    assert residuals == sorted(residuals, reverse=True) and residuals[-1] < residuals[0]


def test_identity_lands_on_the_measurement_in_one_step():
    generator = torch.Generator().manual_seed(1)
    y, start = (torch.randn(3, 1, 4, 4, 4, generator=generator) * 300 for _ in range(2))
    torch.testing.assert_close(conjugate_gradient_least_squares(Identity(), y, start, 1), y)
    torch.testing.assert_close(conjugate_gradient_least_squares(Identity(), y, y, 3), y)  # already consistent: no NaN


def test_super_resolution_guidance_fixes_block_means_and_keeps_detail():
    generator = torch.Generator().manual_seed(2)
    op = SuperResolution(2)
    start = torch.randn(1, 1, 8, 8, 8, generator=generator)
    y = torch.randn(1, 1, 4, 4, 4, generator=generator)
    guided = conjugate_gradient_least_squares(op, y, start, 1)
    torch.testing.assert_close(op(guided), y)
    # the change is constant on every 2^3 block: the detail inside the blocks (the null space) is the prior's
    change = guided - start
    block_constant = op.adjoint(op(change)) * 2**3  # each block's mean, repeated over the block
    torch.testing.assert_close(change, block_constant)


def test_the_hook_works_in_model_space_and_can_be_switched_off():
    hu = torch.linspace(-900, 900, 64).view(1, 1, 4, 4, 4)
    to_hu, to_model = (lambda x: 1000 * x), (lambda h: h / 1000)
    guide = measurement_guidance(Identity(), hu, to_hu, to_model, DataConsistency())
    torch.testing.assert_close(guide(torch.zeros(2, 1, 4, 4, 4), 500.0), (hu / 1000).expand(2, 1, 4, 4, 4))
    off = measurement_guidance(Identity(), hu, to_hu, to_model, DataConsistency(iterations=0))
    x0 = torch.rand(1, 1, 4, 4, 4)
    assert off(x0, 500.0) is x0


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_bad_iterations_are_rejected(value):
    with pytest.raises(PrditError, match="non-negative integer"):
        DataConsistency(iterations=value)
