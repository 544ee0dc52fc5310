"""DLIO's checkpoint mechanism, writing through a dlio-ext backend.

Registered through DLIO's hook (`checkpoint.checkpoint_mechanism_classname`). DLIO's own
mechanisms write with open()/tf.train.Checkpoint to a local path: on storage_type=s3 that would
silently put the checkpoints on the local disk, and on posix it cannot do O_DIRECT. Files keep
DLIO's names (`<checkpoint_folder>/<model|optimizer|layer-i>-<epoch>-<step>-<rank>.pt`, with
checkpoint_folder under the storage root, see AdapterSpec.root_key) and
are streamed with torch.save into the backend's writer (multipart on S3, aligned chunks under
O_DIRECT), whatever the framework: the bytes written are the same state DLIO sizes.
"""

from __future__ import annotations

import time

import torch
from dlio_benchmark.checkpointing.base_checkpointing import BaseCheckpointing
from dlio_benchmark.common.constants import MODULE_CHECKPOINT
from dlio_benchmark.utils.utility import Profile

from dlio_ext.dlio import tally
from dlio_ext.dlio.options import AdapterSpec
from dlio_ext.dlio.storage import backend_for
from dlio_ext.storage import Writer

dlp = Profile(MODULE_CHECKPOINT)  # traced like DLIO's own mechanisms (see reader.py)


class _File:
    """The file-like torch.save wants (write + flush) over a streaming Writer, counting bytes."""

    def __init__(self, writer: Writer):
        self.writer = writer
        self.nbytes = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.writer.write(view)
        self.nbytes += len(view)
        return len(view)

    def flush(self) -> None:
        return None


class BackendCheckpointing(BaseCheckpointing):
    __instance: BackendCheckpointing | None = None

    @staticmethod
    def get_instance() -> BackendCheckpointing:
        if BackendCheckpointing.__instance is None:
            BackendCheckpointing.__instance = BackendCheckpointing()
        return BackendCheckpointing.__instance

    @dlp.log_init
    def __init__(self) -> None:
        super().__init__("pt")
        self.spec: AdapterSpec = self.args.dlio_ext_spec
        self._tally = tally.Row(self.spec.tally_path, 0, self.spec.read_slots)

    @dlp.log
    def get_tensor(self, size: int) -> torch.Tensor:
        return torch.randint(high=1, size=(size,), dtype=torch.int8)

    @dlp.log
    def save_state(self, suffix: str, state) -> None:
        key = self.spec.root_key(self.get_name(suffix))
        t0 = time.perf_counter_ns()
        with backend_for(self.spec).writer(key) as writer:
            out = _File(writer)
            torch.save(state, out)
        self._tally.write(out.nbytes, time.perf_counter_ns() - t0)

    @dlp.log
    def checkpoint(self, epoch: int, step_number: int) -> None:
        super().checkpoint(epoch, step_number)

    @dlp.log
    def finalize(self) -> None:
        super().finalize()
