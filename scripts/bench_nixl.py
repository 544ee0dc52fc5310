#!/usr/bin/env python3
"""Is storage=nixl its own bottleneck? Measure it against a raw NIXL transfer loop in the same run.

    .venv/bin/python scripts/bench_nixl.py [--reps N] [--transport default|tcp ...]
        [--only memory|obj ...] [--out DIR]

One run on one machine; every measurement is repeated and interleaved with its baseline (who
goes first alternates every round), and the table shows medians, never single numbers.

1. memory tier, 2 ranks under mpirun (this script again, with --worker): rank 0 puts 64 MiB
   objects whose key rank 1 owns (so every byte crosses to rank 1's pool) and gets them back,
   through the real backend (`storage=nixl storage.medium=memory`), against a raw NIXL loop in
   the same process: the same agent, the same registered buffers (the backend's `alloc()`
   buffer and rank 1's pool), the same transport, and nothing else (descriptor lists built once;
   per op `initialize_xfer`, `transfer`, poll to DONE, `release`). Target >= 0.9x. A numpy copy
   of 64 MiB in the same rounds gives this machine's memcpy bandwidth, which both are shown
   against. Every get and every raw READ is checked byte for byte against what was written
   (off the clock).
2. the same at 4 KiB: median microseconds per op, target within 20 us of the raw loop (a put
   is a WRITE of the bytes and one of a commit record (plus a grant request to the key's owner
   once its granted room is used up), a get of a key seen before a READ of the bytes and one of
   the key's stamp word: that bookkeeping is what the row measures).
3. obj medium (where this checkout has it) against storage=s3 (obstore) on a local SeaweedFS, the
   same bytes under the same keys: which is faster, 64 MiB and 4 KiB, PUT and GET.

`--transport default` leaves UCX_TLS unset (UCX picks: shared memory / cma on one host);
`--transport tcp` sets storage.transports=tcp and storage.net_devices=lo (loopback only). The
transports UCX really selected (from its own report, as describe() gives them) are printed.

Prints a Markdown table (| measurement | dlio-ext | baseline | ratio | target | met? |), the
memcpy comparison and every sample, and writes them with the exact command and the machine's
load to results/bench-nixl/<UTC time>/{bench.json,table.md}. A missed target is printed, not
hidden: the exit code is 0 unless a run failed (2) or the benchmark crashed (1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import benchlib  # before dlio_ext: it puts the checkout on sys.path
from benchlib import OMPI_ENV, ROOT, median_or_none, say

MiB = 1 << 20
BIG, SMALL = 64 * MiB, 4096
#: rank 1's pool: the backend allocates from offset 0 up (two 64 MiB extents while a key is
#: rewritten, then small keys); the raw loop uses the top of the pool, which the backend never
#: reaches in this run
POOL = 256 * MiB
RAW_BIG_AT, RAW_SMALL_AT = POOL - BIG, POOL - BIG - MiB
TIERS = 2  # ranks


# --------------------------------------------------------------------------------------------
# rows


@dataclass
class Row:
    """One row: dlio-ext's per-round samples against its baseline's, from the same rounds.

    kind "ratio": GB/s or ops/s, met when dlio-ext / baseline >= target;
    kind "delta": us per op, met when dlio-ext - baseline <= target."""

    name: str
    unit: str
    kind: str
    target: float
    baseline_label: str
    project: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    unavailable: str | None = None
    note: str = ""

    def medians(self) -> tuple[float | None, float | None]:
        """dlio-ext's and the baseline's (None for a side without samples)."""
        return median_or_none(self.project), median_or_none(self.baseline)

    @property
    def score(self) -> float | None:
        """Ratio of medians (kind ratio) or difference of medians in us (kind delta)."""
        p, b = self.medians()
        if p is None or not b:
            return None
        return p / b if self.kind == "ratio" else p - b

    @property
    def paired(self) -> list[float]:
        """Per-round ratios (or differences): robust to the machine's load drifting over the run."""
        if len(self.project) != len(self.baseline):
            return []
        if self.kind == "ratio":
            return [p / b for p, b in zip(self.project, self.baseline, strict=True) if b]
        return [p - b for p, b in zip(self.project, self.baseline, strict=True)]

    @property
    def met(self) -> bool | None:
        s = self.score
        if s is None or not self.target:
            return None
        return s >= self.target if self.kind == "ratio" else s <= self.target

    def as_dict(self) -> dict[str, Any]:
        p, b = self.medians()
        return asdict(self) | {
            "project_median": p,
            "baseline_median": b,
            "score": self.score,
            "paired": self.paired,
            "met": self.met,
        }


