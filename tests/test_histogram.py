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


def test_histograms_read_from_state_merge_and_summarise_as_the_dense_ones():
    """Rank 0 merges and summarises histograms read from rank states through their non-empty
    buckets only: the same counts and the same summary as bucket by bucket, including after
    samples are recorded into one (which drops its sparse form)."""
    rng = np.random.default_rng(11)
    dense, states = [], []
    for r in range(40):
        h = Histogram()
        h.record_many(rng.lognormal(np.log(50e-6 * (1 + r % 7)), 1.0, 500))
        dense.append(h)
        states.append(h.to_state())
    read = [Histogram.from_state(s) for s in states]
    for h, d in zip(read, dense, strict=True):
        assert h.counts == d.counts and h.summary() == d.summary()
    merged = Histogram.merged(read)
    whole = Histogram()
    for d in dense:  # the dense walk, bucket by bucket
        for i, c in enumerate(d.counts):
            whole.counts[i] += c
        whole.n += d.n
        whole.total_us += d.total_us
        whole.min_us, whole.max_us = min(whole.min_us, d.min_us), max(whole.max_us, d.max_us)
    assert merged.counts == whole.counts and merged.summary() == whole.summary()
    # a histogram read from state and then recorded into summarises what it now holds
    late = Histogram.from_state(states[0])
    late.record(2.0)
    late.record_many(np.array([3.0, 4.0]))
    assert late.summary()["max"] == pytest.approx(4e6) and late.summary()["count"] == dense[0].n + 3
    assert late.summary()["p999"] > dense[0].summary()["p999"]


def test_a_state_with_buckets_out_of_range_is_refused():
    with pytest.raises(ValueError, match="buckets outside"):
        Histogram.from_state(
            {"idx": [10**6], "cnt": [1], "n": 1, "total_us": 1.0, "min_us": 1.0, "max_us": 1.0}
        )
