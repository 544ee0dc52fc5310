"""The content module: what every workload writes and how a reader proves it read exactly that.

Both forms are checked the way the workloads use them, on buffers from a real backend's `alloc`:
round trips (and another process, the same seed, verifying them), a flipped byte found at its
offset, stamps of another writer, object, stream or chunk index caught, and verification that
leaves a reused buffer as it found it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xxhash

from dlio_ext.storage.base import VerifyError
from dlio_ext.storage.buffers import ALIGN
from dlio_ext.storage.posix import PosixBackend
from dlio_ext.workloads.content import (
    GOLDEN,
    MASK64,
    STAMP,
    BlockStamped,
    HeadStamped,
    StreamHash,
    mix64,
    word_slots,
)

KIB = 1024
STALE = "another file, checkpoint or rank"


class _Counted:
    """A real backend's allocator, keeping what it hands out (every buffer must come from it)."""

    def __init__(self, backend: PosixBackend):
        self.backend, self.given = backend, []

    def __call__(self, n: int) -> memoryview:
        buf = self.backend.alloc(n)
        self.given.append(buf)
        return buf


@pytest.fixture
def alloc(tmp_path: Path) -> _Counted:
    return _Counted(PosixBackend(str(tmp_path)))


# --- head-stamped objects -------------------------------------------------------------------------


def test_head_stamped_round_trip(alloc: _Counted) -> None:
    c = HeadStamped(11, 64 * KIB, alloc, salt=3)
    buf = c.buffer()
    assert len(alloc.given) == 2 and alloc.given[-1] is buf  # template and I/O buffer, both alloc's
    c.stamp(buf, 3, 41)
    assert STAMP.unpack_from(buf) == (3, 41)
    assert bytes(buf[16:]) == bytes(c.template[16:])
    c.check(buf, len(buf), 3, 41, "k")
    assert c.intact(bytes(buf), 3, 41)
    # the same seed and salt give the same body anywhere: a reader on another rank rebuilds it
    other = HeadStamped(11, 64 * KIB, alloc, salt=3)
    other.check(buf, len(buf), 3, 41, "k")
    # another writer's body (salt) is another object
    assert not HeadStamped(11, 64 * KIB, alloc, salt=4).intact(bytes(buf), 3, 41)
    # every object differs in its head, so no dedup can make the writes cheap
    b2 = c.buffer()
    c.stamp(b2, 3, 42)
    assert bytes(buf[:16]) != bytes(b2[:16]) and buf[16:] == b2[16:]


def test_head_stamped_flipped_byte_is_found_at_its_offset(alloc: _Counted) -> None:
    c = HeadStamped(5, 10_000, alloc)
    buf = c.buffer()
    c.stamp(buf, 1, 7)
    for off in (16, 4095, 9_999):
        buf[off] ^= 0x01
        with pytest.raises(VerifyError, match=rf"^obj: content differs at offset {off}$") as err:
            c.check(buf, len(buf), 1, 7, "obj")
        assert err.value.kind == "corrupt" and err.value.key == "obj"
        assert not c.intact(bytes(buf), 1, 7)
        buf[off] ^= 0x01
    c.check(buf, len(buf), 1, 7, "obj")


def test_head_stamped_catches_another_rank_or_index(alloc: _Counted) -> None:
    c = HeadStamped(5, 4096, alloc)
    buf = c.buffer()
    c.stamp(buf, 2, 9)
    with pytest.raises(VerifyError, match=r"stamp \(2, 9\), not \(1, 9\) \(its stamp differs\)"):
        c.check(buf, 4096, 1, 9, "obj")  # rank 2's object where rank 1's was expected
    with pytest.raises(VerifyError, match="its stamp differs"):
        c.check(buf, 4096, 2, 8, "obj")  # another index of the same rank
    buf[0] ^= 0xFF  # a flipped byte in the stamp itself
    with pytest.raises(VerifyError, match="its stamp differs"):
        c.check(buf, 4096, 2, 9, "obj")
    assert not c.intact(bytes(buf), 2, 9)


