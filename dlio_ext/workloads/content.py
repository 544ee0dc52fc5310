"""What workloads write, and how a reader proves it got exactly that back, with no manifest.

Two forms, both incompressible (random bytes from the run seed, generated once per buffer, never
per op) and both verified in one hash pass:

- `HeadStamped`: objects of one size that differ only in a 16-byte stamp at their head, two
  integers such as (writer rank, index); the body after it is the same for every object of a
  writer. A read is verified by its length, its stamp and an xxh3-64 of its body (storage_sweep,
  metadata, the s3-faults read-back).
- `BlockStamped`: streams (a checkpoint shard, a KV chunk) cut into chunks, every 4 KiB block
  opening with a 64-bit word of (stream key, block index), the rest of a chunk coming from one
  of a pool of random bodies whose digests are known. A block that is stale, from another stream
  or misplaced is caught at its offset; any other wrong byte by the chunk's hash, and found at
  its offset only then (checkpoint_burst, kv_cache).

Buffers come from the caller's `alloc` (a workload passes `ctx.backend.alloc`, so a backend that
needs registered memory owns them). A buffer handed to a backend belongs to it until the call
returns (storage/base.py, "Buffer ownership"): stamp or restore a buffer only between calls;
digests are computed without writing the pool (`BlockStamped.digest`). Verification failures
raise `VerifyError` (kind `corrupt`) naming the object and what is wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import xxhash

from dlio_ext.storage.base import VerifyError
from dlio_ext.storage.buffers import ALIGN, fill_random
from dlio_ext.storage.native import Expect, Stamp

#: gives a writable buffer of n bytes (a workload's `ctx.backend.alloc`)
Alloc = Callable[[int], memoryview]


class HasBuf(Protocol):
    """A loop thread's state: whatever it holds, its I/O buffer is `buf`."""

    buf: memoryview


#: the head stamp of a `HeadStamped` object: two little-endian 64-bit words
STAMP = struct.Struct("<QQ")
WORDS_PER_BLOCK = ALIGN // 8
GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1

_h64 = xxhash.xxh3_64_intdigest


def mix64(*values: int) -> int:
    """splitmix64 over a few integers (seed, checkpoint, writer, file...): a stream's key."""
    x = 0x6A09E667F3BCC908
    for v in values:
        x = (x ^ (v & MASK64)) & MASK64
        x = (x + GOLDEN) & MASK64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        x = z ^ (z >> 31)
    return x


def _first_difference(a: memoryview, b: memoryview) -> int:
    """Offset of the first byte where a and b (of one length) differ; -1 if they are equal."""
    diff = np.flatnonzero(np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8))
    return int(diff[0]) if len(diff) else -1


# --------------------------------------------------------------------------------------------
# head-stamped objects


