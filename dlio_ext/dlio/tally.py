"""Per-rank I/O tallies that survive DataLoader worker processes.

DLIO reads in torch DataLoader workers (separate processes, forked or spawned) or in tf.data
threads; their in-memory counters die with them. Each rank therefore maps one small file in
its output folder; every reader owns one row (single writer, so no locks), and the rank sums
the rows once training is over. Updates are plain stores into a shared mapping: nothing on the
hot path but two additions.
"""

from __future__ import annotations

import os

import numpy as np

FIELDS = ("reads", "read_bytes", "read_ns", "writes", "write_bytes", "write_ns")
_R, _RB, _RNS, _W, _WB, _WNS = range(len(FIELDS))


def slots_for(read_slots: int) -> int:
    # row 0: the rank's own process (data generation, checkpoints); then train and valid readers
    return 1 + 2 * read_slots


def reader_slot(read_slots: int, valid: bool, thread_index: int) -> int | None:
    """The row a reader owns: torch workers are 0..n-1 (-1 when in-process), tf.data threads 0..n-1."""
    idx = thread_index + 1
    if not 0 <= idx < read_slots:
        return None
    return 1 + (read_slots if valid else 0) + idx


def tally_path(output_folder: str, rank: int) -> str:
    return os.path.join(output_folder, f".dlio_ext_tally.{rank}")


def create(path: str, read_slots: int) -> None:
    np.zeros((slots_for(read_slots), len(FIELDS)), dtype=np.int64).tofile(path)


class Row:
    """One reader's (or the rank's) row; a detached row counts in memory only."""

    def __init__(self, path: str | None, row: int | None, read_slots: int):
        self._map: np.memmap | None = None
        if path and row is not None and os.path.exists(path):
            self._map = np.memmap(path, dtype=np.int64, mode="r+", shape=(slots_for(read_slots), len(FIELDS)))
            self.v = self._map[row]
        else:
            self.v = np.zeros(len(FIELDS), dtype=np.int64)

    def read(self, nbytes: int, ns: int) -> None:
        self.v[_R] += 1
        self.v[_RB] += nbytes
        self.v[_RNS] += ns

    def write(self, nbytes: int, ns: int) -> None:
        self.v[_W] += 1
        self.v[_WB] += nbytes
        self.v[_WNS] += ns


def collect(path: str, read_slots: int) -> dict[str, int]:
    """The rank's totals over all rows; removes the file."""
    if not os.path.exists(path):
        return dict.fromkeys(FIELDS, 0)
    rows = np.fromfile(path, dtype=np.int64).reshape(slots_for(read_slots), len(FIELDS))
    os.unlink(path)
    return {name: int(v) for name, v in zip(FIELDS, rows.sum(axis=0), strict=True)}
