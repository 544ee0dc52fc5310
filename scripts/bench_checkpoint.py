#!/usr/bin/env python3
"""Is the checkpoint-burst engine its own bottleneck, and how does it compare with DLIO's own?

    .venv/bin/python scripts/bench_checkpoint.py [--ranks 2] [--gib-per-rank 2] [--rounds 3]
                                                 [--rss-gib-per-rank 4] [--dir DIR] [--skip-dlio]

One run on this machine, every comparison over the same bytes and the same ranks:
1. burst write: `dlio-ext run workload=checkpoint_burst/custom` (N MPI ranks, a G GiB shard
   each in DeepSpeed's two files, model 1/7 and optimizer 6/7, O_DIRECT + fsync per file, every
   rank at once) against the LIMIT: the best fio does writing the same files (same names and
   sizes, bs 16 MiB, O_DIRECT, fsync at each file's close, no preallocation). A short sweep in
   the first round (`fio_limit.py`: psync, libaio and io_uring; 1 job up to twice the ranks and
   beyond, the shard's blocks dealt in equal runs; iodepth 1, 4, 16 for the async engines) picks
   the fastest config, which then runs in every round. N shells each writing the two files with
   `dd oflag=direct conv=fsync` stay as a sanity row (GB/s = all bytes over the span from the
   first start to the last end, as dlio-ext's);
2. cold restore: the same run's restores (O_DIRECT, rank r reads rank r+1's shard, every byte
   verified) against the best fio reading those very files (swept the same way), and N
   `dd iflag=direct` reading them the same way round (sanity);
3. DLIO 2.0.0's own checkpointing (PyTorchCheckpointing, checkpoint.type=all_ranks, the same
   G GiB per rank as one int8 tensor, via `dlio-ext dlio` with DLIO untouched): its checkpoint
   time as DLIO records it (rank 0's), the `sync` still owed when it returned, its peak RSS;
   Beside each limit, fio's best config of the sweep that keeps no more I/Os queued than
   dlio-ext does (ranks x write_behind, ranks x read_ahead): what queue depth buys, apart;
4. the burst write with `workload.write_behind=1` (one write of a file in flight per I/O thread,
   the engine before issue #14's write-behind) beside the default 4, in every round;
5. peak RSS per rank (VmHWM) of the burst engine with a shard of at least 4 GiB (target <= 512 MiB),
   from one more burst with that shard.

Rounds interleave dlio-ext, fio and dd (who goes first alternates) so a noisy neighbour hits
all; the table shows median GB/s and the median (and range) of the per-round ratios. A ratio
above 1.0 against fio means the limit was measured wrongly, and the table says so.
Prints a Markdown table and writes it, with every sample, to results/bench_checkpoint/<UTC>/.
Missed targets are reported, not hidden; the exit code is 0 unless a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import benchlib  # before dlio_ext: it puts the checkout on sys.path
import fio_limit
from benchlib import ROOT, mpirun

from dlio_ext.workloads.checkpoint_burst.config import Config as CkptConfig

MiB, GiB = 1 << 20, 1 << 30
CHUNK = 16 * MiB
ENV = {**os.environ, **benchlib.OMPI_ENV, "PYTHONPATH": str(ROOT)}


def sh(cmd: list[str], cwd: Path | None = None, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd or ROOT, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:8])} ... exited {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
        )
    return p


def parallel_dd(cmds_per_rank: list[list[list[str]]]) -> float:
    """Start one shell per rank at the same moment, each running its dd commands one after the
    other; seconds from the first start to the last end. Not benchlib.run_dd (dd's own clock):
    a burst's GB/s is defined over that span, start-up and the final fsync included, for both."""
    scripts = [" && ".join(shlex.join(["dd", *a, "status=none"]) for a in cmds) for cmds in cmds_per_rank]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["sh", "-c", sc], stderr=subprocess.PIPE) for sc in scripts]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"dd failed: {err.decode()[-500:]}")
    return time.perf_counter() - t0


