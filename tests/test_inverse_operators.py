"""Measurement operators: every adjoint passes the adjoint test, forward models and baselines match closed forms,
bad parameters give one-line errors."""

import math

import numpy as np
import pytest
import torch

from prdit.errors import PrditError
from prdit.inverse.operators import (
    MU_WATER,
    Deblurring,
    Identity,
    Inpainting,
    SparseViewXray,
    SuperResolution,
    gaussian_kernel,
    uniform_angles,
)


def operators(shape=(6, 8, 10)):
    mask = torch.from_numpy(np.random.default_rng(0).random(shape) > 0.4)
    return [
        Identity(),
        SuperResolution(2),
        Inpainting(mask),
        Deblurring(1.2, 5),
        SparseViewXray([0.0, 33.0, 90.0, 150.0], shape, spacing_mm=(2.0, 1.5, 1.0)),
    ]


@pytest.mark.parametrize("op", operators(), ids=lambda op: op.name)
def test_adjoint_is_the_transpose_of_the_linear_part(op):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn((2, 1, 6, 8, 10), generator=generator, dtype=torch.float64)
    r = torch.randn(op.measurement_shape(x.shape), generator=generator, dtype=torch.float64)
    forward, backward = (op.linear(x) * r).sum(), (x * op.adjoint(r)).sum()
    assert float(forward) == pytest.approx(float(backward), rel=1e-5, abs=1e-9)
    # the forward model is affine with that linear part
    z = torch.randn_like(x)
    torch.testing.assert_close(op(x + z) - op(z), op.linear(x), rtol=1e-4, atol=1e-8)
    assert op.baseline(op(x)).shape == x.shape


def test_super_resolution_averages_blocks_and_upsamples_constants():
    x = torch.arange(8.0).view(1, 1, 2, 2, 2).repeat(1, 1, 2, 2, 2)
    op = SuperResolution(2)
    y = op(torch.full((1, 1, 4, 4, 4), 7.0))
    torch.testing.assert_close(y, torch.full((1, 1, 2, 2, 2), 7.0))
    torch.testing.assert_close(op.baseline(y), torch.full((1, 1, 4, 4, 4), 7.0))
    block = torch.zeros(1, 1, 4, 4, 4)
    block[..., :2, :2, :2] = 8.0
    assert float(op(block)[0, 0, 0, 0, 0]) == 8.0 and float(op(block).sum()) == 8.0
    assert op(x).shape == (1, 1, 2, 2, 2)


def test_inpainting_keeps_measured_voxels_and_fills_from_the_nearest():
    mask = torch.zeros(1, 1, 7, dtype=torch.bool)
    mask[0, 0, [0, 6]] = True
    op = Inpainting(mask)
    x = torch.tensor([10.0, 1, 2, 3, 4, 5, 60]).view(1, 1, 1, 1, 7)
    y = op(x)
    assert y.flatten().tolist() == [10, 0, 0, 0, 0, 0, 60]
    filled = op.baseline(y).flatten().tolist()
    assert filled[:3] == [10, 10, 10] and filled[4:] == [60, 60, 60]
    assert filled[3] in (10.0, 60.0)  # equidistant: either neighbour


def test_deblurring_keeps_air_and_the_interior_of_uniform_water():
    op = Deblurring(sigma=1.0, kernel_size=5)
    air = torch.full((1, 1, 8, 8, 8), -1000.0)
    torch.testing.assert_close(op(air), air)
    water = torch.zeros(1, 1, 12, 12, 12)
    blurred = op(water)
    torch.testing.assert_close(blurred[..., 2:-2, 2:-2, 2:-2], water[..., 2:-2, 2:-2, 2:-2], rtol=0, atol=1e-3)
    assert float(blurred[0, 0, 0, 0, 0]) < -500  # air beyond the edge, not zero HU
    assert gaussian_kernel(1.0, 5).sum().item() == pytest.approx(1.0)


def test_richardson_lucy_sharpens_a_blurred_point():
    op = Deblurring(sigma=1.0, kernel_size=7)
    x = torch.full((1, 1, 9, 9, 9), -1000.0)
    x[..., 4, 4, 4] = 1000.0
    y = op(x)
    assert float((op.baseline(y) - x).abs().mean()) < float((y - x).abs().mean())
    assert float(op.baseline(y)[..., 4, 4, 4]) > float(y[..., 4, 4, 4])


