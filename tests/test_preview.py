"""PNG previews: slice orientation, physical aspect, windows, montage and grid files."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from prdit.errors import PrditError
from prdit.io import save_nifti
from prdit.preview import (
    DPI,
    WINDOWS,
    central_slice,
    render_montage,
    resolve_window,
    save_grid,
    save_montage,
)


def ramp_volume(d: int = 8, h: int = 10, w: int = 12) -> np.ndarray:
    """Every voxel holds a unique code 10000 z + 100 y + x, so a displayed pixel tells where it came from."""
    z, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    return (10000 * z + 100 * y + x).astype(np.float32)


def test_slices_follow_the_radiological_display_convention():
    volume = ramp_volume()
    d, h, w = volume.shape
    axial, axial_aspect = central_slice(volume, (1, 1, 1), "axial")
    assert axial[0, 0] == volume[d // 2, 0, 0]  # anterior at the top, patient right on the left
    assert axial[-1, -1] == volume[d // 2, -1, -1]
    coronal, _ = central_slice(volume, (1, 1, 1), "coronal")
    assert coronal[0, 0] == volume[-1, h // 2, 0]  # superior at the top, patient right on the left
    sagittal, _ = central_slice(volume, (1, 1, 1), "sagittal")
    assert sagittal[0, 0] == volume[-1, 0, w // 2]  # superior at the top, anterior on the left
    assert sagittal[-1, -1] == volume[0, -1, w // 2]
    with pytest.raises(PrditError):
        central_slice(volume, (1, 1, 1), "oblique")


def test_montage_uses_the_physical_aspect_and_the_window():
    figure = render_montage(np.zeros((8, 16, 16), np.float32), spacing=(4.0, 1.0, 2.0), window="bone")
    axial, coronal, sagittal = figure.axes[:3]
    assert axial.get_aspect() == pytest.approx(1.0 / 2.0)  # sy / sx
    assert coronal.get_aspect() == pytest.approx(4.0 / 2.0)  # sz / sx
    assert sagittal.get_aspect() == pytest.approx(4.0 / 1.0)  # sz / sy
    level, width = WINDOWS["bone"]
    assert axial.images[0].get_clim() == pytest.approx((level - width / 2, level + width / 2))
    assert "HU" in figure.axes[3].get_ylabel()  # the colour bar


def test_windows_by_name_or_pair():
    assert resolve_window("lung") == (-600.0, 1500.0)
    assert resolve_window((40, 400)) == (40.0, 400.0)
    for bad in ("soft", (40,), (40, 0), "40,400"):
        with pytest.raises(PrditError):
            resolve_window(bad)
    with pytest.raises(PrditError):
        save_montage(np.zeros((4, 4, 4)), "unused.png", window="brain")


def test_save_montage_from_an_array_writes_a_png_of_the_expected_size(tmp_path):
    out = save_montage(np.full((16, 16, 16), -600.0, np.float32), tmp_path / "a" / "montage.png", title="test")
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (round((3.2 + 0.7) * DPI), round((3 * 3.2 + 0.9) * DPI))
    assert not list(out.parent.glob(".tmp-*"))
    save_montage(np.zeros((16, 16, 16)), out)  # previews are derived files: overwriting is fine


def test_wide_volumes_give_wide_panels(tmp_path):
    # Panels share the widest physical width/height ratio of the three views. 8 slices of 4 mm over 16 x 16 mm:
    # axial 16 x 16 mm, coronal and sagittal 16 mm wide and 32 mm tall, so the widest ratio is 1.
    square = matplotlib.image.imread(save_montage(np.zeros((8, 16, 16)), tmp_path / "s.png", spacing=(4, 1, 1)))
    # 8 slices of 0.25 mm over 8 x 8 mm: coronal and sagittal are 8 mm wide and 2 mm tall, a ratio of 4.
    wide = matplotlib.image.imread(save_montage(np.zeros((8, 8, 8)), tmp_path / "w.png", spacing=(0.25, 1, 1)))
    assert wide.shape[0] == square.shape[0]
    assert wide.shape[1] == round((3 * 3.2 * 4 + 0.9) * DPI) and square.shape[1] == round((3 * 3.2 + 0.9) * DPI)


def test_save_montage_from_a_path_uses_the_file_spacing(tmp_path):
    volume = np.random.default_rng(0).uniform(-1000, 500, size=(12, 16, 16)).astype(np.float32)
    spacing = (3.0, 1.0, 1.0)
    path = save_nifti(tmp_path / "vol.nii.gz", np.rint(volume), spacing)
    from_path = matplotlib.image.imread(save_montage(path, tmp_path / "from_path.png", title="t"))
    from_array = matplotlib.image.imread(save_montage(np.rint(volume), tmp_path / "from_array.png", title="t", spacing=spacing))
    assert np.array_equal(from_path, from_array)
    with pytest.raises(PrditError):
        save_montage(tmp_path / "missing.nii.gz", tmp_path / "x.png")


def test_save_grid_has_a_row_per_view_and_a_column_per_volume(tmp_path):
    volumes = [np.full((16, 16, 16), hu, np.float32) for hu in (-1000, 0, 1000)]
    out = save_grid(volumes, tmp_path / "grid.png", spacing=(2, 2, 2), titles=["a", "b", "c"])
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (round((2 * 2.4 + 0.5) * DPI), round(3 * 2.4 * DPI))
    three_rows = matplotlib.image.imread(save_grid(volumes[:1], tmp_path / "one.png", views=("axial", "coronal", "sagittal")))
    assert three_rows.shape[:2] == (round((3 * 2.4 + 0.5) * DPI), round(2.4 * DPI))
    # Model outputs [1, D, H, W] are accepted.
    save_grid([v[None] for v in volumes], tmp_path / "batch.png")
    with pytest.raises(PrditError):
        save_grid(volumes, tmp_path / "bad.png", titles=["only one"])
    with pytest.raises(PrditError):
        save_grid([], tmp_path / "empty.png")
    with pytest.raises(PrditError):
        save_grid([np.zeros((4, 4))], tmp_path / "flat.png")


def test_no_pyplot_figures_are_left_open(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    save_montage(np.zeros((8, 8, 8)), tmp_path / "m.png")
    save_grid([np.zeros((8, 8, 8))], tmp_path / "g.png")
    assert plt.get_fignums() == before
