import numpy as np
import pytest

from prdit.data.phantom import generate_phantom
from prdit.evaluation import evaluate_floor, evaluate_sets
from prdit.evaluation.descriptions import (
    METRICS,
    feature_warnings,
    format_number,
    lookup,
    markdown_table,
    metric_rows,
    protocol_summary,
    undescribed,
)
from prdit.evaluation.offline import offline_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantoms():
    return [generate_phantom(32, seed=seed)[0] for seed in range(4)]


@pytest.fixture(scope="module")
def result(phantoms):
    return evaluate_sets(phantoms[:2], phantoms[2:], spacing=(11.25, 11.25, 11.25), cache_dir=None)


def test_every_described_key_exists_in_a_real_evaluation(result):
    """A renamed metric would silently drop out of every table: each entry must address a number."""
    for key, info in METRICS.items():
        assert lookup(result, key) is not None, key
        if info.real_key:
            assert lookup(result, info.real_key) is not None, info.real_key
    rows = metric_rows(result)
    assert [row.info.key for row in rows] == list(METRICS)
    lung = next(row for row in rows if row.info.key.endswith("lung.fake_mean"))
    assert lung.reference == result["offline"]["tissue_fractions"]["lung"]["real_mean"]
    assert all(row.reference is None for row in rows if row.info.reference == "floor")  # no floor given


def test_floor_compares_the_even_and_odd_halves_of_the_real_set(phantoms):
    a, b = phantoms[0], phantoms[1]
    floor = evaluate_floor([a, b, a, b], cache_dir=None)
    expected = offline_metrics(a[None], b[None])["hu_histogram"]["wasserstein_hu"]
    assert floor["offline"]["hu_histogram"]["wasserstein_hu"] == pytest.approx(expected)
    assert floor["protocol"]["n_real"] == 2 and floor["protocol"]["n_fake"] == 2
    assert evaluate_floor([a, b, a]) is None  # too few volumes for two halves of two
    rows = metric_rows(floor, floor)
    histogram = next(row for row in rows if row.info.key == "offline.hu_histogram.wasserstein_hu")
    assert histogram.reference == pytest.approx(expected)


def test_feature_warnings_name_random_weights_and_small_n():
    weak = {"protocol": {"weights": "random-init fallback (seed 0)", "n_real": 8, "n_fake": 20, "feature_dim": 2048}}
    notes = feature_warnings(weak)
    assert len(notes) == 2 and "random-init" in notes[0] and "N = 8" in notes[1]
    sound = {"protocol": {"weights": "resnet_50_23dataset.pth sha256:ab", "n_real": 4096, "n_fake": 4096, "feature_dim": 2048}}
    assert feature_warnings(sound) == []
    rows = metric_rows({"fid": 1.5, "offline": {"hu_histogram": {"wasserstein_hu": 3.0}}, **weak})
    assert [bool(row.warnings) for row in rows] == [True, False]  # only the feature metric is weakened


def test_markdown_table_reads_in_words_with_directions_floor_and_warnings(result, phantoms):
    floor = {"offline": {"hu_histogram": {"wasserstein_hu": 4.25}}}
    extra = {**result, "new_metric": {"score": 0.5}}
    text = "\n".join(markdown_table({"shipped": result, "other": extra}, floor))
    assert "| HU histogram distance (Wasserstein-1) (HU) | ↓ |" in text
    hist_row = next(line for line in text.splitlines() if line.startswith("| HU histogram distance"))
    assert hist_row.rstrip(" |").endswith("4.25")  # the floor is the last column
    assert "| Lung fraction | ≈ |" in text
    assert "Fréchet distance (FID) of 3D features ⚠" in text and "random-init network" in text
    assert "`new_metric.score` = 0.5" in text  # undescribed numbers are shown, not dropped
    assert "mmd2_linear_unbiased" in text.split("Other numbers")[1]  # raw estimators only under "other numbers"
    assert "lung.real_mean" not in text and "abs_difference" not in text  # restatements are not listed
    assert text.count("Protocol of") == 2 and "2 generated vs 2 real volumes" in protocol_summary(result)


def test_undescribed_skips_settings_and_the_protocol():
    found = undescribed({"fid": 1.0, "protocol": {"n_real": 3}, "x": {"bins": 32, "value": np.float64(2.0), "flag": True}})
    assert found == {"x.value": 2.0}


@pytest.mark.parametrize("value, text", [(0.0, "0"), (44.31, "44.3"), (0.01834, "0.0183"), (1234.5, "1234"),
                                         (-0.1822, "-0.182"), (2.5e-5, "2.50e-05"), (None, "–")])
def test_format_number_keeps_three_significant_digits(value, text):
    assert format_number(value) == text
