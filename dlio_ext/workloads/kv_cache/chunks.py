"""A KV chunk's bytes as a function of its key, in the form every workload shares
(`dlio_ext.workloads.content.BlockStamped`): written and verified without per-byte Python work."""

from __future__ import annotations

from dlio_ext.storage.base import VerifyError
from dlio_ext.workloads.content import Alloc, BlockStamped


class ChunkContent:
    """A chunk's bytes as a function of its 16-byte key: one random body (from the run seed, the
    same on every rank) whose 4 KiB blocks each open with a 64-bit word of (key, block), so no two
    chunks share a block (dedup cannot shrink them) and a chunk read under the wrong key fails
    verification; a chunk is a stream of one chunk (`BlockStamped` with i = 0), keyed by the
    first 64 bits of its key (random: xxh3-128 of a token chain).

    `alloc` (the backend's `alloc`) makes the buffers chunks are written from and read into."""

    def __init__(self, seed: int, nbytes: int, alloc: Alloc):
        self.nbytes = nbytes
        self.blocks = BlockStamped(seed, nbytes, alloc, stale="another chunk")
        #: the body every buffer holds between a check and the next fill (its own words)
        self.template = self.blocks.bufs[0]

    def new_buffer(self) -> memoryview:
        return self.blocks.buffer(0)

    def fill(self, key: bytes, buf: memoryview) -> None:
        """Make `buf` (a buffer from `new_buffer`) hold the chunk `key`: only the block words change."""
        self.blocks.stamp(buf, int.from_bytes(key[:8], "little"), 0, self.nbytes, 0)

    def check(self, key: bytes, buf: memoryview, got: int, where: str) -> None:
        """Raise VerifyError (naming `where`) unless `buf` holds chunk `key`, `got` bytes long.
        Leaves `buf` as the template, pass or fail.

        Runs after every verified read, holding the GIL that the other readers wait for: one
        compare of the block words and one xxh3 of the chunk (np.array_equal alone costs 5 us)."""
        if got != self.nbytes:
            self.blocks.restore(buf, 0, self.nbytes)
            raise VerifyError(f"{where}: read {got} bytes, a chunk has {self.nbytes}", where)
        self.blocks.verify(buf, int.from_bytes(key[:8], "little"), 0, got, 0, where)
