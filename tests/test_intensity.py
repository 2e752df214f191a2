import numpy as np
import pytest
import torch

from prdit.data.intensity import IntensityMapping


def test_hu_window_round_trip_inside_the_window():
    mapping = IntensityMapping(window=(-1000, 1000))
    hu = np.linspace(-1000, 1000, 101)
    x = mapping.to_model(hu)
    assert x.min() == -1 and x.max() == 1
    np.testing.assert_allclose(mapping.to_hu(x), hu, atol=1e-9)


def test_hu_window_clips_outside():
    mapping = IntensityMapping(window=(-1000, 500))
    np.testing.assert_allclose(mapping.to_model(np.array([-3024.0, 2000.0])), [-1, 1])
    np.testing.assert_allclose(mapping.to_hu(np.array([-1.5, 1.5])), [-1000, 500])


def test_torch_and_numpy_agree():
    mapping = IntensityMapping()
    hu = np.array([-1200.0, -850.0, 40.0, 900.0])
    np.testing.assert_allclose(mapping.to_model(torch.tensor(hu)).numpy(), mapping.to_model(hu))


def test_paper_mode_is_per_volume_min_max():
    mapping = IntensityMapping(mode="paper", percentile=100.0)
    volume = np.array([-1500.0, -1000.0, 0.0, 1000.0])
    np.testing.assert_allclose(mapping.to_model(volume), [-1, -1, 0, 1])
    with pytest.raises(ValueError, match="fit"):
        mapping.to_hu(np.zeros(3))
    mapping.fit([volume, np.array([-1000.0, 3000.0])])
    assert mapping.reference_range == (-1000.0, 2000.0)
    np.testing.assert_allclose(mapping.to_hu(np.array([-1.0, 1.0])), [-1000, 2000])


def test_serialisation_round_trip():
    mapping = IntensityMapping(mode="paper", window=(-1024, 2000), percentile=99.5, reference_range=(-1000, 1800))
    assert IntensityMapping.from_dict(mapping.to_dict()) == mapping


def test_invalid_mappings():
    with pytest.raises(ValueError):
        IntensityMapping(mode="z")
    with pytest.raises(ValueError):
        IntensityMapping(window=(10, -10))
