"""Content: every byte predictable by the restoring rank, no block repeated.

Every 4 KiB block of every shard carries a 64-bit word derived from (seed, checkpoint, writer
rank, file, block); the rest of each chunk comes from a pool of random buffers whose xxh3-64
digests are known, so a restoring rank verifies every byte it reads with one hash pass and no
manifest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import xxhash

from dlio_ext.storage.buffers import ALIGN, aligned_buffer, fill_random

WORDS_PER_BLOCK = ALIGN // 8
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MASK64 = (1 << 64) - 1


def _mix64(*values: int) -> int:
    """splitmix64 over a few integers: the per-file key of the block words."""
    x = 0x6A09E667F3BCC908
    for v in values:
        x = (x ^ (v & MASK64)) & MASK64
        x = (x + 0x9E3779B97F4A7C15) & MASK64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        x = z ^ (z >> 31)
    return x


def block_words(key: int, first_block: int, n: int) -> np.ndarray:
    """The words stamped into blocks first_block..first_block+n-1 of a file: distinct per block."""
    idx = np.arange(first_block, first_block + n, dtype=np.uint64)
    return (idx * GOLDEN) ^ np.uint64(key)


def word_slots(buf: memoryview, length: int) -> np.ndarray:
    """A writable view of the first 8 bytes of every 4 KiB block of buf[:length] (full words only)."""
    return np.frombuffer(buf, dtype=np.uint64, count=length // 8)[::WORDS_PER_BLOCK]


class Content:
    """The pool of reusable aligned buffers a rank streams its shards from, filled once.

    The same seed gives every rank the same pool, so a reader knows the body of any chunk; each
    chunk's block words (see `block_words`) are written into the buffer just before it is sent,
    and the digest of the body (with the pool's own words) is computed once per length.

    A buffer is stamped only by the thread that owns it (`pick`), and only once the backend call
    that sent its previous chunk has returned: backends borrow a buffer for the call only
    (dlio_ext/storage/base.py, "Buffer ownership"). Nothing else ever writes to the pool."""

    def __init__(
        self,
        seed: int,
        chunk: int,
        pool_bytes: int,
        threads: int,
        alloc: Callable[[int], memoryview] = aligned_buffer,
    ):
        """`alloc` gives the pool's buffers: the backend's (Backend.alloc) when the pool feeds
        one backend, as the workload's does; a plain aligned buffer for any other caller."""
        self.chunk, self.threads = chunk, threads
        n = max(threads, pool_bytes // chunk)
        self.bufs = [alloc(chunk) for _ in range(n)]
        for i, b in enumerate(self.bufs):
            fill_random(b, seed * 1_000_003 + 7919 + i)
        self.orig = [word_slots(b, chunk).copy() for b in self.bufs]
        self._digest: dict[tuple[int, int], int] = {}
        self.seed = seed

    @property
    def nbytes(self) -> int:
        return len(self.bufs) * self.chunk

    def pick(self, writer: int, file_index: int, chunk_index: int) -> int:
        """Which pool buffer carries a chunk; thread t of a writer owns buffers t, t+T, t+2T, ..."""
        per = len(self.bufs) // self.threads
        t = file_index % self.threads
        return t + self.threads * ((writer * 131 + file_index * 31 + chunk_index) % per)

    def body_digest(self, p: int, length: int) -> int:
        """xxh3-64 of pool buffer p's first `length` bytes as filled, with its own block words.

        Read-only: the buffer may carry another chunk's stamps right now, or be in a backend's
        hands. Only the stamp words ever change, so they come from `orig` and the bytes between
        them from the buffer, fed to one streaming hash (the same digest as hashing the filled
        buffer whole, about 3 ms for 16 MiB, once per buffer and length)."""
        key = (p, length)
        d = self._digest.get(key)
        if d is None:
            buf, words = self.bufs[p], self.orig[p].tobytes()
            h = xxhash.xxh3_64()
            for j, off in enumerate(range(0, length, ALIGN)):
                end = min(off + ALIGN, length)
                h.update(words[8 * j : 8 * j + min(8, end - off)])
                if off + 8 < end:
                    h.update(buf[off + 8 : end])
            d = self._digest[key] = h.intdigest()
        return d

    def settle_tail(self, buf: memoryview, p: int, n: int) -> None:
        """A chunk that ends 1-7 bytes into a block has no room for that block's stamp: those
        bytes are pool buffer p's own, never what a longer chunk stamped there before (which
        would depend on this process's history, and fail another rank's check)."""
        off = n // ALIGN * ALIGN
        if off < n < off + 8:
            j = off // ALIGN
            buf[off:n] = self.orig[p][j : j + 1].tobytes()[: n - off]

    def file_key(self, ckpt: int, writer: int, file_index: int) -> int:
        return _mix64(self.seed, ckpt, writer, file_index)


class FileHash:
    """A shard's content hash, xxh3-64 over each chunk's block words and body digest: every byte
    of the file enters it, and the reader computes it from what it read, in the same single pass."""

    def __init__(self) -> None:
        self.h = xxhash.xxh3_64()

    def update(self, words: np.ndarray, body: int) -> None:
        self.h.update(words.tobytes())
        self.h.update(body.to_bytes(8, "little"))

    def hexdigest(self) -> str:
        return self.h.hexdigest()