def test_head_stamped_length_small_and_partial(alloc: _Counted) -> None:
    c = HeadStamped(5, 4096, alloc)
    buf = c.buffer()
    c.stamp(buf, 0, 1)
    with pytest.raises(VerifyError, match=r"^o: read 4000 bytes, expected 4096$"):
        c.check(buf, 4000, 0, 1, "o")
    assert not c.intact(bytes(buf[:4000]), 0, 1)
    # objects shorter than a stamp carry its first bytes; an empty one carries nothing
    tiny = HeadStamped(5, 5, alloc)
    t = tiny.buffer()
    tiny.stamp(t, 3, 4)
    assert bytes(t) == STAMP.pack(3, 4)[:5]
    tiny.check(t, 5, 3, 4, "t")
    with pytest.raises(VerifyError, match="its stamp differs"):
        tiny.check(t, 5, 2, 4, "t")  # the first bytes name the writer (the index does not fit)
    empty = HeadStamped(5, 0, alloc)
    e = empty.buffer()
    empty.stamp(e, 1, 2)
    empty.check(e, 0, 1, 2, "e")
    # a partial read (metadata's read_bytes < write_bytes) checks the stamp and the body up to there
    part = HeadStamped(5, 4096, alloc, read=100)
    p = part.buffer()
    part.stamp(p, 1, 2)
    part.check(p, 100, 1, 2, "p")
    p[99] ^= 1
    with pytest.raises(VerifyError, match="content differs at offset 99"):
        part.check(p, 100, 1, 2, "p")
    short = HeadStamped(5, 4096, alloc, read=10)  # a read shorter than the stamp: its first bytes
    s = short.buffer()
    short.stamp(s, 1, 2)
    short.check(s, 10, 1, 2, "s")
    with pytest.raises(VerifyError, match="its stamp differs"):
        short.check(s, 10, 1, 3, "s")


class _State:
    """What a metadata thread holds: a buffer among other things."""

    def __init__(self, buf: memoryview):
        self.buf = buf


@pytest.mark.parametrize(("size", "read"), [(3901, None), (3901, 64), (12, None), (4096, 12)])
def test_loop_hooks_match_the_plain_check(alloc: _Counted, size: int, read: int | None) -> None:
    """The closures a bare loop calls (stamp before a create, check after a read) agree with
    `stamp`/`check`, through a shuffled order and names."""
    c = HeadStamped(9, size, alloc, read=read)
    n = c.read
    before = c.stamper(4)
    assert before is not None
    order = [5, 0, 3]
    names = [f"f.4.{i}" for i in order]
    check = c.checker(4, order, names)
    for i, idx in enumerate(order):
        st = _State(c.buffer())
        before(idx, st)
        check(i, st, n)  # holds (4, idx): passes
        c.check(st.buf, n, 4, idx, "x")
        with pytest.raises(VerifyError, match=f"^{names[i]}: read {n - 1} bytes"):
            check(i, st, n - 1)
        j = (i + 1) % 3  # op j expects another item than this buffer holds
        with pytest.raises(VerifyError, match=f"^{names[j]}: .*its stamp differs"):
            check(j, st, n)
        if n > 16:
            st.buf[n - 1] ^= 0x10
            with pytest.raises(VerifyError, match=f"^{names[i]}: content differs at offset {n - 1}$"):
                check(i, st, n)
    assert HeadStamped(9, 0, alloc).stamper(1) is None


# --- block-stamped streams ------------------------------------------------------------------------


def _write_stream(c: BlockStamped, key: int, nbytes: int, owner: int = 0) -> tuple[bytes, str]:
    """A stream written as checkpoint_burst writes a file: each chunk stamped into a pool buffer."""
    out, fh = bytearray(), StreamHash()
    for i, off in enumerate(range(0, nbytes, c.chunk)):
        n = min(c.chunk, nbytes - off)
        p = c.pick(owner, i)
        words = c.stamp(c.bufs[p], key, i, n, p)
        out += c.bufs[p][:n]
        fh.update(words, c.digest(p, n))
    return bytes(out), fh.hexdigest()


def _read_stream(c: BlockStamped, key: int, data: bytes, owner: int = 0) -> str:
    """Verify a stream chunk by chunk, as a restoring rank does; its StreamHash."""
    fh = StreamHash()
    buf = c.alloc(c.chunk)
    for i, off in enumerate(range(0, len(data), c.chunk)):
        n = min(c.chunk, len(data) - off)
        buf[:n] = data[off : off + n]
        fh.update(*c.verify(buf, key, i, n, c.pick(owner, i), "f"))
    return fh.hexdigest()


