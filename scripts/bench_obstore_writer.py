"""What it costs the obstore writer to leave the caller's buffer alone (base.py, "Buffer ownership").

obstore's own writer keeps zero-copy references to the chunks it is given until their part is
uploaded, so a caller that reuses its buffer (the checkpoint engine) corrupts what is stored. Three
ways to write the same objects, interleaved round by round, medians printed with their ratios:

  zero-copy   obstore's writer given the caller's chunks (what dlio-ext did before; WRONG bytes
              on storage when the caller reuses its buffer, as every workload does)
  staged      S3Backend.writer: chunks copied into pooled part buffers obstore may keep until the
              part is uploaded (what dlio-ext does now)
  copies      obstore's writer given an immutable copy (`bytes(chunk)`) of every chunk: fresh
              memory each time, faulted in on first touch

Run against a running store, e.g. the local one:
    eval "$(.venv/bin/dlio-ext s3-server start --dir /tmp/s3)"
    .venv/bin/python scripts/bench_obstore_writer.py [--object-mib 64] [--chunk-mib 16] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import benchlib

from dlio_ext.storage.buffers import aligned_buffer, fill_random
from dlio_ext.storage.s3 import S3Backend, S3Settings
from dlio_ext.storage.s3.obstore_driver import ObstoreDriver

MIB = 1 << 20


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--object-mib", type=int, default=64)
    ap.add_argument("--chunk-mib", type=int, default=16)
    ap.add_argument("--objects", type=int, default=2, help="objects a round, per way")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--part-mib", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args(argv)
    settings = S3Settings.from_config(
        {
            "client": "obstore",
            "prefix": f"bench-obstore-writer-{benchlib.utc_stamp()}",
            "part_size": args.part_mib * MIB,
            "concurrency": args.concurrency,
        }
    )
    b = S3Backend(settings)
    b.check()
    # obstore's own writer, for the ways that bypass the backend's staging
    driver = ObstoreDriver(settings, settings.connect_timeout, settings.read_timeout)
    size, chunk = args.object_mib * MIB, args.chunk_mib * MIB
    src = aligned_buffer(chunk)
    fill_random(src, 1)

    def stream(write: Callable[[memoryview], None]) -> None:
        for off in range(0, size, chunk):
            write(src[: min(chunk, size - off)])

    def zero_copy(key: str) -> None:
        w = driver.open_writer(key)
        stream(w.write)
        w.close()

    def staged(key: str) -> None:
        with b.writer(key) as w:
            stream(w.write)

    def copies(key: str) -> None:
        w = driver.open_writer(key)
        stream(lambda view: w.write(bytes(view)))
        w.close()

    ways = {"zero-copy": zero_copy, "staged": staged, "copies": copies}
    staged("warm-up")  # the staging pool fills once, as in the first checkpoint of a run
    times: dict[str, list[float]] = {name: [] for name in ways}
    cpu: dict[str, list[float]] = {name: [] for name in ways}  # all threads: obstore's too
    for r in range(args.rounds):
        for name, way in ways.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(args.objects):
                way(f"{name}/{r}/{i}")
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        benchlib.say(
            f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items())
        )
    keys = list(b.list(""))
    b.delete_many(keys)
    b.close()
    driver.close()
    moved = args.objects * size
    base, cbase = statistics.median(times["zero-copy"]), statistics.median(cpu["zero-copy"])
    print(f"# {benchlib.command_line(argv)}")
    print(
        f"# {args.objects} x {args.object_mib} MiB objects a round in {args.chunk_mib} MiB chunks, part "
        f"{args.part_mib} MiB, concurrency {args.concurrency}, {args.rounds} rounds, medians"
    )
    print(
        f"{'way':<10} {'median s':>9} {'MB/s':>8} {'time / zero-copy':>17} {'CPU s':>7} {'CPU / zero-copy':>16}"
    )
    for name, t in times.items():
        m, c = statistics.median(t), statistics.median(cpu[name])
        print(f"{name:<10} {m:>9.3f} {moved / m / 1e6:>8.1f} {m / base:>17.3f} {c:>7.3f} {c / cbase:>16.3f}")


if __name__ == "__main__":
    main()