# --------------------------------------------------------------------------------------------
# the worker: one process per rank under mpirun


def _owned_by(rank: int, stem: str) -> str:
    """A key the memory tier places on `rank` (the tier's owner is crc32(key) % ranks)."""
    for i in range(10_000):
        key = f"{stem}/{i}"
        if zlib.crc32(key.encode()) % TIERS == rank:
            return key
    raise RuntimeError("no key found for the rank")  # never: half of all keys qualify


def worker(out: Path, reps: int, big_ops: int, small_ops: int, transport: str) -> None:
    """Both ranks open the backend (collective); rank 0 measures, rank 1 lends its pool and serves
    the control plane from its control thread, waiting without spinning a core."""
    import numpy as np
    from mpi4py import MPI

    from dlio_ext.storage import open_backend
    from dlio_ext.storage.buffers import address, fill_random

    cfg: dict[str, Any] = {"type": "nixl", "medium": "memory", "pool_bytes": POOL}
    if transport == "tcp":
        cfg |= {"transports": "tcp", "net_devices": "lo"}
    logs = out / "ucx-logs"
    logs.mkdir(parents=True, exist_ok=True)
    backend = open_backend(cfg, str(logs))
    comm = MPI.COMM_WORLD
    result: dict[str, Any] = {}
    if comm.Get_rank() == 0:
        result = measure_memory(backend, reps, big_ops, small_ops, np, address, fill_random)
    done = comm.Ibarrier()  # rank 1 sleeps here while its control thread serves rank 0
    while not done.Test():
        time.sleep(0.005)
    backend.close()  # collective: every rank's transport report is gathered
    # what each rank's control thread (serving requests, applying records) cost in CPU
    serve = comm.gather(backend.medium.serve_cpu_seconds)
    if comm.Get_rank() == 0:
        result["describe"] = backend.describe()
        result["serve_cpu_seconds"] = serve
        (out / "worker.json").write_text(json.dumps(result, indent=2, default=str) + "\n")