def test_block_stamped_round_trip_and_stream_hash(alloc: _Counted) -> None:
    c = BlockStamped(7, 64 * KIB, alloc, bodies=4, threads=2, stale=STALE)
    assert len(alloc.given) == 4 and c.nbytes == 256 * KIB
    key = mix64(7, 0, 1, 2)
    nbytes = 3 * 64 * KIB + 5 * ALIGN + 3  # the last chunk ends 3 bytes into a block
    data, written = _write_stream(c, key, nbytes)
    assert len(data) == nbytes
    # another process (a fresh pool from the same seed, as on another rank) verifies it
    fresh = BlockStamped(7, 64 * KIB, alloc, bodies=4, threads=2, stale=STALE)
    assert _read_stream(fresh, key, data) == written
    assert fresh.expected(key, nbytes, lambda i: fresh.pick(0, i)) == written
    # every block opens with (block index x GOLDEN) xor key, the words checkpoint_burst writes
    words = np.frombuffer(data[: nbytes // 8 * 8], np.uint64)[:: ALIGN // 8]
    ref = [(b * GOLDEN & MASK64) ^ key for b in range(len(words))]
    assert words.tolist() == ref
    # no block repeats, within the stream or in another stream of the same pool
    other, _ = _write_stream(c, mix64(7, 0, 1, 3), nbytes)
    full = range(0, nbytes - 8, ALIGN)  # a 3-byte last block has no room for a stamp
    blocks = [data[o : o + ALIGN] for o in full]
    blocks += [other[o : o + ALIGN] for o in full]
    assert len(set(blocks)) == len(blocks)


def test_block_stamped_catches_a_stale_or_misplaced_block(alloc: _Counted) -> None:
    c = BlockStamped(3, 64 * KIB, alloc, bodies=2, stale=STALE)
    key = mix64(3, 1)
    data, _ = _write_stream(c, key, 4 * 64 * KIB)
    # a block of another file at offset 70 KiB (chunk 1, its block 1)
    foreign, _ = _write_stream(c, mix64(3, 2), 4 * 64 * KIB)
    bad = bytearray(data)
    bad[18 * ALIGN : 19 * ALIGN] = foreign[18 * ALIGN : 19 * ALIGN]
    with pytest.raises(
        VerifyError, match=rf"^f: block at offset {18 * ALIGN} belongs to {STALE} \(its stamp differs\)$"
    ):
        _read_stream(c, key, bytes(bad))
    # a stale block: the same file's block from an older version (another key: checkpoint 0)
    old, _ = _write_stream(c, mix64(3, 1, 0), 4 * 64 * KIB)
    bad = bytearray(data)
    bad[40 * ALIGN : 41 * ALIGN] = old[40 * ALIGN : 41 * ALIGN]
    with pytest.raises(VerifyError, match=f"block at offset {40 * ALIGN} belongs to another file"):
        _read_stream(c, key, bytes(bad))
    # a misplaced block: the file's own block 5 written again where block 6 belongs
    bad = bytearray(data)
    bad[6 * ALIGN : 7 * ALIGN] = data[5 * ALIGN : 6 * ALIGN]
    with pytest.raises(VerifyError, match=f"block at offset {6 * ALIGN} belongs to another file"):
        _read_stream(c, key, bytes(bad))
    # a whole chunk in another's place: chunk 2 read where chunk 1 belongs
    bad = bytearray(data)
    bad[64 * KIB : 128 * KIB] = data[128 * KIB : 192 * KIB]
    with pytest.raises(VerifyError, match=f"block at offset {64 * KIB} belongs to"):
        _read_stream(c, key, bytes(bad))


def test_block_stamped_flipped_byte_is_found_at_its_offset(alloc: _Counted) -> None:
    c = BlockStamped(3, 64 * KIB, alloc, bodies=2, stale=STALE)
    key = mix64(3, 9)
    nbytes = 2 * 64 * KIB + 2 * ALIGN + 5
    data, _ = _write_stream(c, key, nbytes)
    for off in (8, 4095, 64 * KIB + 100, nbytes - 1):  # body bytes, and the unstamped tail
        bad = bytearray(data)
        bad[off] ^= 0x04
        with pytest.raises(VerifyError, match=rf"^f: content differs at offset {off}$") as err:
            _read_stream(c, key, bytes(bad))
        assert err.value.kind == "corrupt"
    bad = bytearray(data)
    bad[64 * KIB + 3] ^= 0x04  # inside a stamp word: the block belongs elsewhere
    with pytest.raises(VerifyError, match=f"block at offset {64 * KIB} belongs to"):
        _read_stream(c, key, bytes(bad))


def test_verify_leaves_a_template_copy_ready_for_its_next_stamp(alloc: _Counted) -> None:
    """kv_cache's use: one body, I/O buffers that are copies of it, stamped and verified in place;
    after a check, pass or fail, the buffer is the body again."""
    c = BlockStamped(1, 32 * KIB, alloc, stale="another chunk")
    body = bytes(c.buffer())
    assert len(alloc.given) == 2
    buf = c.buffer()
    ka, kb = mix64(0xA), mix64(0xB)
    c.stamp(buf, ka, 0, len(buf), 0)
    c.verify(buf, ka, 0, len(buf), 0, "chunk a")
    assert bytes(buf) == body
    c.stamp(buf, ka, 0, len(buf), 0)
    with pytest.raises(VerifyError, match="^chunk b: block at offset 0 belongs to another chunk"):
        c.verify(buf, kb, 0, len(buf), 0, "chunk b")
    assert bytes(buf) == body
    c.stamp(buf, kb, 0, len(buf), 0)
    buf[5000] ^= 1
    with pytest.raises(VerifyError, match="content differs at offset 5000"):
        c.verify(buf, kb, 0, len(buf), 0, "chunk b")
    assert bytes(buf) == body


def test_digest_never_writes_the_pool(alloc: _Counted) -> None:
    """A body's digest is taken while its pool buffer carries another chunk's stamps (and may be
    in a backend's hands): it must be the filled body's hash and leave every byte as it was."""
    c = BlockStamped(9, 64 * KIB, alloc, bodies=3)
    filled = [bytes(b) for b in c.bufs]
    for p, n in ((0, 64 * KIB), (1, 64 * KIB - ALIGN + 5), (2, 4100), (2, 7)):
        c.stamp(c.bufs[p], 0xFEED, 3, 64 * KIB, p)
        before = bytes(c.bufs[p])
        assert c.digest(p, n) == xxhash.xxh3_64_intdigest(filled[p][:n])
        assert bytes(c.bufs[p]) == before


def test_short_last_word_carries_no_stale_stamp(alloc: _Counted) -> None:
    """A chunk ending 3 bytes into a block, stamped into a pool buffer a longer chunk has just
    stamped all over: its tail is the body's own, so a fresh pool verifies it."""
    c = BlockStamped(5, 64 * KIB, alloc)
    buf = c.bufs[0]
    c.stamp(buf, 0x1234, 0, 64 * KIB, 0)
    n = 10 * ALIGN + 3
    c.stamp(buf, 0x99, 0, n, 0)
    assert bytes(buf[10 * ALIGN : n]) == c.orig[0][10:11].tobytes()[:3]
    fresh = BlockStamped(5, 64 * KIB, alloc)
    copy = fresh.alloc(64 * KIB)
    copy[:n] = buf[:n]
    fresh.verify(copy, 0x99, 0, n, 0, "short")


def test_pick_gives_each_thread_its_own_bodies(alloc: _Counted) -> None:
    c = BlockStamped(1, 4 * KIB, alloc, bodies=6, threads=3)
    for owner in range(7):
        got = {c.pick(owner, n) for n in range(50)}
        assert got == {owner % 3, owner % 3 + 3}
    assert len(BlockStamped(1, 4 * KIB, alloc, bodies=1, threads=4).bufs) == 4  # a body per thread
    with pytest.raises(ValueError, match="whole number of 4096-byte blocks"):
        BlockStamped(1, 5000, alloc)


def test_words_are_the_same_in_another_process(tmp_path: Path) -> None:
    """The words and digests depend on the seed and the key only, never on the process."""
    code = (
        "from dlio_ext.storage.buffers import aligned_buffer\n"
        "from dlio_ext.workloads.content import BlockStamped, mix64\n"
        "c = BlockStamped(42, 16384, aligned_buffer, bodies=2)\n"
        "print(c.words(mix64(1, 2), 3, 10000).tolist(), c.digest(1, 10000))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    c = BlockStamped(42, 16 * KIB, PosixBackend(str(tmp_path)).alloc, bodies=2)
    assert out.strip() == f"{c.words(mix64(1, 2), 3, 10000).tolist()} {c.digest(1, 10000)}"
    assert word_slots(memoryview(bytearray(10000)), 10000).shape == (3,)
