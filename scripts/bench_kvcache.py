#!/usr/bin/env python3
"""Is the KV-cache workload its own bottleneck? Its chunk read path against raw reads of the same
chunks at the same concurrency, and the cost of recording one latency sample.

    .venv/bin/python scripts/bench_kvcache.py [--quick] [--reps N] [--only posix|s3|record]

One run on one machine; every pair is interleaved (dlio-ext, baseline, baseline, dlio-ext, ...)
so a noisy neighbour hits both sides alike; the table shows medians.

1. posix, O_DIRECT: `Server.read_chunk` (the code every request runs for a storage hit: take a
   chunk buffer, backend get, time and record it, verify stamps + xxh3; one thread per transfer
   in flight) over chunk files the workload's write path wrote, against the LIMIT: the best fio
   does reading those very files (one file per chunk, whole, O_DIRECT, bs = the chunk). A short
   sweep once per size (`fio_limit.py`: psync, libaio and io_uring; 1 job up to the bench's
   transfers in flight and beyond; iodepth 1, 4, 16 for the async engines) picks the fastest
   config, which then runs interleaved with dlio-ext. `dd iflag=direct bs=<chunk>` (as many dd
   as threads, over files holding the same chunks) stays as a sanity row. Both sizes: Llama-3-8B's
   real 32 MiB chunk with 10 transfers in flight (10 users, issue #14's shape) and the laptop
   presets' 128 KiB (scale 1/256) with 16 (`workload.max_inflight`'s default; the Llama-3-8B
   presets allow 32).
2. S3, a local SeaweedFS started here (stopped in a finally): the same read path with the s3
   backend (obstore) against the raw obstore client (`obstore.get(store, key).bytes()`) in the
   same number of threads over the same objects.
3. Recording one latency sample: `SampleLog.add` (what the read path calls per transfer),
   alone and with its two `perf_counter` reads; `Histogram.record` for reference.

Rows with `verify=false` show what the check of every byte costs (fio, dd and the raw client
check nothing); the "compiled call" rows what the posix `get` as one compiled call (storage.native)
gains over the Python calls it replaces, on the same path; the "same depth" rows fio's best config
of the sweep that queues no more reads than the bench has transfers in flight (what queue depth
buys, apart from what dlio-ext's path costs). A ratio above 1.0 against a limit means the limit was measured wrongly; the table
says so in that row's note. Prints a Markdown table and writes it, every sample and the host to
results/bench-kvcache/<UTC time>/bench.json. Missed targets are reported, not hidden.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import benchlib  # before dlio_ext: it puts the checkout on sys.path
import fio_limit
import xxhash
from benchlib import ROOT, median_or_none, median_ratio

from dlio_ext.metrics.histogram import Histogram
from dlio_ext.storage import open_backend
from dlio_ext.storage.base import Backend
from dlio_ext.storage.posix import PosixBackend
from dlio_ext.workloads import kv_cache as kv
from dlio_ext.workloads.kv_cache.tiers import StorageTier

MiB = 1 << 20
NO_VERIFY = "the same path without the stamp + xxh3 check of every byte (the baselines check nothing)"


@dataclass(frozen=True)
class Case:
    label: str
    scale: float  # of Llama-3-8B's 32 MiB chunk
    chunks: int
    threads: int


FULL = {
    "reps": 5,
    "posix": [
        Case("32 MiB (Llama-3-8B, scale 1)", 1.0, 40, 10),
        Case("128 KiB (scale 1/256)", 1 / 256, 2048, 16),
    ],
    "s3": [Case("32 MiB (Llama-3-8B, scale 1)", 1.0, 16, 4), Case("128 KiB (scale 1/256)", 1 / 256, 1024, 8)],
}
QUICK = {
    "reps": 2,
    "posix": [
        Case("32 MiB (Llama-3-8B, scale 1)", 1.0, 20, 10),
        Case("128 KiB (scale 1/256)", 1 / 256, 512, 16),
    ],
    "s3": [Case("32 MiB (Llama-3-8B, scale 1)", 1.0, 8, 4), Case("128 KiB (scale 1/256)", 1 / 256, 256, 8)],
}


@dataclass
class Row:
    name: str
    unit: str
    baseline_label: str
    target: str  # ">= 0.8" (ratio), "< 2 us" (absolute) or "-" (a sanity row)
    project: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    note: str = ""
    failure: str | None = None
    limit: bool = False  # the baseline is the best the device does: a ratio above 1 is its error
    sweep: dict[str, list[float]] = field(default_factory=dict)  # the limit's pre-sweep: GB/s by fio config

    @property
    def ratio(self) -> float | None:
        return median_ratio(self.project, self.baseline)

    @property
    def met(self) -> bool | None:
        if self.target == "-":
            return None
        if self.target.startswith(">="):
            r = self.ratio
            return None if r is None else r >= float(self.target[2:])
        p = median_or_none(self.project)
        return None if p is None else p < float(self.target.split()[1])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "project_median": median_or_none(self.project),
            "baseline_median": median_or_none(self.baseline),
            "ratio": self.ratio,
            "met": self.met,
        }


say = functools.partial(benchlib.say, tag="bench-kv")


# --- the workload's read path ----------------------------------------------------------------------


def make_server(backend: Backend, case: Case, verify: bool, prefix: str) -> kv.Server:
    cfg = kv.Config(model="llama3_8b", scale=case.scale, max_inflight=case.threads, verify=verify)
    assert cfg.validate() is None
    return kv.Server(cfg, 0, StorageTier(backend, prefix, tag="bench"), seed=1234)


def chunk_ids(n: int) -> list[tuple[str, bytes]]:
    keys = [xxhash.xxh3_128_digest(f"bench-chunk-{i}".encode()) for i in range(n)]
    return [(k.hex(), k) for k in keys]


def write_chunks(server: kv.Server, ids: list[tuple[str, bytes]]) -> None:
    st = kv.Stats(1.0)
    for hexkey, key in ids:
        if not server.write_chunk(hexkey, key, st):
            raise RuntimeError(f"writing chunk {hexkey} failed: {st.first_error}")


def read_path(
    server: kv.Server, ids: list[tuple[str, bytes]], threads: int
) -> tuple[float, dict[str, float]]:
    """GB/s of `threads` threads running Server.read_chunk over every chunk once, plus latency."""
    stats = [kv.Stats(1.0) for _ in range(threads)]
    nxt = iter(range(len(ids)))
    lock = threading.Lock()
    failures: list[str] = []
    go = threading.Barrier(threads + 1)

    def work(t: int) -> None:
        st = stats[t]
        go.wait()
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            hexkey, key = ids[i]
            if server.read_chunk(hexkey, key, st) is not True:
                failures.append(f"{hexkey}: {st.first_error.get('read', 'not found')}")

    ths = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in ths:
        th.start()
    go.wait()
    t0 = time.perf_counter()
    for th in ths:
        th.join()
    secs = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"{len(failures)} chunk read(s) failed, first: {failures[0]}")
    nbytes = sum(st.c["read_bytes"] for st in stats)
    lat = kv.SampleLog.merged([st.logs["read"] for st in stats], 1.0).hist.summary()
    return nbytes / secs / 1e9, {"p50_ms": lat["p50"] / 1e3, "p95_ms": lat["p95"] / 1e3}


# --- 1. posix O_DIRECT -----------------------------------------------------------------------------


def dd_read(files: list[Path], bs: int) -> float:
    """Run one `dd iflag=direct` per file at once; GB/s = all bytes / the slowest dd's own time."""
    return benchlib.run_dd([["dd", f"if={f}", "of=/dev/null", f"bs={bs}", "iflag=direct"] for f in files])


