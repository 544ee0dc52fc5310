"""The limit of a file shape: the best fio does on the very files dlio-ext reads or writes.

A shape is a list of streams (each a list of (file, offset, length) slices read or written one
after the other, block size `bs`, O_DIRECT, optionally fsync at each file's close). `sweep` runs
every config of a short grid once (ioengine psync, libaio, io_uring; the number of jobs, i.e. how
the shape's slices are dealt out; iodepth 1, 4, 16 for the async engines) and returns the best;
the bench scripts then run that one config interleaved with dlio-ext for their medians. fio's
buffers sit on transparent huge pages and are touched before the clock, as dlio-ext's are
(see FIO_ENV).

fio reports GB/s as all bytes over the longest job's runtime (its group_reporting), which is how
the benches define dlio-ext's figures too (bytes over the span of the whole transfer).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ENGINES = ("psync", "libaio", "io_uring")
#: fio's I/O buffers as dlio-ext's are (`storage.buffers`): on transparent huge pages (MADV_HUGEPAGE
#: from 2 MiB up) and touched before the clock. With 4 KiB pages, pinning a 32 MiB O_DIRECT buffer
#: page by page held fio to 1.2-1.4 GB/s where the same files read at 2.0-2.6 GB/s; and a read
#: buffer first touched by its first read put the page faults of jobs x iodepth buffers (1 GiB at
#: 8 x 4 x 32 MiB) inside fio's clock: 0.9-1.6 GB/s against 2.4-3.2 pre-touched (both measured on
#: this project's VM, THP `madvise`). glibc (2.35+) madvises its mmap'd allocations with
#: glibc.malloc.hugetlb=1, and MALLOC_PERTURB_ fills every allocation when it is made.
_TUNE = "glibc.malloc.hugetlb=1"
FIO_ENV = {
    **os.environ,
    "GLIBC_TUNABLES": ":".join(x for x in (os.environ.get("GLIBC_TUNABLES"), _TUNE) if x),
    "MALLOC_PERTURB_": "85",
}
DEPTHS = (1, 4, 16)  # per job, async engines only (psync has one I/O in flight per job)


@dataclass(frozen=True)
class Slice:
    path: Path
    offset: int
    length: int


@dataclass(frozen=True)
class Config:
    engine: str
    jobs: int
    iodepth: int

    @property
    def label(self) -> str:
        return f"{self.engine}, {self.jobs} jobs x iodepth {self.iodepth}"


@dataclass(frozen=True)
class Shape:
    """What dlio-ext does, in fio's terms. `deal(jobs)` gives each job's slices, in order."""

    rw: str  # "read" | "write"
    bs: int
    deal: Callable[[int], list[list[Slice]]]
    fsync_on_close: bool = False  # fsync every file before closing it (checkpoint writes)
    #: where a job's whole files get hard links, one directory per job that fio opens (`opendir`):
    #: thousands of names do not fit in one `filename=` (same file system as the files)
    links: Path | None = None

    def describe(self, cfg: Config) -> str:
        sync = ", fsync per file" if self.fsync_on_close else ""
        return f"fio {cfg.label}, {self.rw} bs={self.bs} direct=1{sync}, THP buffers touched first"


def available() -> bool:
    return shutil.which("fio") is not None


def per_file(files: Sequence[str | Path], size: int) -> Callable[[int], list[list[Slice]]]:
    """KV chunks: one file per chunk, whole; the files dealt round-robin to the jobs (each job
    opens, reads and closes its files one after the other, as a reader thread does)."""

    def deal(jobs: int) -> list[list[Slice]]:
        out: list[list[Slice]] = [[] for _ in range(min(jobs, len(files)))]
        for i, f in enumerate(files):
            out[i % len(out)].append(Slice(Path(f), 0, size))
        return out

    return deal


def split_files(files: Sequence[tuple[Path, int]], bs: int) -> Callable[[int], list[list[Slice]]]:
    """Checkpoint shards: all files' bytes cut into `jobs` runs of whole blocks, as equal as
    blocks allow, each job writing (or reading) its run from start to end, crossing a file
    boundary where its run does; jobs = the number of files is one stream per file."""

    def deal(jobs: int) -> list[list[Slice]]:
        blocks = [(Path(f), n // bs) for f, n in files]
        total = sum(b for _, b in blocks)
        jobs = max(1, min(jobs, total))
        bounds = [total * j // jobs for j in range(jobs + 1)]
        out: list[list[Slice]] = []
        for j in range(jobs):
            lo, hi, at, mine = bounds[j], bounds[j + 1], 0, []
            for f, b in blocks:
                a, z = max(lo, at), min(hi, at + b)
                if a < z:
                    mine.append(Slice(f, (a - at) * bs, (z - a) * bs))
                at += b
            out.append(mine)
        return out

    return deal


def jobfile(shape: Shape, cfg: Config) -> str:
    """One fio section per job; a job whose slices are not all whole files of one size (a
    checkpoint run crossing a file boundary) is a chain of sections, each started when the one
    before it ends (`wait_for`)."""
    glob = [
        "[global]",
        f"rw={shape.rw}",
        f"bs={shape.bs}",
        "direct=1",
        f"ioengine={cfg.engine}",
        f"iodepth={cfg.iodepth}",
        "fallocate=none",  # dlio-ext does not preallocate either
        "invalidate=0",  # nor drop a file's cache at each open (O_DIRECT bypasses it anyway)
        "create_on_open=1",
    ]
    if shape.rw == "read":
        glob.append("allow_file_create=0")  # a missing file is an error, not one fio lays out
    if shape.fsync_on_close:
        glob.append("fsync_on_close=1")
    secs: list[str] = []
    for j, slices in enumerate(shape.deal(cfg.jobs)):
        n = slices[0].length
        if len(slices) > 1 and all(s.offset == 0 and s.length == n for s in slices):
            # whole files of one size (KV chunks): one section, the files in turn; the async
            # engines keep up to iodepth of them open with an I/O in flight each
            if shape.links is None:
                secs += ["", f"[j{j}]", "filename=" + ":".join(_escape(s.path) for s in slices)]
            else:
                secs += [
                    "",
                    f"[j{j}]",
                    f"opendir={_link_dir(shape.links / f'{cfg.jobs}-jobs' / f'j{j}', slices)}",
                ]
            secs += [f"filesize={n}", f"size={n * len(slices)}", f"openfiles={min(cfg.iodepth, len(slices))}"]
            continue
        for k, sl in enumerate(slices):
            secs += [
                "",
                f"[j{j}s{k}]",
                f"filename={_escape(sl.path)}",
                f"offset={sl.offset}",
                f"size={sl.length}",
            ]
            if k:
                secs.append(f"wait_for=j{j}s{k - 1}")
    return "\n".join(glob + secs) + "\n"


def _link_dir(d: Path, slices: list[Slice]) -> Path:
    """`d` holding a hard link to each slice's file (made once, kept for the next run)."""
    if not d.is_dir():
        tmp = d.with_name(d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for i, sl in enumerate(slices):
            os.link(sl.path, tmp / str(i))
        tmp.rename(d)
    return d


def _escape(p: Path) -> str:
    return str(p).replace(":", "\\:")  # fio's separator of file names


def run(shape: Shape, cfg: Config, timeout: float = 600) -> float:
    """GB/s of one fio run of `shape` with `cfg`: all bytes over the longest job's time, a
    chained job's time being the sum of its sections' (fio's own per-section runtimes)."""
    if shape.rw == "write":  # a write creates its files, as dlio-ext's burst does (no overwrite)
        for path in {sl.path for slices in shape.deal(cfg.jobs) for sl in slices}:
            path.unlink(missing_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".fio", prefix="dlio-ext-") as jf:
        jf.write(jobfile(shape, cfg))
        jf.flush()
        p = subprocess.run(
            ["fio", "--output-format=json", jf.name],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=FIO_ENV,
        )
    if p.returncode != 0 or "{" not in p.stdout:
        why = " / ".join(x for x in (p.stderr + p.stdout).strip().splitlines()[-3:] if x)
        raise RuntimeError(f"fio {cfg.label} failed ({p.returncode}): {why[-300:]}")
    nbytes, per_job = 0, {}
    for job in json.loads(p.stdout[p.stdout.index("{") :])["jobs"]:
        if job["error"]:
            raise RuntimeError(f"fio {cfg.label}: section {job['jobname']}: error {job['error']}")
        nbytes += job[shape.rw]["io_bytes"]
        chain = job["jobname"].split("s")[0]
        per_job[chain] = per_job.get(chain, 0) + job["job_runtime"]
    want = sum(s.length for slices in shape.deal(cfg.jobs) for s in slices)
    if nbytes != want:
        raise RuntimeError(f"fio {cfg.label} moved {nbytes} bytes, the shape has {want}")
    return nbytes / (max(per_job.values()) / 1e3) / 1e9


def grid(jobs: Sequence[int]) -> list[Config]:
    out = [Config("psync", j, 1) for j in jobs]
    return out + [Config(e, j, d) for e in ENGINES[1:] for j in jobs for d in DEPTHS]


def within(seen: dict[str, list[float]], jobs: Sequence[int], inflight: int) -> Config | None:
    """The fastest config of a sweep (`seen`: samples by label, as `sweep` returns them) that keeps
    at most `inflight` I/Os queued (jobs x iodepth): fio at the caller's own depth, which tells
    what queue depth buys apart from what the caller's own path costs."""
    fits = [c for c in grid(jobs) if c.jobs * c.iodepth <= inflight and seen.get(c.label)]
    return max(fits, key=lambda c: statistics.median(seen[c.label]), default=None)


def sweep(
    shape: Shape, jobs: Sequence[int], say: Callable[[str], None], finalists: int = 4, again: int = 2
) -> tuple[Config, dict[str, list[float]]]:
    """Every config of the grid once, then the `finalists` fastest `again` more times each
    (one run is noisy on a shared disk: the best of one sample each would crown luck); returns
    the finalist with the best median and every config's GB/s samples (by label)."""
    seen: dict[Config, list[float]] = {cfg: [run(shape, cfg)] for cfg in grid(jobs)}
    top = sorted(seen, key=lambda c: -seen[c][0])[:finalists]
    for _ in range(again):
        for cfg in top:
            seen[cfg].append(run(shape, cfg))
    best = max(top, key=lambda c: statistics.median(seen[c]))
    say(f"fio sweep ({len(seen)} configs): best {best.label} {statistics.median(seen[best]):.3f} GB/s")
    return best, {c.label: [round(x, 3) for x in v] for c, v in seen.items()}
