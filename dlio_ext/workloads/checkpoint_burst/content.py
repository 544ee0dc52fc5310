"""A checkpoint's bytes: workloads/content.py's block-stamped streams, one stream a file.

Every 4 KiB block of every shard file opens with a 64-bit word of (seed, checkpoint, writer rank,
file, block); the rest of each chunk comes from a pool of random buffers whose xxh3-64 digests
are known, so a restoring rank verifies every byte it reads with one hash pass and no manifest.
The pool is written from directly: a writer thread stamps a pool buffer in place, hands it to the
backend, and restamps it only once that call has returned.
"""

from __future__ import annotations

from dlio_ext.storage.buffers import aligned_buffer
from dlio_ext.workloads.content import Alloc, BlockStamped, mix64


class Content(BlockStamped):
    """The pool a rank streams its shards from (`pool_bytes` of `chunk`-byte buffers, at least
    one per I/O thread), the same on every rank for one seed.

    `alloc` gives the pool's buffers: the backend's (Backend.alloc) when the pool feeds one
    backend, as the workload's does; a plain aligned buffer for a caller without one."""

    def __init__(self, seed: int, chunk: int, pool_bytes: int, threads: int, alloc: Alloc = aligned_buffer):
        super().__init__(
            seed,
            chunk,
            alloc,
            bodies=pool_bytes // chunk,
            threads=threads,
            stale="another file, checkpoint or rank",
        )
        self.seed = seed

    def file_key(self, ckpt: int, writer: int, file_index: int) -> int:
        """The stream key of a file: which checkpoint, which layout rank wrote it, which file."""
        return mix64(self.seed, ckpt, writer, file_index)

    def body(self, writer: int, file_index: int, chunk_index: int) -> int:
        """Which pool buffer carries a chunk: spread over the pool, and owned by the I/O thread
        that handles the file (file_index mod threads: see PhaseRunner's FilePhase.run)."""
        return self.pick(file_index, writer * 131 + file_index * 31 + chunk_index)