class HeadStamped:
    """Objects of `size` bytes: a (a, b) stamp in the first 16 bytes, then a body that is the
    same for every object (random, from `seed` and `salt`, made once). Objects shorter than 16
    bytes carry the stamp's first `size` bytes. A reader may verify only the first `read` bytes
    (a partial read): then the stamp and the body up to there."""

    def __init__(self, seed: int, size: int, alloc: Alloc, *, salt: int = 0, read: int | None = None):
        self.size = size
        self.read = size if read is None else read
        self.alloc = alloc
        self.template = alloc(size)
        fill_random(self.template, seed * 1_000_003 + salt)
        self.stamp_len = min(STAMP.size, size)
        #: how much of a read is stamp; the body after it is hashed
        self.head = min(STAMP.size, self.read)
        self.body_hash = _h64(self.template[self.head : self.read]) if self.read > self.head else 0

    def buffer(self) -> memoryview:
        """A new I/O buffer holding the body (from `alloc`, every page written before any clock)."""
        buf = self.alloc(self.size)
        buf[:] = self.template
        return buf

    def stamp(self, buf: memoryview, a: int, b: int) -> None:
        """Make `buf` (from `buffer`) object (a, b): only its head changes."""
        if self.stamp_len == STAMP.size:
            STAMP.pack_into(buf, 0, a, b)
        elif self.stamp_len:
            buf[: self.stamp_len] = STAMP.pack(a, b)[: self.stamp_len]

    def check(self, buf: memoryview | bytes, got: int, a: int, b: int, where: object) -> None:
        """Raise VerifyError unless `buf` holds the first `read` bytes of object (a, b) and
        `got` (bytes the read returned) is `read`."""
        if not self._holds(buf, got, a, b):
            self._fail(buf, got, a, b, where)

    def intact(self, data: memoryview | bytes, a: int, b: int) -> bool:
        """Whether `data` (a whole object read back) is exactly object (a, b)."""
        return self._holds(data, len(data), a, b)

    def _holds(self, buf: memoryview | bytes, got: int, a: int, b: int) -> bool:
        n, head = self.read, self.head
        return (
            got == n
            and buf[:head] == STAMP.pack(a, b)[:head]
            and (n <= head or _h64(buf[head:n]) == self.body_hash)
        )

    def _fail(self, buf: memoryview | bytes, got: int, a: int, b: int, where: object) -> None:
        """Say what is wrong with a buffer that failed the check (the slow path, once)."""
        n, head = self.read, self.head
        if got != n:
            raise VerifyError(f"{where}: read {got} bytes, expected {n}", str(where))
        if buf[:head] != STAMP.pack(a, b)[:head]:
            found = STAMP.unpack_from(buf) if head == STAMP.size else bytes(buf[:head]).hex()
            raise VerifyError(
                f"{where}: holds another object's stamp {found}, not {(a, b)} (its stamp differs)", str(where)
            )
        at = _first_difference(memoryview(buf)[head:n], self.template[head:n])
        raise VerifyError(f"{where}: content differs at offset {head + max(at, 0)}", str(where))

    # the forms a tight loop (phases.bare_loop) calls: one closure, no lookups per op beyond the
    # thread state's `buf` (its I/O buffer, from `buffer()`)

    def stamper(self, a: int) -> Callable[[int, HasBuf], None] | None:
        """`before(i, state)`: stamp object (a, i) into `state.buf`; None when objects are empty
        (nothing to stamp)."""
        sl, pack, pack_into = self.stamp_len, STAMP.pack, STAMP.pack_into
        if sl == STAMP.size:

            def before(i: int, st: HasBuf) -> None:
                pack_into(st.buf, 0, a, i)

            return before
        if sl:

            def before_short(i: int, st: HasBuf) -> None:
                st.buf[:sl] = pack(a, i)[:sl]

            return before_short
        return None

    # the same, for a compiled loop (storage.native): what `stamper` stamps and `checker` checks

    def native_stamp(self, a: int) -> Stamp:
        """What `stamper(a)` writes into each object's head."""
        return Stamp(a, self.stamp_len)

    def native_expect(self, a: int, order: Sequence[int] | None) -> Expect:
        """What `checker(a, order, ...)` accepts: the body compared byte for byte with the
        template (what the hash stands for)."""
        return Expect(self.read, self.head, a, order, self.template)

    def checker(
        self, a: int, order: Sequence[int] | None, names: Sequence[object]
    ) -> Callable[[int, HasBuf, int], None]:
        """`check(i, state, got)`: op i read object (a, order[i]) (or (a, i) without an order)
        into `state.buf`; raises VerifyError naming `names[i]` unless it did exactly."""
        n, head, body = self.read, self.head, self.body_hash
        full = head == STAMP.size
        pack, unpack_from, fail = STAMP.pack, STAMP.unpack_from, self._fail

        def check(i: int, st: HasBuf, got: int) -> None:
            buf = st.buf
            b = order[i] if order is not None else i
            # the same test as _holds, inlined: this runs once per op of a metadata read storm
            if (
                got != n
                or (unpack_from(buf) != (a, b) if full else buf[:head] != pack(a, b)[:head])
                or (n > head and _h64(buf[head:n]) != body)
            ):
                fail(buf, got, a, b, names[i])

        return check


# --------------------------------------------------------------------------------------------
# block-stamped streams