def write_direct(path: Path, chunks: Sequence[memoryview]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    try:
        off = 0
        for c in chunks:
            off += os.pwrite(fd, c, off)
    finally:
        os.close(fd)


def bench_posix(rows: list[Row], plan: dict[str, Any], work: Path) -> None:
    for case in plan["posix"]:
        _posix_case(rows, plan["reps"], work / f"posix-{case.chunks}", case)


def _posix_case(rows: list[Row], reps: int, root: Path, case: Case) -> None:
    backend = open_backend({"type": "posix", "root": str(root), "direct": True})
    backend.check()
    server = make_server(backend, case, True, "bench/kvcache")
    plain = make_server(backend, case, False, "bench/kvcache")
    # the same chunks read with `get` on the Python calls: what the compiled call is worth
    python = make_server(PosixBackend(str(root), direct=True, compiled=False), case, True, "bench/kvcache")
    size = server.nbytes
    what = f"{case.label}, {case.chunks} chunks, {case.threads} in flight"
    say(f"posix: writing {case.chunks} x {size} B chunks (workload write path) and the dd files")
    ids = chunk_ids(case.chunks)
    write_chunks(server, ids)
    # dd's files: the very bytes of the same chunks, one file per dd process
    per = case.chunks // case.threads
    files = []
    for t in range(case.threads):
        parts = []
        for _, key in ids[t * per : (t + 1) * per]:
            b = server.content.new_buffer()
            server.content.fill(key, b)
            parts.append(b)
        f = root / f"dd-{t}.bin"
        write_direct(f, parts)
        files.append(f)
        del parts
    used = ids[: per * case.threads]
    # the limit: fio on the very chunk files the workload wrote (fio is a Debian package, not a
    # Python one: without it, its rows say so)
    chunk_files = [backend.path(server.storage.path(h)) for h, _ in used]
    shape = fio_limit.Shape("read", size, fio_limit.per_file(chunk_files, size), links=root / "fio-links")
    jobs = sorted({1, 2, 4, 8, case.threads, 2 * case.threads})
    best: fio_limit.Config | None = None
    sweep: dict[str, list[float]] = {}
    if fio_limit.available():
        say(f"posix {case.label}: fio sweep over {len(fio_limit.grid(jobs))} configs")
        best, sweep = fio_limit.sweep(shape, jobs, say)
    limit = shape.describe(best) if best else "fio"
    why = f"the best of a fio sweep, jobs {jobs}, psync / libaio / io_uring, iodepth {fio_limit.DEPTHS}"
    r = Row(f"posix O_DIRECT chunk read ({what})", "GB/s", limit, ">= 0.9", limit=True, note=why)
    rn = Row(
        f"posix O_DIRECT chunk read, verify=false ({what})",
        "GB/s",
        limit,
        ">= 0.9",
        limit=True,
        note=NO_VERIFY,
    )
    rd = Row(
        f"posix O_DIRECT chunk read, vs dd (sanity) ({what})",
        "GB/s",
        f"{case.threads} x dd iflag=direct bs={size}, one file of {per} chunks each",
        "-",
        note="the same dlio-ext samples as the first row; dd reads one long file (no open per chunk)",
    )
    rp = Row(
        f"posix O_DIRECT chunk read, get as one compiled call vs the Python calls ({what})",
        "GB/s",
        "the same path with get on os.open/fstat/preadv/close (PosixBackend(compiled=False))",
        "-",
        note="the same dlio-ext samples as the first row; both verify every chunk",
    )
    same = fio_limit.within(sweep, jobs, case.threads)
    rs = Row(
        f"posix O_DIRECT chunk read vs fio at the same depth ({what})",
        "GB/s",
        f"{shape.describe(same)}, at most {case.threads} in flight" if same else "fio",
        "-",
        note="the same dlio-ext samples as the first row; the best fio config of the sweep with no more "
        "I/Os queued than dlio-ext's transfers in flight: the first row's gap less what queue depth buys",
    )
    rows += [r, rn, rd, rp, rs]
    lat: list[dict[str, float]] = []

    def ours() -> None:
        gbps, latency = read_path(server, used, case.threads)
        r.project.append(gbps)
        rd.project.append(gbps)
        rp.project.append(gbps)
        rs.project.append(gbps)
        lat.append(latency)

    def ours_python() -> None:
        rp.baseline.append(read_path(python, used, case.threads)[0])

    def ours_plain() -> None:
        rn.project.append(read_path(plain, used, case.threads)[0])

    def dd() -> None:
        rd.baseline.append(dd_read(files, size))

    def fio() -> None:
        assert best is not None
        g = fio_limit.run(shape, best)
        r.baseline.append(g)
        rn.baseline.append(g)

    def fio_same() -> None:
        assert same is not None
        rs.baseline.append(fio_limit.run(shape, same))

    steps = [ours, fio, dd, ours_plain, ours_python] + ([fio_same] if same is not None else [])
    if best is None:
        r.failure = rn.failure = "fio is not installed (scripts/setup.sh installs it; apt-get install fio)"
        steps = [ours, dd, ours_plain, ours_python]
    _interleave(reps, steps, f"posix {case.label}", r if best else rd)
    p50 = statistics.median(x["p50_ms"] for x in lat)
    p95 = statistics.median(x["p95_ms"] for x in lat)
    r.note += (
        f"; latency of one transfer on the read path (median of reps): p50 {p50:.2f} ms, p95 {p95:.2f} ms"
    )
    r.sweep = sweep
    shutil.rmtree(root, ignore_errors=True)


def _interleave(reps: int, steps: list[Callable[[], None]], tag: str, row: Row) -> None:
    for rep in range(reps):
        order = steps if rep % 2 == 0 else steps[::-1]
        for step in order:
            step()
        say(
            f"{tag}: rep {rep + 1}/{reps}: dlio-ext {row.project[-1]:.3f} GB/s, baseline {row.baseline[-1]:.3f} GB/s"
        )


# --- 2. S3 on a local SeaweedFS ----------------------------------------------------------------------


def bench_s3(rows: list[Row], plan: dict[str, Any], work: Path) -> None:
    from dlio_ext.s3server import start_server, stop_server

    sdir = work / "s3server"
    sdir.mkdir(parents=True, exist_ok=True)
    try:
        info = start_server(sdir)
        cfg = {
            "type": "s3",
            "client": "obstore",
            "endpoint": info.endpoint,
            "bucket": info.bucket,
            "prefix": "bench",
            "region": info.region,
            "access_key": info.access_key,
            "secret_key": info.secret_key,
        }
        from obstore.store import S3Store

        raw = S3Store(
            info.bucket,
            prefix="bench",
            endpoint=info.endpoint,
            region=info.region,
            access_key_id=info.access_key,
            secret_access_key=info.secret_key,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
        )
        for case in plan["s3"]:
            _s3_case(rows, plan["reps"], cfg, raw, case)
    finally:
        stop_server(sdir)


def _s3_case(rows: list[Row], reps: int, cfg: dict[str, Any], raw: Any, case: Case) -> None:
    import obstore

    backend = open_backend(cfg)
    backend.check()
    server = make_server(backend, case, True, f"kv{case.chunks}/kvcache")
    plain = make_server(backend, case, False, f"kv{case.chunks}/kvcache")
    size = server.nbytes
    what = f"{case.label}, {case.chunks} chunks, {case.threads} in flight"
    say(f"s3: writing {case.chunks} x {size} B chunks through the workload's write path")
    ids = chunk_ids(case.chunks)
    write_chunks(server, ids)
    paths = [server.storage.path(h) for h, _ in ids]
    expect = server.content.new_buffer()
    server.content.fill(ids[0][1], expect)
    want = xxhash.xxh3_64_intdigest(expect)
    base = f"raw obstore.get().bytes(), {case.threads} threads"
    r = Row(f"S3 chunk read, obstore ({what})", "GB/s", base, ">= 0.8")
    rn = Row(f"S3 chunk read, obstore, verify=false ({what})", "GB/s", base, ">= 0.8", note=NO_VERIFY)
    rows += [r, rn]

    def raw_read() -> None:
        it = iter(paths)
        lock = threading.Lock()
        got = [0]

        def work() -> None:
            while True:
                with lock:
                    p = next(it, None)
                if p is None:
                    return
                n = len(obstore.get(raw, p).bytes())
                with lock:
                    got[0] += n

        ths = [threading.Thread(target=work) for _ in range(case.threads)]
        t0 = time.perf_counter()
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        secs = time.perf_counter() - t0
        if got[0] != size * len(paths):
            raise RuntimeError(f"raw obstore read {got[0]} bytes, expected {size * len(paths)}")
        if xxhash.xxh3_64_intdigest(obstore.get(raw, paths[0]).bytes()) != want:  # after the clock
            raise RuntimeError("raw obstore reads other bytes than the workload wrote")
        g = got[0] / secs / 1e9
        r.baseline.append(g)
        rn.baseline.append(g)

    def ours() -> None:
        r.project.append(read_path(server, ids, case.threads)[0])

    def ours_plain() -> None:
        rn.project.append(read_path(plain, ids, case.threads)[0])

    _interleave(reps, [ours, raw_read, ours_plain], f"s3 {case.label}", r)
    backend.close()


# --- 3. recording a sample ---------------------------------------------------------------------------


def bench_record(rows: list[Row], reps: int) -> None:
    n = 1_000_000
    perf = time.perf_counter
    r_add = Row("recording one latency sample: SampleLog.add (incl. its bulk fold)", "us", "-", "< 2 us")
    r_op = Row("timing + recording one transfer: 2 x perf_counter + SampleLog.add", "us", "-", "< 2 us")
    r_hist = Row("for reference: Histogram.record per sample", "us", "-", "< 2 us")
    for _ in range(reps):
        log = kv.SampleLog(1.0)
        add, end, secs = log.add, 1.0, 1.25e-4
        t = perf()
        for _i in range(n):
            add(end, secs)
        log.fold()
        r_add.project.append((perf() - t) / n * 1e6)
        log = kv.SampleLog(1.0)
        add = log.add
        t = perf()
        for _i in range(n):
            a = perf()
            b = perf()
            add(b, b - a)
        log.fold()
        r_op.project.append((perf() - t) / n * 1e6)
        h = Histogram()
        record = h.record
        t = perf()
        for _i in range(n):
            record(secs)
        r_hist.project.append((perf() - t) / n * 1e6)
    r_add.note = "a Python loop of 1e6 calls, loop overhead included"
    rows += [r_add, r_op, r_hist]


# --- the table ---------------------------------------------------------------------------------------


def table(rows: list[Row], command: str) -> str:
    out = [
        "| measurement | dlio-ext | baseline | ratio | target | met? |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        p, b = median_or_none(r.project), median_or_none(r.baseline)
        dig = 3 if r.unit == "GB/s" else 2
        proj = f"{p:.{dig}f} {r.unit}" if p is not None else f"failed: {r.failure}"
        base = f"{b:.3f} {r.unit} ({r.baseline_label})" if b is not None else (r.failure or "-")
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        met = {True: "yes", False: "**no**", None: "n/a"}[r.met]
        out.append(f"| {r.name} | {proj} | {base} | {ratio} | {r.target} | {met} |")
    for r in rows:
        if r.limit and (r.ratio or 0) > 1.0:
            r.note += "; RATIO ABOVE 1 against a limit: the limit was measured wrongly (fix the baseline)"
    notes = [f"- {r.name}: {r.note}" for r in rows if r.note]
    if notes:
        out += ["", *notes]
    out += ["", "Samples (in run order):", ""]
    for r in rows:
        dig = 3 if r.unit == "GB/s" else 3
        out.append(
            f"- {r.name}: dlio-ext {', '.join(f'{x:.{dig}f}' for x in r.project) or '-'}; "
            f"baseline {', '.join(f'{x:.{dig}f}' for x in r.baseline) or '-'}"
        )
    out += ["", f"command: `{command}`"]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer chunks and repetitions")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--only", action="append", choices=["posix", "s3", "record"])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--work", type=Path, default=None, help="data directory (default: under --out; must allow O_DIRECT)"
    )
    args = ap.parse_args(argv)
    plan = dict(QUICK if args.quick else FULL)
    if args.reps:
        plan["reps"] = args.reps
    sections = set(args.only or ["posix", "s3", "record"])
    stamp = benchlib.utc_stamp()
    out = (args.out or ROOT / "results" / "bench-kvcache" / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="data-", dir=args.work or out))
    command = benchlib.command_line(argv)
    rows: list[Row] = []
    crashed = None
    t0 = time.perf_counter()
    try:
        if "posix" in sections:
            bench_posix(rows, plan, work)
        if "s3" in sections:
            bench_s3(rows, plan, work)
        if "record" in sections:
            bench_record(rows, plan["reps"])
    except Exception:
        crashed = traceback.format_exc()
        say(f"benchmark crashed:\n{crashed}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    md = table(rows, command)
    print(md)
    print(f"\nelapsed {elapsed:.0f} s; results: {out}")
    (out / "table.md").write_text(md + "\n")
    host = benchlib.host_info()
    doc = {
        "schema": "dlio-ext/bench-kvcache/1",
        "command": command,
        "started_utc": stamp,
        "elapsed_s": round(elapsed, 1),
        "plan": {k: [asdict(c) for c in v] if isinstance(v, list) else v for k, v in plan.items()},
        "rows": [r.as_dict() for r in rows],
        "host": host,
        "crashed": crashed,
        "table_markdown": md,
    }
    (out / "bench.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
