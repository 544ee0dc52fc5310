"""Preallocated, page-aligned I/O buffers, filled once.

O_DIRECT needs the address, the length and the file offset aligned to the device's logical
block; an anonymous mmap is page aligned, which covers every block size we meet (512 B-4 KiB).
"""

from __future__ import annotations

import mmap

import numpy as np

ALIGN = 4096


def round_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


#: buffers this large are private anonymous memory asked to be backed by transparent huge pages
#: (madvise; the kernel decides): a transfer that pins its pages (NIXL/UCX's cma, an RDMA
#: registration, O_DIRECT) pins 512 times fewer of them. Measured here: the nixl memory tier's
#: 140 MB-a-rank checkpoint writes took about half the time (scripts/bench_tier0.py)
HUGE = 2 << 20


def aligned_buffer(nbytes: int) -> memoryview:
    """A zeroed, page-aligned writable buffer (at least one page), its pages already faulted in.

    A fresh mapping faults on first touch, about 1 ms per MiB in a VM: buffers are made before the
    clock starts, so that cost is paid here and never inside a timed operation. From HUGE bytes up,
    the mapping asks for transparent huge pages."""
    m = mmap.mmap(-1, max(round_up(nbytes), ALIGN), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if nbytes >= HUGE and hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE)
    np.frombuffer(m, dtype=np.uint8)[::ALIGN] = 0
    return memoryview(m)[:nbytes]


def address(buf: memoryview | bytes | bytearray) -> int:
    return int(np.frombuffer(buf, dtype=np.uint8).ctypes.data) if len(buf) else 0


def is_aligned(buf: memoryview | bytes | bytearray, align: int = ALIGN) -> bool:
    return address(buf) % align == 0


def fill_random(buf: memoryview, seed: int) -> None:
    """Incompressible, non-deduplicable content, generated once per buffer (never per op)."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    words = len(arr) // 8
    rng = np.random.default_rng(seed)
    if words:
        arr[: words * 8].view(np.uint64)[:] = rng.integers(0, 2**63, size=words, dtype=np.uint64)
    tail = len(arr) - words * 8
    if tail:
        arr[words * 8 :] = rng.integers(0, 256, size=tail, dtype=np.uint8)
