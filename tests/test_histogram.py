import numpy as np
import pytest

from dlio_ext.metrics.histogram import Histogram


def _hist(samples_s):
    h = Histogram()
    for s in samples_s:
        h.record(float(s))
    return h


def test_percentiles_within_one_percent_of_exact():
    rng = np.random.default_rng(3)
    samples = rng.lognormal(mean=np.log(200e-6), sigma=1.2, size=50_000)  # ~200 us, long tail
    s = _hist(samples).summary()
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
        exact = np.percentile(samples * 1e6, q)
        assert s[name] == pytest.approx(exact, rel=0.01), name
    assert s["max"] == pytest.approx(samples.max() * 1e6)
    assert s["count"] == len(samples)


def test_merge_equals_histogram_of_all_samples():
    rng = np.random.default_rng(5)
    a, b = rng.exponential(1e-3, 1000), rng.exponential(5e-3, 3000)
    merged = Histogram.merged([Histogram.from_state(_hist(a).to_state()), _hist(b)])
    whole = _hist(np.concatenate([a, b]))
    assert merged.counts == whole.counts
    assert merged.summary() == whole.summary()


def test_one_slow_rank_moves_the_tail():
    fast = _hist([100e-6] * 990)
    slow = _hist([50e-3] * 10)
    s = Histogram.merged([fast, slow]).summary()
    assert s["p50"] == pytest.approx(100, rel=0.01)
    assert s["p999"] == pytest.approx(50_000, rel=0.01)


def test_submicrosecond_and_empty():
    assert Histogram().summary()["count"] == 0
    s = _hist([1e-7, 2e-7]).summary()
    assert s["max"] < 1.0 and s["count"] == 2
