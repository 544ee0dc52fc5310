"""Mergeable latency histograms with microsecond resolution.

Log-linear buckets (HDR-style): each power of two of microseconds is split into SUB equal
buckets, so a reported percentile is within 1/SUB (0.8 %) of the truth from 1 us to days.
Counts from every rank add up bucket by bucket, so percentiles over the whole run come from
all ranks' samples, never from rank 0's alone. Recording is a few arithmetic operations on a
Python list: no allocation, no lock (one histogram per thread).

`encode()` is the form kept in result files (rank files and summary.json): the non-empty buckets
only, as (gap since the previous bucket, count) varint pairs, zlib-compressed, base64. A phase's
histogram then costs a few hundred bytes, and `decode` gives back the exact bucket counts, so a
run can be re-analysed or merged with another run's after it ended.
"""

from __future__ import annotations

import base64
import zlib
from array import array
from collections.abc import Iterable
from math import frexp

import numpy as np

SUB = 128
EXPONENTS = 48  # 2**47 us is about four years
NBUCKETS = EXPONENTS * SUB
PERCENTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99, "p999": 0.999}


class Histogram:
    __slots__ = ("_counts", "n", "total_us", "min_us", "max_us", "_sparse")

    def __init__(self) -> None:
        self._counts: list[int] | None = [0] * NBUCKETS
        self.n = 0
        self.total_us = 0.0
        self.min_us = float("inf")
        self.max_us = 0.0
        #: (bucket indexes, counts) of the non-empty buckets, ascending, while they are known
        #: (a histogram read from a rank's state): rank 0 merges and summarises thousands of
        #: those, and a walk over all NBUCKETS buckets in Python costs ~0.3 ms each time; their
        #: dense counts (48 KiB each) are made only when asked for
        self._sparse: tuple[list[int], list[int]] | None = None

    @property
    def counts(self) -> list[int]:
        """Every bucket's count (NBUCKETS of them)."""
        if self._counts is None:
            assert self._sparse is not None
            self._counts = [0] * NBUCKETS
            for i, c in zip(*self._sparse, strict=True):
                self._counts[i] = c
        return self._counts

    def record(self, seconds: float) -> None:
        us = seconds * 1e6
        if us < 1.0:
            idx = 0
        else:
            m, e = frexp(us)  # us = m * 2**e with 0.5 <= m < 1, e >= 1
            idx = min((e - 1) * SUB + int((m - 0.5) * 2 * SUB), NBUCKETS - 1)
        self.counts[idx] += 1
        self._sparse = None
        self.n += 1
        self.total_us += us
        if us < self.min_us:
            self.min_us = us
        if us > self.max_us:
            self.max_us = us

    def record_many(self, seconds: np.ndarray | array) -> None:
        """`record(x)` for every x, vectorised: the same buckets, at a few ns a sample.

        Binning one sample in Python costs about as much as a stat() of a cached file, so hot
        loops append latencies to a flat float array and bin a batch at a time."""
        if not len(seconds):
            return
        us = (
            np.asarray(
                np.frombuffer(seconds, dtype=np.float64) if isinstance(seconds, array) else seconds,
                dtype=np.float64,
            )
            * 1e6
        )
        m, e = np.frexp(us)  # us = m * 2**e with 0.5 <= m < 1
        idx = np.where(
            us < 1.0,
            0,
            np.minimum((e.astype(np.int64) - 1) * SUB + ((m - 0.5) * 2 * SUB).astype(np.int64), NBUCKETS - 1),
        )
        add = np.bincount(idx, minlength=NBUCKETS)
        counts = self.counts
        self._sparse = None
        for j in np.flatnonzero(add).tolist():
            counts[j] += int(add[j])
        self.n += len(us)
        self.total_us += float(us.sum())
        self.min_us = min(self.min_us, float(us.min()))
        self.max_us = max(self.max_us, float(us.max()))

    # merging ------------------------------------------------------------------------------
    def to_state(self) -> dict[str, object]:
        """A compact, picklable form: only non-empty buckets travel between ranks."""
        if self._sparse is not None:
            idx, cnt = list(self._sparse[0]), list(self._sparse[1])
        else:
            arr = np.asarray(self.counts, dtype=np.int64)
            nz = np.nonzero(arr)[0]
            idx, cnt = nz.tolist(), arr[nz].tolist()
        return {
            "idx": idx,
            "cnt": cnt,
            "n": self.n,
            "total_us": self.total_us,
            "min_us": self.min_us if self.n else None,
            "max_us": self.max_us,
        }

    @classmethod
    def from_state(cls, state: dict) -> Histogram:
        h = cls()
        pairs = sorted(zip(state["idx"], state["cnt"], strict=True))
        if pairs and not 0 <= pairs[0][0] <= pairs[-1][0] < NBUCKETS:
            raise ValueError(f"histogram state with buckets outside 0..{NBUCKETS - 1}")
        h._sparse = ([i for i, _ in pairs], [c for _, c in pairs])
        h._counts = None
        h.n = state["n"]
        h.total_us = state["total_us"]
        h.min_us = state["min_us"] if state["min_us"] is not None else float("inf")
        h.max_us = state["max_us"]
        return h

    def encode(self) -> dict[str, object]:
        """The exact state for a result file: see the module docstring (`decode` reads it)."""
        raw = bytearray()
        prev = -1
        for i, c in enumerate(self.counts):
            if c:
                _varint(raw, i - prev - 1)
                _varint(raw, c)
                prev = i
        return {
            "sub": SUB,
            "n": self.n,
            "total_us": self.total_us,
            "min_us": self.min_us if self.n else None,
            "max_us": self.max_us,
            "bins": base64.b64encode(zlib.compress(bytes(raw), 9)).decode("ascii"),
        }

    @classmethod
    def decode(cls, enc: dict) -> Histogram:
        """A histogram from `encode()`'s form; ValueError when it is not one (another bucket
        layout, a damaged file: counts that do not add up to n)."""
        if enc.get("sub") != SUB:
            raise ValueError(
                f"histogram with {enc.get('sub')} buckets per power of two; this version reads {SUB}"
            )
        try:
            raw = zlib.decompress(base64.b64decode(enc["bins"], validate=True))
        except (ValueError, zlib.error) as exc:
            raise ValueError(f"damaged histogram bins: {exc}") from None
        h = cls()
        pos, idx = 0, -1
        while pos < len(raw):
            gap, pos = _unvarint(raw, pos)
            cnt, pos = _unvarint(raw, pos)
            idx += gap + 1
            if idx >= NBUCKETS:
                raise ValueError(f"damaged histogram bins: bucket {idx} >= {NBUCKETS}")
            h.counts[idx] = cnt
        if sum(h.counts) != enc["n"]:
            raise ValueError(f"damaged histogram: bucket counts add up to {sum(h.counts)}, not n={enc['n']}")
        h.n = enc["n"]
        h.total_us = enc["total_us"]
        h.min_us = enc["min_us"] if enc["min_us"] is not None else float("inf")
        h.max_us = enc["max_us"]
        return h

    def merge(self, other: Histogram) -> Histogram:
        counts = self.counts
        if other._sparse is not None:
            for i, c in zip(*other._sparse, strict=True):
                counts[i] += c
        else:
            for i, c in enumerate(other.counts):
                if c:
                    counts[i] += c
        self._sparse = None
        self.n += other.n
        self.total_us += other.total_us
        self.min_us = min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)
        return self

    @classmethod
    def merged(cls, hists: Iterable[Histogram]) -> Histogram:
        out = cls()
        for h in hists:
            out.merge(h)
        return out

    # reading ------------------------------------------------------------------------------
    @staticmethod
    def bucket_mid_us(idx: int) -> float:
        if idx == 0:
            return 0.5
        e, k = divmod(idx, SUB)
        low = 2.0**e * (1 + k / SUB)
        return low + 2.0**e / SUB / 2

    def percentile(self, q: float) -> float:
        if not self.n:
            return 0.0
        rank = q * self.n
        seen = 0
        for idx, c in enumerate(self.counts):
            if c:
                seen += c
                if seen >= rank:
                    return min(max(self.bucket_mid_us(idx), self.min_us), self.max_us)
        return self.max_us

    def summary(self) -> dict[str, float]:
        """Latency in microseconds: the percentiles the summary schema promises, plus mean."""
        if not self.n:
            return {k: 0.0 for k in (*PERCENTILES, "mean", "min", "max")} | {"count": 0}
        if self._sparse is not None:  # the same cumulative counts, over the non-empty buckets only
            where = np.asarray(self._sparse[0], dtype=np.int64)
            cum = np.cumsum(np.asarray(self._sparse[1], dtype=np.int64))
        else:
            where, cum = None, np.cumsum(np.asarray(self.counts, dtype=np.int64))
        out: dict[str, float] = {}
        for name, q in PERCENTILES.items():
            at = int(np.searchsorted(cum, q * self.n, side="left"))
            idx = int(where[at]) if where is not None else at
            out[name] = round(min(max(self.bucket_mid_us(idx), self.min_us), self.max_us), 3)
        out["mean"] = round(self.total_us / self.n, 3)
        out["min"] = round(self.min_us, 3)
        out["max"] = round(self.max_us, 3)
        out["count"] = self.n
        return out


def _varint(out: bytearray, x: int) -> None:
    """LEB128: seven bits a byte, low first, the high bit set on all but the last."""
    while x > 0x7F:
        out.append((x & 0x7F) | 0x80)
        x >>= 7
    out.append(x)


def _unvarint(raw: bytes, pos: int) -> tuple[int, int]:
    x = shift = 0
    while True:
        if pos >= len(raw):
            raise ValueError("damaged histogram bins: a varint runs past the end")
        b = raw[pos]
        pos += 1
        x |= (b & 0x7F) << shift
        if b < 0x80:
            return x, pos
        shift += 7
