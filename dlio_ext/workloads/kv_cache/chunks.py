"""A chunk's bytes as a function of its key, written and verified without per-byte Python work."""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import xxhash

from dlio_ext.storage.buffers import ALIGN, fill_random

_U64 = np.uint64
_WORDS_PER_BLOCK = ALIGN // 8
_KEY = struct.Struct("<QQ")  # a chunk key as two 64-bit words


class ChunkContent:
    """A chunk's bytes as a function of its 16-byte key: one random template (from the run seed,
    the same on every rank), the key in the first 16 bytes, and a 64-bit stamp of (key, block) at
    the start of every further 4 KiB block, so no two chunks share a block (dedup cannot shrink
    them) and a chunk read under the wrong key fails verification.

    `alloc` (the backend's `alloc`) makes the buffers chunks are written from and read into; the
    template is only ever copied, never handed to the backend, so it is plain memory."""

    def __init__(self, seed: int, nbytes: int, alloc: Callable[[int], memoryview]):
        if nbytes % ALIGN:
            raise ValueError("a chunk is a whole number of 4 KiB blocks")
        self.nbytes = nbytes
        self.alloc = alloc
        self.template = memoryview(np.zeros(nbytes, np.uint8))
        fill_random(self.template, seed * 1_000_003 + 0x4B56)
        blocks = nbytes // ALIGN
        self.slots = np.concatenate(
            [np.array([0, 1], np.int64), np.arange(1, blocks, dtype=np.int64) * _WORDS_PER_BLOCK]
        )
        self._blocks = np.arange(1, blocks, dtype=_U64)
        self._body_slots = self.slots[2:].copy()
        self.template_words = np.frombuffer(self.template, _U64)[self.slots].copy()
        self.template_digest = xxhash.xxh3_64_intdigest(self.template)

    def stamps(self, key: bytes) -> np.ndarray:
        """The words at `slots`: the key, then key_lo + block x (key_hi | 1) (mod 2**64) per block:
        distinct within a chunk and, for random 128-bit keys, across chunks."""
        h1, h2 = _KEY.unpack(key)
        out = np.empty(len(self.slots), _U64)
        out[0], out[1] = h1, h2
        body = out[2:]
        np.multiply(self._blocks, _U64(h2 | 1), out=body)
        body += _U64(h1)
        return out

    def new_buffer(self) -> memoryview:
        buf = self.alloc(self.nbytes)
        buf[:] = self.template
        return buf

    def fill(self, key: bytes, buf: memoryview) -> None:
        """Make `buf` (a buffer from `new_buffer`) hold the chunk `key`: only the stamps change."""
        np.frombuffer(buf, _U64)[self.slots] = self.stamps(key)

    def check(self, key: bytes, buf: memoryview, got: int) -> str | None:
        """None if `buf` holds chunk `key`, else what is wrong. Leaves `buf` as the template.

        Runs after every verified read, holding the GIL that the other readers wait for: a few
        whole-array numpy steps and byte compares (np.array_equal alone costs 5 us)."""
        if got != self.nbytes:
            buf[:] = self.template
            return f"read {got} bytes, a chunk has {self.nbytes}"
        words = np.frombuffer(buf, _U64)
        h1, h2 = _KEY.unpack(key)
        body = self._blocks * _U64(h2 | 1)
        body += _U64(h1)
        stamps_ok = buf[:16] == key and words[self._body_slots].tobytes() == body.tobytes()
        words[self.slots] = self.template_words
        body_ok = xxhash.xxh3_64_intdigest(buf) == self.template_digest
        if stamps_ok and body_ok:
            return None
        buf[:] = self.template
        return "its stamps name another chunk" if not stamps_ok else "its bytes differ from what was written"
