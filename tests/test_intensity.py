import numpy as np
import pytest
import torch

from prdit.data.intensity import IntensityMapping
from prdit.errors import DataError


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


def test_paper_mode_follows_the_official_order_of_steps():
    # Official: floor at -1000, then the percentile of the floored volume, then min-max with the volume's own min.
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1200, 1500, 5000)
    mapping = IntensityMapping(mode="paper", percentile=99.0)
    floored = np.maximum(hu, -1000)
    top = np.percentile(floored, 99.0)
    expected = (np.clip(floored, -1000, top) + 1000) / (top + 1000)
    np.testing.assert_allclose(mapping.to_unit(hu), expected, atol=1e-12)
    np.testing.assert_allclose(mapping.to_model(hu), 2 * expected - 1, atol=1e-12)
    # A volume without air: its own minimum maps to 0, not -1000 HU.
    body = np.array([-400.0, 0.0, 600.0])
    np.testing.assert_allclose(IntensityMapping(mode="paper", percentile=100.0).to_unit(body), [0.0, 0.4, 1.0])


def test_paper_unit_scale_and_already_normalised_volumes():
    unit = IntensityMapping(mode="paper", percentile=100.0, scale="unit")
    assert unit.model_range == (0.0, 1.0)
    np.testing.assert_allclose(unit.to_model(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])
    official_file = np.array([0.0, 0.25, 1.0])  # written by the official scripts: taken as it is
    np.testing.assert_array_equal(unit.to_unit(official_file), official_file)
    unit.fit([official_file])  # no HU in the training files: the window maps samples back
    assert unit.reference_range == (-1000.0, 1000.0)
    np.testing.assert_allclose(unit.to_hu(np.array([0.0, 1.0])), [-1000.0, 1000.0])
    with pytest.raises(DataError, match="constant"):
        unit.to_unit(np.full(4, -1000.0))


def test_paper_ceiling_clips_before_the_percentile():
    hu = np.linspace(-2000, 2000, 1001, dtype=np.float32).reshape(1, 7, 143)
    capped = IntensityMapping(mode="paper", percentile=100.0, ceiling=1000.0).to_unit(hu)
    assert capped.max() == 1.0 and np.count_nonzero(capped == 1.0) == np.count_nonzero(hu >= 1000)
    assert IntensityMapping.from_dict(IntensityMapping(mode="paper", ceiling=1000.0).to_dict()).ceiling == 1000.0


def test_mappings_saved_before_the_scale_existed_still_load():
    old = {"mode": "paper", "window": [-1000, 1000], "percentile": 99.9, "reference_range": [-1000, 1200]}
    mapping = IntensityMapping.from_dict(old)
    assert mapping.scale == "signed" and mapping.model_range == (-1.0, 1.0)
    assert IntensityMapping.from_dict(IntensityMapping(mode="paper", scale="unit").to_dict()).scale == "unit"


def test_models_saved_without_a_window_keep_the_old_default():
    assert IntensityMapping.from_dict({"mode": "hu"}).window == (-1000.0, 1000.0)