def word_slots(buf: memoryview, length: int) -> np.ndarray:
    """A writable view of the first 8 bytes of every 4 KiB block of buf[:length] (whole words only)."""
    return np.frombuffer(buf, dtype=np.uint64, count=length // 8)[::WORDS_PER_BLOCK]


class StreamHash:
    """A stream's content hash: xxh3-64 over each chunk's block words and body digest, in order.
    Every byte of the stream enters it; a writer and a verifying reader get it in the pass they
    make anyway, and `BlockStamped` gives it without I/O (a manifest such as DCP's .metadata)."""

    def __init__(self) -> None:
        self.h = xxhash.xxh3_64()

    def update(self, words: np.ndarray, body: int) -> None:
        self.h.update(words.tobytes())
        self.h.update(body.to_bytes(8, "little"))

    def hexdigest(self) -> str:
        return self.h.hexdigest()


class BlockStamped:
    """Streams of chunks of at most `chunk` bytes (a multiple of 4 KiB), each chunk taken from one
    of `bodies` random buffers filled once from `seed` (the same on every rank, so any rank knows
    any chunk's body), its 4 KiB blocks opening with the words of (stream key, block index):
    `words(key, i, n)`. No two blocks of a run are alike (dedup and compression gain nothing),
    and a reader verifies a chunk with one compare of its words and one hash of its bytes.

    The pool (`bufs`) may be written from directly: `stamp` a body in place, hand it to the
    backend, restamp it for the next chunk once that call has returned. Or it is a template:
    `buffer(p)` makes an I/O buffer holding body p, stamped and restamped in place. `orig`
    keeps each body's own words (the truth once its blocks carry stamps).

    `stale` names where a block with the wrong words comes from, in messages ("another file,
    checkpoint or rank"); `threads` splits the pool among writer threads (see `pick`).

    A stream key is any 64-bit number naming the stream: `mix64(seed, checkpoint, writer, file)`
    for a checkpoint file (chunk i from body `pick(file, any spread of writer, file, i)`, written
    straight from the pool); the first word of a random 128-bit KV key for a KV chunk (one body,
    `bodies=1`, I/O buffers from `buffer()`, one chunk a stream: i = 0). Writer: `words =
    stamp(buf, key, i, n, p)`, send buf[:n], `StreamHash.update(words, digest(p, n))`. Reader:
    `StreamHash.update(*verify(buf, key, i, n, p, where))`."""

    def __init__(
        self,
        seed: int,
        chunk: int,
        alloc: Alloc,
        *,
        bodies: int = 1,
        threads: int = 1,
        stale: str = "another stream",
    ):
        if chunk <= 0 or chunk % ALIGN:
            raise ValueError(f"a chunk is a whole number of {ALIGN}-byte blocks, not {chunk} bytes")
        self.chunk, self.threads, self.stale, self.alloc = chunk, threads, stale, alloc
        self.blocks = chunk // ALIGN
        self.bufs = [alloc(chunk) for _ in range(max(bodies, threads, 1))]
        for i, b in enumerate(self.bufs):
            fill_random(b, seed * 1_000_003 + 7919 + i)
        self.orig = [word_slots(b, chunk).copy() for b in self.bufs]
        # block j's offset into the stream's words: (first + j) x GOLDEN = first x GOLDEN + step[j]
        self._steps = np.arange(self.blocks, dtype=np.uint64) * np.uint64(GOLDEN)
        self._digest: dict[tuple[int, int], int] = {}

    @property
    def nbytes(self) -> int:
        return len(self.bufs) * self.chunk

    def pick(self, owner: int, n: int) -> int:
        """The body for a writer's n-th chunk (any spread of numbers will do): thread t (owner
        mod threads) owns bodies t, t+T, t+2T, ..., so a thread restamps only its own."""
        per = len(self.bufs) // self.threads
        return owner % self.threads + self.threads * (n % per)

    def words(self, key: int, i: int, n: int) -> np.ndarray:
        """The words opening the blocks of chunk i (n bytes) of stream `key`: block b of the
        stream gets b x GOLDEN xor key (mod 2**64), distinct per block and per key."""
        steps = self._steps[: -(-(n // 8) // WORDS_PER_BLOCK)]  # a word for every block with room
        if i == 0:  # a stream's first chunk (every KV chunk): one vector op
            return steps ^ np.uint64(key & MASK64)
        out = steps + np.uint64(i * self.blocks * GOLDEN & MASK64)
        out ^= np.uint64(key & MASK64)
        return out

    def stamp(self, buf: memoryview, key: int, i: int, n: int, p: int) -> np.ndarray:
        """Make buf[:n] (holding body p: a pool buffer or a `buffer(p)`) chunk i of stream `key`;
        returns its words (for `StreamHash.update`)."""
        words = self.words(key, i, n)
        word_slots(buf, n)[:] = words
        if n % ALIGN:
            self._settle_tail(buf, p, n)
        return words

    def _settle_tail(self, buf: memoryview, p: int, n: int) -> None:
        """A chunk ending 1-7 bytes into a block has no room for its stamp: those bytes are body
        p's own, never what a longer chunk stamped there before (which would depend on this
        process's history, and fail another rank's check)."""
        off = n // ALIGN * ALIGN
        if off < n < off + 8:
            j = off // ALIGN
            buf[off:n] = self.orig[p][j : j + 1].tobytes()[: n - off]

    def digest(self, p: int, n: int) -> int:
        """xxh3-64 of body p's first n bytes with its own words, cached per (p, n).

        Read-only: the pool buffer may carry another chunk's stamps right now, or be in a
        backend's hands. Only the stamp words ever change, so they come from `orig` and the
        bytes between them from the buffer, fed to one streaming hash (about 3 ms for 16 MiB,
        once per body and length)."""
        d = self._digest.get((p, n))
        if d is None:
            buf, words = self.bufs[p], self.orig[p].tobytes()
            h = xxhash.xxh3_64()
            for j, off in enumerate(range(0, n, ALIGN)):
                end = min(off + ALIGN, n)
                h.update(words[8 * j : 8 * j + min(8, end - off)])
                if off + 8 < end:
                    h.update(buf[off + 8 : end])
            d = self._digest[(p, n)] = h.intdigest()
        return d

    def buffer(self, p: int = 0) -> memoryview:
        """A new I/O buffer (from `alloc`) holding body p with its own words."""
        buf = self.alloc(self.chunk)
        self.restore(buf, p, self.chunk)
        return buf

    def restore(self, buf: memoryview, p: int, n: int) -> None:
        """Make buf[:n] body p again, its own words included (the pool may carry stamps)."""
        buf[:n] = self.bufs[p][:n]
        slots = word_slots(buf, n)
        slots[:] = self.orig[p][: len(slots)]
        self._settle_tail(buf, p, n)

    def verify(
        self, buf: memoryview, key: int, i: int, n: int, p: int, where: object
    ) -> tuple[np.ndarray, int]:
        """Check that buf[:n] is chunk i of stream `key` from body p; returns (its words, its body
        digest) for `StreamHash.update`. Leaves buf[:n] as body p, pass or fail (so a reused
        template copy is ready for its next stamp). Raises VerifyError: a block whose words
        differ "belongs to" `stale` "(its stamp differs)"; any other byte "content differs at
        offset" X, X counted from the stream's start (chunk i starts at i x chunk)."""
        start = i * self.chunk
        slots = word_slots(buf, n)
        want = self.words(key, i, n)
        if slots.tobytes() != want.tobytes():
            bad = int(np.flatnonzero(slots != want)[0])
            zeros = int(slots[bad]) == 0  # not another stream's block: a wiped or unwritten one
            self.restore(buf, p, n)
            whose = (
                "holds zeros where its stamp belongs"
                if zeros
                else f"belongs to {self.stale} (its stamp differs)"
            )
            raise VerifyError(f"{where}: block at offset {start + bad * ALIGN} {whose}", str(where))
        slots[:] = self.orig[p][: len(slots)]
        body = _h64(buf[:n])
        if body != self.digest(p, n):
            truth = memoryview(bytearray(n))  # body p as filled (the pool may carry stamps now)
            self.restore(truth, p, n)
            at = _first_difference(buf[:n], truth)
            buf[:n] = truth
            raise VerifyError(f"{where}: content differs at offset {start + max(at, 0)}", str(where))
        return want, body

    def expected(self, key: int, nbytes: int, pick: Callable[[int], int]) -> str:
        """The `StreamHash` of a whole stream of `nbytes` (chunk i from body pick(i)), without I/O."""
        fh = StreamHash()
        for i, off in enumerate(range(0, nbytes, self.chunk)):
            n = min(self.chunk, nbytes - off)
            fh.update(self.words(key, i, n), self.digest(pick(i), n))
        return fh.hexdigest()
