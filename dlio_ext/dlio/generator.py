"""DLIO's NPZ data generator, writing through a dlio-ext backend.

Same files as DLIO's NPZGenerator (same names, shapes, seed and content), but each file is built
in memory and handed to `backend.put`: np.savez wants a path or a seekable file, which an object
store does not offer, and a path-based write cannot use O_DIRECT.
"""

from __future__ import annotations

import io
import time

import numpy as np
from dlio_benchmark.common.constants import MODULE_DATA_GENERATOR
from dlio_benchmark.common.enumerations import Compression
from dlio_benchmark.data_generator.data_generator import DataGenerator
from dlio_benchmark.data_generator.npz_generator import NPZGenerator
from dlio_benchmark.utils.utility import Profile, progress

from dlio_ext.dlio import tally
from dlio_ext.dlio.options import AdapterSpec
from dlio_ext.dlio.storage import backend_for

dlp = Profile(MODULE_DATA_GENERATOR)  # traced like DLIO's own generators (see reader.py)


class BackendNPZGenerator(NPZGenerator):
    def __init__(self, spec: AdapterSpec):
        super().__init__()
        self.spec = spec

    @dlp.log
    def generate(self) -> None:
        # DataGenerator.generate, not NPZGenerator.generate: we want the file list and the
        # directory set-up, then our own writing loop in place of DLIO's np.savez(path)
        DataGenerator.generate(self)
        backend = backend_for(self.spec)
        counts = tally.Row(self.spec.tally_path, 0, self.spec.read_slots)
        save = np.savez_compressed if self.compression == Compression.ZIP else np.savez
        np.random.seed(10)  # DLIO's seed: the same bytes as a DLIO-generated dataset
        record_labels = [0] * self.num_samples
        dim = self.get_dimension(self.total_files_to_generate)
        out = io.BytesIO()
        for i in range(self.my_rank, int(self.total_files_to_generate), self.comm_size):
            records = np.random.randint(
                255, size=(dim[2 * i], dim[2 * i + 1], self.num_samples), dtype=np.uint8
            )
            key = self.spec.key(self.storage.get_uri(self._file_list[i]))
            progress(i + 1, self.total_files_to_generate, "Generating NPZ Data")
            out.seek(0)
            out.truncate()
            save(out, x=records, y=record_labels)
            size = out.tell()
            with out.getbuffer() as view:
                t0 = time.perf_counter_ns()
                backend.put(key, view[:size])
                counts.write(size, time.perf_counter_ns() - t0)
        np.random.seed()
