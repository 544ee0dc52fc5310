"""DLIO's NPZ reader, reading through a dlio-ext backend.

Registered through DLIO's own hook (`reader.reader_classname`), so DLIO's loaders (torch
workers, tf.data threads) build it like any reader. Each reader reads whole files into one
reused page-aligned buffer (O_DIRECT-ready) and decodes them from memory, where DLIO's NPZReader
calls np.load on a path (which S3 does not have, and which cannot do O_DIRECT).
"""

from __future__ import annotations

import io
import time

import numpy as np
from dlio_benchmark.common.constants import MODULE_DATA_READER
from dlio_benchmark.common.enumerations import DatasetType
from dlio_benchmark.reader.npz_reader import NPZReader
from dlio_benchmark.utils.utility import Profile

from dlio_ext.dlio import tally
from dlio_ext.dlio.options import AdapterSpec
from dlio_ext.dlio.storage import backend_for
from dlio_ext.storage import Backend, StorageError
from dlio_ext.storage.buffers import aligned_buffer, round_up

_SLACK = 64 << 10  # npz/zip headers and the label array around the sample bytes
# DLIO's tracer, used exactly as DLIO's own readers use it: besides naming our calls in DLIO's
# traces, pydftracer 1.0.2 aborts ("double free", in enter_event) in spawned DataLoader
# workers when a reader's __init__ and open skip these decorators
dlp = Profile(MODULE_DATA_READER)


def read_whole(backend: Backend, key: str, buf: memoryview) -> tuple[int, memoryview]:
    """Read `key` into `buf`, growing the buffer (once) when the object does not fit.

    Sizes are not known up front (DLIO draws them from a normal distribution), and a HEAD before
    every GET would add a metadata round trip to the measured path, so we ask only on a miss."""
    try:
        return backend.get(key, buf), buf
    except StorageError as exc:
        if type(exc) is not StorageError:  # NotFound, AccessDenied, ...: real failures
            raise
        size = backend.stat(key).size
        if size <= len(buf):
            raise
    buf = aligned_buffer(round_up(size + size // 4))
    return backend.get(key, buf), buf


class BackendNPZReader(NPZReader):
    @dlp.log_init
    def __init__(self, dataset_type, thread_index, epoch):
        super().__init__(dataset_type, thread_index, epoch)
        spec: AdapterSpec = self._args.dlio_ext_spec
        self._spec = spec
        expect = int(
            (self._args.record_length + 3 * self._args.record_length_stdev) * self._args.num_samples_per_file
        )
        self._buf = aligned_buffer(round_up(max(expect, 0) + _SLACK))
        row = tally.reader_slot(spec.read_slots, dataset_type is DatasetType.VALID, thread_index)
        self._tally = tally.Row(spec.tally_path, row, spec.read_slots)

    @dlp.log
    def open(self, filename):
        # FormatReader.open is a no-op hook; DLIO's NPZReader.open would np.load the path
        key = self._spec.key(filename)
        backend = backend_for(self._spec)
        t0 = time.perf_counter_ns()
        n, self._buf = read_whole(backend, key, self._buf)
        self._tally.read(n, time.perf_counter_ns() - t0)
        with np.load(io.BytesIO(self._buf[:n]), allow_pickle=False) as npz:
            return npz["x"]