def test_xray_line_integrals_of_a_water_cylinder():
    size, spacing = 40, 2.0
    op = SparseViewXray([0.0, 60.0, 90.0], (2, size, size), spacing_mm=(spacing,) * 3)
    c = (np.arange(size) - (size - 1) / 2) * spacing
    radius = 25.0
    inside = torch.from_numpy(c[:, None] ** 2 + c[None, :] ** 2 <= radius**2)
    x = torch.where(inside, 0.0, -1000.0).expand(1, 1, 2, size, size).clone()
    y = op(x)
    assert y.shape == (1, 3, 2, op.detector_pixels)
    centre = op.detector_pixels // 2  # the detector centre (an odd count here) sees a diameter
    assert op.detector_pixels % 2 == 1
    for view in range(3):
        assert float(y[0, view, 0, centre]) == pytest.approx(MU_WATER * 2 * radius, rel=0.05)
    assert float(y[0, :, :, :2].abs().max()) == 0.0  # rays outside the cylinder see only air
    torch.testing.assert_close(op(torch.full_like(x, -1000.0)), torch.zeros_like(y))


def test_filtered_backprojection_recovers_water_from_many_views():
    size = 40
    op = SparseViewXray(uniform_angles(90), (1, size, size), spacing_mm=(1.0, 1.0, 1.0))
    c = np.arange(size) - (size - 1) / 2
    inside = torch.from_numpy(c[:, None] ** 2 + c[None, :] ** 2 <= 15.0**2)
    x = torch.where(inside, 0.0, -1000.0).view(1, 1, 1, size, size)
    core = torch.from_numpy(c[:, None] ** 2 + c[None, :] ** 2 <= 10.0**2)
    reconstruction = op.baseline(op(x))[0, 0, 0]
    assert float(reconstruction[core].mean()) == pytest.approx(0.0, abs=40.0)
    assert float(reconstruction[core].std()) < 40.0
    assert float(reconstruction[~inside].mean()) < -900.0
    assert op.baseline_method == "fbp"


def test_few_view_backprojection_gives_each_ray_its_mean_attenuation():
    size = 24
    op = SparseViewXray([0.0], (1, size, size), spacing_mm=(1.0, 1.0, 1.0))
    assert op.baseline_method == "backprojection"
    water = torch.zeros(1, 1, 1, size, size)
    torch.testing.assert_close(op.baseline(op(water)), water, rtol=0, atol=1e-3)  # uniform: exact
    rows = torch.linspace(-1000, 0, size).view(1, 1, 1, size, 1).expand(1, 1, 1, size, size)
    # the frontal view integrates along y: every pixel gets its column's mean, whatever its row
    torch.testing.assert_close(op.baseline(op(rows)), torch.full_like(rows, -500.0), rtol=0, atol=1.0)


def test_uniform_angles_cover_a_half_turn():
    assert uniform_angles(4) == [0.0, 45.0, 90.0, 135.0]
    assert math.isclose(uniform_angles(3)[1], 60.0)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: SuperResolution(1), "factor must be an integer >= 2"),
        (lambda: Inpainting(torch.zeros(4, 4, 4, dtype=torch.bool)), "measures no voxel"),
        (lambda: Inpainting(torch.ones(4, 4)), "must be a 3D"),
        (lambda: Deblurring(0.0), "sigma must be positive"),
        (lambda: Deblurring(1.0, kernel_size=4), "must be odd"),
        (lambda: SparseViewXray([], (4, 4, 4)), "at least one projection angle"),
        (lambda: SparseViewXray([0, 0], (4, 4, 4)), "must be distinct"),
        (lambda: uniform_angles(0), "at least one view"),
        (lambda: SparseViewXray([0.0], (4, 4, 4), baseline_method="sirt"), "auto, fbp or backprojection"),
    ],
)
def test_bad_parameters_are_one_line_errors(build, message):
    with pytest.raises(PrditError, match=message) as error:
        build()
    assert "\n" not in str(error.value)


def test_measurements_of_the_wrong_shape_are_named():
    volume = (1, 1, 8, 8, 8)
    with pytest.raises(PrditError, match="mask has shape"):
        Inpainting(torch.ones(4, 4, 4)).measurement_shape(volume)
    with pytest.raises(PrditError, match="not divisible"):
        SuperResolution(3).measurement_shape(volume)
    with pytest.raises(PrditError, match=r"does not fit super-resolution of a 8x8x8 volume"):
        SuperResolution(2).check_measurement(torch.zeros(1, 1, 8, 8, 8), volume, "lowres.nii.gz")
    with pytest.raises(PrditError, match="built for volumes"):
        SparseViewXray([0.0], (4, 8, 8)).measurement_shape(volume)
