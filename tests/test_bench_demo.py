"""The whole-demo benchmark's speed-up arithmetic (the runs themselves take minutes: benchmarks/bench_demo.py)."""

import pytest

from benchmarks.bench_demo import speedups


def runs(*pairs):
    return [{"wall_s": wall, "cpu_s": cpu} for wall, cpu in pairs]


def test_speedups_are_ratios_of_medians_and_of_each_round():
    results = {"before": runs((300, 500), (330, 520), (310, 480)), "auto": runs((200, 400), (220, 390), (250, 410))}
    got = speedups(results, "before")
    assert list(got) == ["auto"]
    assert got["auto"]["wall_s"]["of_medians"] == pytest.approx(310 / 220, abs=1e-3)
    assert got["auto"]["cpu_s"]["of_medians"] == pytest.approx(500 / 400, abs=1e-3)
    assert got["auto"]["wall_s"]["per_round"] == pytest.approx([1.5, 1.5, 1.24], abs=1e-3)