def measure_memory(
    backend: Any, reps: int, big_ops: int, small_ops: int, np: Any, address: Any, fill_random: Any
) -> dict[str, Any]:
    medium = backend.medium  # the bench reaches under the backend for the raw loop's handles
    ag, peer, base = medium.agent.agent, medium.names[1], medium.bases[1]
    samples: dict[str, list[float]] = {}
    checks: list[str] = []

    def add(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)

    def raw_loop(op: str, local: memoryview, remote: int, n: int) -> list[float]:
        """The baseline: NIXL's API and nothing else; seconds per op."""
        ldesc = ag.get_xfer_descs([(address(local), len(local), 0)], "DRAM")
        rdesc = ag.get_xfer_descs([(remote, len(local), 0)], "DRAM")
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            h = ag.initialize_xfer(op, ldesc, rdesc, peer)
            state = ag.transfer(h)
            while state == "PROC":
                state = ag.check_xfer_state(h)
            h.release()
            times.append(time.perf_counter() - t0)
            if state != "DONE":
                raise RuntimeError(f"raw {op} ended {state}")
        return times

    def backend_loop(op: str, key: str, buf: memoryview, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            if op == "WRITE":
                backend.put(key, buf)
            else:
                backend.get(key, buf)
            times.append(time.perf_counter() - t0)
        return times

    def stat_loop(key: str, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            backend.stat(key)
            times.append(time.perf_counter() - t0)
        return times

    for size, n, stem in ((BIG, big_ops, "big"), (SMALL, small_ops, "small")):
        key = _owned_by(1, f"bench-nixl/{stem}")
        src, back = backend.alloc(size), backend.alloc(size)
        fill_random(src, 1234 + size)
        raw_at = base + (RAW_BIG_AT if size == BIG else RAW_SMALL_AT)
        # warm-up, untimed: the first transfers set up UCX's endpoints and fault in the pages;
        # two puts, because a key rewritten alternates between two extents of the owner's pool
        for _ in range(2):
            backend.put(key, src)
            backend.get(key, back)
        raw_loop("WRITE", src, raw_at, 1)
        raw_loop("READ", back, raw_at, 1)
        dst = np.empty(size, dtype=np.uint8)
        a = np.frombuffer(src, dtype=np.uint8)
        np.copyto(dst, a)  # memcpy's destination faulted in too

        def memcpy(n: int = n, dst: Any = dst, a: Any = a) -> list[float]:
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                np.copyto(dst, a)
                times.append(time.perf_counter() - t0)
            return times

        steps: list[tuple[str, Callable[[], list[float]]]] = [
            ("dlio-ext put", lambda key=key, src=src, n=n: backend_loop("WRITE", key, src, n)),
            ("dlio-ext get", lambda key=key, back=back, n=n: backend_loop("READ", key, back, n)),
            ("raw WRITE", lambda src=src, at=raw_at, n=n: raw_loop("WRITE", src, at, n)),
            ("raw READ", lambda back=back, at=raw_at, n=n: raw_loop("READ", back, at, n)),
        ]
        if size == BIG:
            steps.append(("numpy memcpy", memcpy))
        else:  # the control plane alone: a stat is one request to the key's owner and its answer
            steps.append(("dlio-ext stat", lambda key=key, n=n: stat_loop(key, n)))
        for rep in range(reps):
            order = steps[rep % len(steps) :] + steps[: rep % len(steps)]  # who goes first rotates
            for name, step in order:
                if name.endswith(("get", "READ")):
                    back[:] = b"\0" * size  # so a READ that moved nothing cannot pass the check
                times = step()
                if name.endswith(("get", "READ")) and bytes(back) != bytes(src):
                    checks.append(f"{name} {size} B round {rep}: bytes differ from what was written")
                if size == BIG:
                    add(f"{name} {size}", n * size / sum(times) / 1e9)  # GB/s over the round
                else:
                    add(f"{name} {size}", statistics.median(times) * 1e6)  # us per op
            say(
                f"  {size} B round {rep + 1}/{reps}: "
                + ", ".join(f"{k} {v[-1]:.3f}" for k, v in samples.items() if k.endswith(f" {size}")),
                "nixl",
            )
        backend.delete(key)
    return {"samples": samples, "check_failures": checks}


# --------------------------------------------------------------------------------------------
# 1./2. the memory tier


def memory_rows(rows: list[Row], out: Path, reps: int, transport: str, commands: list[str]) -> dict[str, Any]:
    tag = "UCX_TLS unset" if transport == "default" else "UCX_TLS=tcp, UCX_NET_DEVICES=lo"
    wdir = out / f"memory-{transport}"
    wdir.mkdir(parents=True, exist_ok=True)
    big_ops, small_ops = 4, 300
    cmd = [
        *benchlib.mpirun(TIERS),
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        str(wdir),
        "--reps",
        str(reps),
        "--transport",
        transport,
        f"--big-ops={big_ops}",
        f"--small-ops={small_ops}",
    ]
    commands.append(" ".join(cmd))
    env = dict(os.environ) | OMPI_ENV | {"PYTHONPATH": str(ROOT)}
    say(f"memory tier, {tag}: {reps} rounds under mpirun")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    (wdir / "stdout.log").write_text(p.stdout)
    (wdir / "stderr.log").write_text(p.stderr)
    sys.stderr.write(p.stderr)
    names = [
        (f"nixl memory put 64 MiB ({tag}, rank 0 -> rank 1's pool)", "dlio-ext put", "raw WRITE", BIG),
        (f"nixl memory get 64 MiB ({tag}, rank 1's pool -> rank 0)", "dlio-ext get", "raw READ", BIG),
        (f"nixl memory put 4 KiB, us per op ({tag})", "dlio-ext put", "raw WRITE", SMALL),
        (f"nixl memory get 4 KiB, us per op ({tag})", "dlio-ext get", "raw READ", SMALL),
    ]
    result_file = wdir / "worker.json"
    if p.returncode != 0 or not result_file.exists():
        why = f"FAILED: the mpirun worker exited {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}"
        for name, *_ in names:
            rows.append(Row(name, "-", "ratio", 0, "-", unavailable=why))
        return {"failed": why}
    res = json.loads(result_file.read_text())
    s = res["samples"]
    wall = time.perf_counter() - t0
    for name, proj, raw, size in names:
        big = size == BIG
        row = Row(
            name,
            "GB/s" if big else "us",
            "ratio" if big else "delta",
            0.9 if big else 20.0,
            f"raw NIXL {raw.split()[1]} loop" + ("" if big else " (initialize_xfer+transfer+release)"),
            s[f"{proj} {size}"],
            s[f"{raw} {size}"],
        )
        rows.append(row)
    stat = median_or_none(s.get(f"dlio-ext stat {SMALL}", []))
    res["control_line"] = (
        f"{tag}: one control-plane round trip (`stat`: a request to the key's owner rank and its "
        f"answer, no data) took {stat:,.1f} us per op (median of rounds); a put makes none (a grant "
        "when its writer's room in the owner's pool is used up: every put at 64 MiB, one in ~250 at "
        "4 KiB), a get of a key seen before none"
        if stat is not None
        else f"{tag}: control-plane round trip not measured"
    )
    res["control_line"] += (
        f"; the control threads used {', '.join(f'{c:.2f}' for c in res['serve_cpu_seconds'])} s of CPU "
        f"(rank 0, rank 1) in the worker's {wall:.0f} s"
    )
    ucx = res["describe"].get("ucx_transports", {})
    res["transport_line"] = (
        f"{tag}: UCX carried writes over {', '.join(ucx.get('write', [])) or 'unreported'}, reads over "
        f"{', '.join(ucx.get('read', [])) or 'unreported'} (describe()['ucx_transports']); NIXL plugin "
        f"{res['describe'].get('nixl_plugins')}; rdma={res['describe'].get('rdma')}"
    )
    return res


# --------------------------------------------------------------------------------------------
# 3. obj medium against storage=s3


def obj_rows(rows: list[Row], out: Path, reps: int) -> str | None:
    """nixl obj vs s3 (obstore) on a local SeaweedFS; rows say which is faster. Returns why skipped."""
    from dlio_ext.errors import UsageError
    from dlio_ext.s3server import server_env, start_server, stop_server
    from dlio_ext.storage import backend_class

    def open_as(cfg: dict[str, Any], env: dict[str, str]) -> Any:
        cls = backend_class(cfg["type"])
        return cls.from_settings(cls.Settings.from_config(cfg, env), str(out))

    server_dir = out / "s3server"
    info = start_server(str(server_dir))
    try:
        env = {k: str(v) for k, v in server_env(info).items()}
        try:
            nixl_obj = open_as({"type": "nixl", "medium": "obj", "prefix": "bench-nixl"}, env)
        except UsageError as exc:
            return f"not measured: storage=nixl medium=obj is not in this checkout ({exc})"
        s3 = open_as({"type": "s3", "prefix": "bench-nixl", "client": "obstore"}, env)
        sides = {"nixl obj": nixl_obj, "s3 (obstore)": s3}
        for size, n in ((BIG, 2), (SMALL, 50)):
            src = {k: b.alloc(size) for k, b in sides.items()}
            back = {k: b.alloc(size) for k, b in sides.items()}
            for k in sides:
                src[k][:] = os.urandom(size) if k == "nixl obj" else src["nixl obj"]  # same bytes
            keys = [f"obj/{size}/{i}" for i in range(n)]
            label, unit = (f"{size // MiB} MiB", "GB/s") if size == BIG else (f"{size // 1024} KiB", "ops/s")
            scale = size / 1e9 if unit == "GB/s" else 1.0  # objects/s -> GB/s for the big objects
            put_row, get_row = (
                Row(
                    f"obj {verb} {label}: nixl obj vs s3 (obstore), {n}/round",
                    unit,
                    "ratio",
                    0,
                    "storage=s3 client=obstore",
                )
                for verb in ("PUT", "GET")
            )
            for rep in range(reps):
                for k in list(sides)[rep % 2 :] + list(sides)[: rep % 2]:
                    b = sides[k]
                    t0 = time.perf_counter()
                    for key in keys:
                        b.put(key, src[k])
                    put = n * scale / (time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    for key in keys:
                        b.get(key, back[k])
                    get = n * scale / (time.perf_counter() - t0)
                    if bytes(back[k]) != bytes(src[k]):
                        raise RuntimeError(f"{k} read back other bytes than it wrote")
                    (put_row.project if k == "nixl obj" else put_row.baseline).append(put)
                    (get_row.project if k == "nixl obj" else get_row.baseline).append(get)
            for r in (put_row, get_row):
                sc = r.score
                r.note = "faster: " + ("-" if sc is None else "nixl obj" if sc > 1 else "s3 (obstore)")
                rows.append(r)
            for b in sides.values():
                for key in keys:
                    b.delete(key)
        for b in sides.values():
            b.close()
        return None
    finally:
        stop_server(str(server_dir))


# --------------------------------------------------------------------------------------------
# report


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return (
        f"{v:,.3f} {unit}" if unit == "GB/s" else f"{v:,.1f} {unit}" if unit == "us" else f"{v:,.0f} {unit}"
    )


def table(rows: Sequence[Row], extra: Sequence[str], memcpy: dict[str, dict[str, float | None]]) -> str:
    out = [
        "| measurement | dlio-ext | baseline | ratio | target | met? |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        tgt = "-" if not r.target else (f">= {r.target:g}x" if r.kind == "ratio" else f"<= +{r.target:g} us")
        if r.unavailable:
            out.append(f"| {r.name} | {r.unavailable} | - | - | {tgt} | n/a |")
            continue
        sc, (p, b) = r.score, r.medians()
        score = "-" if sc is None else f"{sc:.2f}" if r.kind == "ratio" else f"{sc:+.1f} us"
        met = {True: "yes", False: "**no**", None: r.note or "n/a"}[r.met]
        out.append(
            f"| {r.name} | {_fmt(p, r.unit)} | {_fmt(b, r.unit)} "
            f"({r.baseline_label}) | {score} | {tgt} | {met} |"
        )
    out += extra
    for tag, bw in memcpy.items():
        mc = bw.get("numpy memcpy")
        if not mc:
            continue
        out += ["", f"Against memcpy ({tag}; numpy copy of 64 MiB in the same rounds, medians):", ""]
        out += ["| 64 MiB | GB/s | share of memcpy |", "| --- | --- | --- |"]
        for name, v in bw.items():
            out.append(f"| {name} | {_fmt(v, 'GB/s')} | {'-' if v is None else f'{v / mc:.2f}'} |")
    out += [
        "",
        "Samples (each round, in run order; ratio of medians above, per-round ratios or differences here):",
        "",
        "| measurement | dlio-ext samples | baseline samples | per round |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        if r.unavailable:
            continue
        d = 3 if r.unit == "GB/s" else 1 if r.unit == "us" else 0
        per = ", ".join(f"{x:.2f}" if r.kind == "ratio" else f"{x:+.1f}" for x in r.paired) or "-"
        out.append(
            f"| {r.name} | {', '.join(f'{x:.{d}f}' for x in r.project)} | "
            f"{', '.join(f'{x:.{d}f}' for x in r.baseline)} | {per} |"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--reps", type=int, default=5, help="interleaved rounds (>= 3 recommended)")
    ap.add_argument(
        "--transport", action="append", choices=["default", "tcp"], help="UCX transport(s) (default: default)"
    )
    ap.add_argument("--only", action="append", choices=["memory", "obj"], help="run only this section")
    ap.add_argument(
        "--out", type=Path, default=None, help="results directory (default results/bench-nixl/<UTC>)"
    )
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--big-ops", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--small-ops", type=int, default=300, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.reps, args.big_ops, args.small_ops, (args.transport or ["default"])[0])
        return 0
    transports = args.transport or ["default"]
    sections = set(args.only or ["memory", "obj"])
    stamp = benchlib.utc_stamp()
    out = (args.out or ROOT / "results" / "bench-nixl" / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = benchlib.command_line(argv)
    say(f"results in {out}")
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    rows: list[Row] = []
    commands: list[str] = []
    extra: list[str] = []
    memcpy: dict[str, dict[str, float | None]] = {}
    workers: dict[str, Any] = {}
    crashed = None
    failed = False
    try:
        if "memory" in sections:
            for tr in transports:
                res = memory_rows(rows, out, args.reps, tr, commands)
                workers[tr] = res
                if "failed" in res:
                    failed = True
                    continue
                if res["check_failures"]:
                    failed = True
                    extra += ["", "Byte checks FAILED:", *(f"- {c}" for c in res["check_failures"])]
                extra += ["", res["transport_line"], "", res["control_line"]]
                memcpy[res["transport_line"].split(":")[0]] = {
                    k.removesuffix(f" {BIG}"): median_or_none(v)
                    for k, v in res["samples"].items()
                    if k.endswith(f" {BIG}")
                }
        if "obj" in sections:
            skipped = obj_rows(rows, out, args.reps)
            if skipped:
                rows.append(
                    Row(
                        "nixl obj vs storage=s3 (obstore), local SeaweedFS, same objects",
                        "-",
                        "ratio",
                        0,
                        "-",
                        unavailable=skipped,
                    )
                )
        # the tier-0 checkpoint stall has a script of its own: scripts/bench_tier0.py
    except Exception:
        crashed = traceback.format_exc()
        say(f"benchmark crashed:\n{crashed}")
    elapsed = time.perf_counter() - t0
    noise = benchlib.load_line(load_start, elapsed, f"medians of {args.reps} interleaved rounds")
    md = table(rows, extra, memcpy) + f"\n\n{noise}\n\ncommand: `{command}`"
    print(md, f"\nelapsed {elapsed:.0f} s; results: {out}", sep="\n")
    (out / "table.md").write_text(md + "\n")
    doc = {
        "schema": "dlio-ext/bench-nixl/1",
        "command": command,
        "started_utc": stamp,
        "cwd": str(Path.cwd()),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "elapsed_s": round(elapsed, 1),
        "reps": args.reps,
        "transports": transports,
        "worker_commands": commands,
        "measurements": [r.as_dict() for r in rows],
        "workers": workers,
        "host": benchlib.host_info(),
        "crashed": crashed,
        "table_markdown": md,
    }
    (out / "bench.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if crashed:
        return 1
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