def burst_run(
    ranks: int, nbytes: int, work: Path, results: Path, extra: tuple[str, ...] = ()
) -> tuple[dict[str, Any], list[list[Path]]]:
    """One dlio-ext run: 1 checkpoint + 1 restore (`extra` overrides); the files are kept for dd to read."""
    p = sh(
        [
            *mpirun(ranks),
            *benchlib.dlio_ext_module(),
            "run",
            "workload=checkpoint_burst/custom",
            "storage=posix",
            f"storage.root={work}",
            "storage.direct=true",
            "storage.fsync=file",
            f"run.results_dir={results}",
            "run.progress_interval=0",
            f"workload.bytes_per_rank={nbytes}",
            "workload.layout=deepspeed",
            "workload.checkpoints=1",
            "workload.restores=1",
            "workload.compute_seconds=0",
            f"workload.chunk_size={CHUNK}",
            f"workload.buffer_pool_bytes={4 * CHUNK}",
            "workload.cleanup=false",
            *extra,
        ]
    )
    run_dir = Path(p.stdout.strip().splitlines()[-1].removeprefix("results: "))
    s = json.loads((run_dir / "summary.json").read_text())
    if not s["valid"]:
        raise RuntimeError(f"dlio-ext run invalid: {s['invalid_reasons']}")
    ck = next(work.glob("*/checkpoints/global_epoch1_step1"))
    files = [
        [ck / f"zero_pp_rank_{r}_mp_rank_0_{k}_states.pt" for k in ("model", "optim")] for r in range(ranks)
    ]
    assert [[f.stat().st_size for f in fs] for fs in files] == [[nbytes // 7, nbytes - nbytes // 7]] * ranks
    return s, files


def dlio_run(ranks: int, nbytes: int, work: Path) -> dict[str, Any]:
    """DLIO 2.0.0 exactly as shipped (no dlio-ext storage options): a tiny training run whose one
    checkpoint is `nbytes` per rank through its own PyTorchCheckpointing (torch.save, no fsync)."""
    out, ck = work / "out", work / "ckpt"
    rss = work / "rss"
    rss.mkdir(parents=True, exist_ok=True)
    wrapper = (
        "import os, sys\n"
        "from dlio_ext.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "rank = os.environ.get('OMPI_COMM_WORLD_RANK', '0')\n"
        "hwm = next(int(x.split()[1]) * 1024 for x in open('/proc/self/status') if x.startswith('VmHWM:'))\n"
        f"open(os.path.join({str(rss)!r}, rank), 'w').write(str(hwm))\n"
        "sys.exit(rc)\n"
    )
    args = [
        "dlio",
        "workload=default",
        "++workload.workflow.generate_data=True",
        "++workload.workflow.train=True",
        "++workload.workflow.evaluation=False",
        "++workload.workflow.checkpoint=True",
        f"++workload.dataset.num_files_train={2 * ranks}",
        "++workload.dataset.num_files_eval=0",
        "++workload.dataset.num_subfolders_train=0",
        "++workload.dataset.num_subfolders_eval=0",
        "++workload.dataset.record_length=4096",
        f"++workload.dataset.data_folder={work / 'data'}",
        "++workload.train.epochs=1",
        "++workload.train.computation_time=0",
        "++workload.reader.batch_size=1",
        "++workload.reader.read_threads=1",
        f"++workload.checkpoint.checkpoint_folder={ck}",
        f"++workload.checkpoint.model_size={nbytes}",
        "++workload.checkpoint.layer_parameters=[]",
        "++workload.checkpoint.num_layers=0",
        "++workload.checkpoint.type=all_ranks",
        f"++workload.output.folder={out}",
    ]
    sh([*mpirun(ranks), sys.executable, "-c", wrapper, *args], cwd=work)
    t = time.perf_counter()
    os.sync()
    sync_s = time.perf_counter() - t
    stats = json.loads((out / "per_epoch_stats.json").read_text())
    c = stats["1"]["ckpt1"]
    secs = (datetime.fromisoformat(c["end"]) - datetime.fromisoformat(c["start"])).total_seconds()
    files = sorted(ck.glob("*.pt"))
    written = sum(f.stat().st_size for f in files)
    return {
        "rank0_seconds": secs,
        "bytes": written,
        "files": [f.name for f in files],
        "GBps": written / secs / 1e9,
        "sync_after_return_s": sync_s,
        "peak_rss_bytes": [int((rss / str(r)).read_text()) for r in range(ranks)],
    }


def blocks_for(gib: float) -> int:
    """16 MiB blocks per 1/7 of a shard: each of the two files (model 1/7, optimizer 6/7) is a
    whole number of blocks, so dd can write exactly the same files."""
    return -(-int(gib * GiB) // (7 * CHUNK))


def spread(v: list[float]) -> str:
    return f"{min(v):.2f}-{max(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


def limit_row(
    name: str,
    key: str,
    fio: tuple[fio_limit.Shape, fio_limit.Config] | None,
    med: dict[str, float],
    ratios: dict[str, list[float]],
) -> str:
    """dlio-ext against the best of the fio sweep; above 1.0 the limit was measured wrongly."""
    side = "fio_write" if key == "write" else "fio_read"
    if fio is None:
        return f"| {name} | {med[key]:.3f} GB/s | fio is not installed (scripts/setup.sh installs it) | - | >= 0.9 | - |"
    r = statistics.median(ratios[key])
    met = "yes" if r >= 0.9 else f"**no** ({r - 0.9:+.3f})"
    if r > 1.0:
        met += ": RATIO ABOVE 1 against a limit, the limit was measured wrongly"
    return (
        f"| {name} | {med[key]:.3f} GB/s | {fio[0].describe(fio[1])}: {med[side]:.3f} GB/s | "
        f"{r:.2f} ({spread(ratios[key])}) | >= 0.9 | {met} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--gib-per-rank", type=float, default=2.0, help="shard per rank for the GB/s comparisons")
    ap.add_argument("--rss-gib-per-rank", type=float, default=4.0, help="shard per rank for the memory run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="scratch on the file system under test")
    ap.add_argument("--skip-dlio", action="store_true")
    a = ap.parse_args()
    blocks = blocks_for(a.gib_per_rank)
    nbytes = 7 * blocks * CHUNK
    rss_bytes = 7 * blocks_for(a.rss_gib_per_rank) * CHUNK
    outdir = ROOT / "results" / "bench_checkpoint" / benchlib.utc_stamp()
    outdir.mkdir(parents=True, exist_ok=True)
    scratch = a.dir or (outdir / "scratch")
    scratch.mkdir(parents=True, exist_ok=True)
    total = nbytes * a.ranks
    samples: dict[str, list[float]] = {
        "write": [],
        "fio_write": [],
        "dd_write": [],
        "restore": [],
        "fio_read": [],
        "dd_read": [],
        "write_behind_1": [],
        "fio_write_same": [],
        "fio_read_same": [],
    }
    ratios: dict[str, list[float]] = {
        "write": [],
        "restore": [],
        "write_dd": [],
        "restore_dd": [],
        "write_behind": [],
        "write_same": [],
        "restore_same": [],
    }
    # the limit: fio's sweep in round 1, its best config in every round (None: fio is missing)
    jobs = sorted({1, 2, 4, 8, a.ranks, 2 * a.ranks})
    fio_w: tuple[fio_limit.Shape, fio_limit.Config] | None = None
    fio_r: tuple[fio_limit.Shape, fio_limit.Config] | None = None
    sweeps: dict[str, dict[str, list[float]]] = {}
    # fio at dlio-ext's own depth: ranks x the engine's defaults (writes / reads of a file in flight)
    depth = {"write": a.ranks * CkptConfig().write_behind, "read": a.ranks * CkptConfig().read_ahead}
    same: dict[str, fio_limit.Config | None] = {"write": None, "read": None}

    def say(msg: str) -> None:
        print(msg, file=sys.stderr)

    def shard_shape(rw: str, files: list[list[Path]]) -> fio_limit.Shape:
        flat = [(f, n) for fs in files for f, n in zip(fs, (nbytes // 7, nbytes - nbytes // 7), strict=True)]
        return fio_limit.Shape(rw, CHUNK, fio_limit.split_files(flat, CHUNK), fsync_on_close=rw == "write")

    summaries = []
    t_start = time.perf_counter()

    def one_behind(rnd: int) -> None:
        """The same burst with one write of a file in flight at a time (no write-behind)."""
        work = scratch / f"behind1-{rnd}"
        s1, _ = burst_run(
            a.ranks, nbytes, work, outdir / "runs", ("workload.write_behind=1", "workload.restores=0")
        )
        samples["write_behind_1"].append(s1["checkpoint_burst"]["write"]["overall"]["GBps"])
        shutil.rmtree(work)

    def dd_write(rnd: int) -> None:
        ddw = scratch / f"dd{rnd}"
        ddw.mkdir()
        cmds = [
            [
                [
                    "if=/dev/zero",
                    f"of={ddw / f'r{r}_{k}'}",
                    f"bs={CHUNK}",
                    f"count={n}",
                    "oflag=direct",
                    "conv=fsync",
                ]
                for k, n in (("model", blocks), ("optim", 6 * blocks))
            ]
            for r in range(a.ranks)
        ]
        samples["dd_write"].append(total / parallel_dd(cmds) / 1e9)
        shutil.rmtree(ddw)

    try:
        for rnd in range(a.rounds):
            if rnd % 2:
                dd_write(rnd)  # alternate who goes first, so a neighbour's burst favours neither
                one_behind(rnd)
            work = scratch / f"burst{rnd}"
            s, files = burst_run(a.ranks, nbytes, work, outdir / "runs")
            # fio reads the very files, rank r's job(s) first reading rank r+1's shard
            shifted = [files[(r + 1) % a.ranks] for r in range(a.ranks)]
            fw = scratch / "fio-write"
            if rnd == 0 and fio_limit.available():
                say(f"fio sweeps: {len(fio_limit.grid(jobs))} configs each for write and read")
                fw.mkdir(exist_ok=True)
                mine = [[fw / f.name for f in fs] for fs in files]
                shape_r, shape_w = shard_shape("read", shifted), shard_shape("write", mine)
                best_r, sweeps["read"] = fio_limit.sweep(shape_r, jobs, say)
                best_w, sweeps["write"] = fio_limit.sweep(shape_w, jobs, say)
                fio_r, fio_w = (shape_r, best_r), (shape_w, best_w)
                same = {side: fio_limit.within(sweeps[side], jobs, depth[side]) for side in same}
            if fio_r is not None:
                fio_r = (shard_shape("read", shifted), fio_r[1])
            c = s["checkpoint_burst"]
            samples["write"].append(c["write"]["overall"]["GBps"])
            samples["restore"].append(c["restore"]["overall"]["GBps"])
            summaries.append(c)
            # dd reads the same files the same way round: rank r reads rank r+1's shard
            cmds = [
                [[f"if={f}", "of=/dev/null", f"bs={CHUNK}", "iflag=direct"] for f in files[(r + 1) % a.ranks]]
                for r in range(a.ranks)
            ]
            samples["dd_read"].append(total / parallel_dd(cmds) / 1e9)
            if fio_r is not None:
                samples["fio_read"].append(fio_limit.run(*fio_r))
                if same["read"] is not None:
                    samples["fio_read_same"].append(fio_limit.run(fio_r[0], same["read"]))
                    ratios["restore_same"].append(samples["restore"][-1] / samples["fio_read_same"][-1])
            shutil.rmtree(work)
            if fio_w is not None:
                samples["fio_write"].append(fio_limit.run(*fio_w))
                shutil.rmtree(fw)  # fio's files: the disk as free as for the next burst
                fw.mkdir()
                if same["write"] is not None:
                    samples["fio_write_same"].append(fio_limit.run(fio_w[0], same["write"]))
                    ratios["write_same"].append(samples["write"][-1] / samples["fio_write_same"][-1])
                    shutil.rmtree(fw)
                    fw.mkdir()
            if not rnd % 2:
                dd_write(rnd)
                one_behind(rnd)
            if fio_w is not None and fio_r is not None:
                ratios["write"].append(samples["write"][-1] / samples["fio_write"][-1])
                ratios["restore"].append(samples["restore"][-1] / samples["fio_read"][-1])
            ratios["write_dd"].append(samples["write"][-1] / samples["dd_write"][-1])
            ratios["write_behind"].append(samples["write"][-1] / samples["write_behind_1"][-1])
            ratios["restore_dd"].append(samples["restore"][-1] / samples["dd_read"][-1])
            print(
                f"round {rnd + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in samples.items()),
                file=sys.stderr,
            )
        # memory: one burst with the big shard
        work = scratch / "rss"
        rss_run, _ = burst_run(a.ranks, rss_bytes, work, outdir / "runs")
        shutil.rmtree(work)
        rss_c = rss_run["checkpoint_burst"]
        dlio: dict[str, Any] | None = None
        dlio_skip = ""
        if not a.skip_dlio:
            import psutil

            need = a.ranks * (nbytes + 2 * GiB) + 2 * GiB
            avail = psutil.virtual_memory().available
            if avail < need:
                dlio_skip = f"skipped: DLIO holds each shard in RAM; needs ~{need / GiB:.0f} GiB, {avail / GiB:.0f} available"
            else:
                # as many DLIO runs as rounds: one run's rank-0 time swings 2-3x on a shared machine
                runs = []
                for _ in range(a.rounds):
                    runs.append(dlio_run(a.ranks, nbytes, scratch / "dlio"))
                    shutil.rmtree(scratch / "dlio")
                dlio = sorted(runs, key=lambda r: r["GBps"])[len(runs) // 2]
                dlio["GBps_samples"] = [round(r["GBps"], 3) for r in runs]
        else:
            dlio_skip = "skipped (--skip-dlio)"
    finally:
        if a.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)

    med = {k: statistics.median(v) if v else float("nan") for k, v in samples.items()}
    rwd, rrd = statistics.median(ratios["write_dd"]), statistics.median(ratios["restore_dd"])
    peak = max(rss_c["memory"]["peak_rss_bytes"]["per_rank"])
    peak_small = max(max(c["memory"]["peak_rss_bytes"]["per_rank"]) for c in summaries)
    label = f"{a.ranks} ranks x {nbytes / GiB:.2f} GiB"
    lines = [
        f"checkpoint burst on {os.uname().nodename} ({os.cpu_count()} CPUs), block {CHUNK // MiB} MiB, "
        f"{a.rounds} interleaved rounds: medians (ratio: median of the per-round ratios, range in brackets)",
        "",
        "| measurement | dlio-ext | baseline | ratio | target | met? |",
        "| --- | --- | --- | --- | --- | --- |",
        limit_row(f"burst write, O_DIRECT + fsync per file ({label})", "write", fio_w, med, ratios),
        limit_row(
            f"cold restore, O_DIRECT, rank shift 1, every byte verified ({label})",
            "restore",
            fio_r,
            med,
            ratios,
        ),
        *(
            f"| {what} vs fio at the same depth | {med[key]:.3f} GB/s | "
            f"{fio[0].describe(cfg)}, at most {depth[side]} in flight: {med[f'fio_{side}_same']:.3f} GB/s | "
            f"{statistics.median(ratios[f'{key}_same']):.2f} ({spread(ratios[f'{key}_same'])}) | - | - |"
            for what, key, side, fio in (
                ("burst write", "write", "write", fio_w),
                ("cold restore", "restore", "read", fio_r),
            )
            if fio is not None and (cfg := same[side]) is not None
        ),
        f"| burst write vs dd (sanity) | {med['write']:.3f} GB/s | "
        f"{a.ranks} x dd oflag=direct conv=fsync: {med['dd_write']:.3f} GB/s | {rwd:.2f} ({spread(ratios['write_dd'])}) "
        "| - | - |",
        f"| burst write, write_behind=4 (default) vs 1 (one write of a file in flight) | {med['write']:.3f} GB/s | "
        f"write_behind=1: {med['write_behind_1']:.3f} GB/s | {statistics.median(ratios['write_behind']):.2f} "
        f"({spread(ratios['write_behind'])}) | - | - |",
        f"| cold restore vs dd (sanity) | {med['restore']:.3f} GB/s | "
        f"{a.ranks} x dd iflag=direct: {med['dd_read']:.3f} GB/s | {rrd:.2f} ({spread(ratios['restore_dd'])}) "
        "| - | - |",
    ]
    if dlio:
        ratio = med["write"] / dlio["GBps"]
        lines.append(
            f"| burst write vs DLIO 2.0.0 PyTorchCheckpointing, all_ranks ({label}) | {med['write']:.3f} GB/s | "
            f"DLIO: {dlio['GBps']:.3f} GB/s (median of {len(dlio['GBps_samples'])} runs; its own rank-0 time, "
            f"no fsync) | {ratio:.2f} | >= 3 | "
            f"{'yes' if ratio >= 3 else 'NO'} |"
        )
    else:
        lines.append(
            f"| burst write vs DLIO 2.0.0 ({label}) | {med['write']:.3f} GB/s | {dlio_skip} | - | >= 3 | - |"
        )
    lines.append(
        f"| peak RSS per rank, {rss_bytes / GiB:.2f} GiB shard | {peak / MiB:.0f} MiB "
        f"({nbytes / GiB:.2f} GiB shard: {peak_small / MiB:.0f} MiB) | "
        + (
            f"DLIO, {nbytes / GiB:.2f} GiB shard: {max(dlio['peak_rss_bytes']) / MiB:.0f} MiB"
            if dlio
            else "-"
        )
        + f" | - | <= 512 MiB | {'yes' if peak <= 512 * MiB else 'NO'} |"
    )
    lines.append("")
    for side, fio in (("write", fio_w), ("read", fio_r)):
        if fio is not None:
            lines.append(
                f"fio {side} limit: {fio[0].describe(fio[1])}, the best of a sweep over jobs {jobs}, "
                f"psync / libaio / io_uring, iodepth {fio_limit.DEPTHS} (every config's GB/s: bench.json)"
            )
    shown = {k: [round(x, 3) for x in v] for k, v in samples.items()}
    if dlio:
        shown["dlio"] = dlio["GBps_samples"]
    lines.append(f"samples (GB/s): {json.dumps(shown)}")
    lines.append(
        f"memory run ({a.ranks} ranks x {rss_bytes / GiB:.2f} GiB, 1 write + 1 restore): write "
        f"{rss_c['write']['overall']['GBps']:.3f} GB/s, restore {rss_c['restore']['overall']['GBps']:.3f} GB/s, "
        f"buffer pool {rss_c['buffer_pool_bytes'] // MiB} MiB + read_ahead + 1 read buffers per rank"
    )
    if dlio:
        lines.append(
            f"DLIO: {dlio['bytes'] / GiB:.2f} GiB in {dlio['files']} took {dlio['rank0_seconds']:.2f} s on rank 0 "
            f"(DLIO times rank 0 only); it never fsyncs (`sync` right after it exited: "
            f"{dlio['sync_after_return_s']:.2f} s); it held the whole shard in RAM "
            f"(peak RSS {', '.join(f'{x / GiB:.2f}' for x in dlio['peak_rss_bytes'])} GiB per rank)."
        )
    lines.append(
        "dd writes /dev/zero (the kindest data there is); dlio-ext writes incompressible, undeduplicable data."
    )
    lines.append(f"bench wall time: {time.perf_counter() - t_start:.0f} s")
    table = "\n".join(lines)
    print(table)
    (outdir / "bench.md").write_text(table + "\n")
    (outdir / "bench.json").write_text(
        json.dumps(
            {
                "samples": samples,
                "ratios": ratios,
                "medians": med,
                "dlio": dlio,
                "ranks": a.ranks,
                "bytes_per_rank": nbytes,
                "rss_run": rss_c,
                "fio_sweeps": sweeps,
                "fio_best": {k: v[1].label for k, v in (("write", fio_w), ("read", fio_r)) if v},
                "runs": summaries,
            },
            indent=2,
            default=str,
        )  # fmt: skip
    )
    print(f"written: {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
