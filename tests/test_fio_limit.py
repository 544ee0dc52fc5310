"""scripts/fio_limit.py, the fio sweep the file benches take as their limit: its shapes move
exactly the bytes of the files dlio-ext reads or writes, on real files with the real fio."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import fio_limit  # noqa: E402  (a script beside the benches, not a package module)

MiB = 1 << 20
needs_fio = pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed (scripts/setup.sh)")


def test_split_files_deals_every_block_once_in_equal_runs(tmp_path: Path) -> None:
    files = [
        (tmp_path / "r0_model", 2 * MiB),
        (tmp_path / "r0_optim", 12 * MiB),
        (tmp_path / "r1_model", 2 * MiB),
    ]
    for jobs in (1, 2, 3, 16, 99):
        dealt = fio_limit.split_files(files, MiB)(jobs)
        assert len(dealt) == min(jobs, 16)
        sizes = [sum(s.length for s in job) for job in dealt]
        assert max(sizes) - min(sizes) <= MiB  # equal runs of whole blocks
        covered = sorted((s.path.name, s.offset, s.length) for job in dealt for s in job)
        for name, n in ((f.name, n) for f, n in files):  # each file covered once, end to end
            mine = [(o, n_) for f, o, n_ in covered if f == name]
            assert mine[0][0] == 0 and all(a[0] + a[1] == b[0] for a, b in zip(mine, mine[1:], strict=False))
            assert sum(x[1] for x in mine) == n
    # one job per rank's shard: rank 0's two files are job 0's, in order
    two = fio_limit.split_files(files[:2] + [(tmp_path / "r1", 14 * MiB)], MiB)(2)
    assert [(s.path.name, s.length) for s in two[0]] == [("r0_model", 2 * MiB), ("r0_optim", 12 * MiB)]


@needs_fio
def test_write_then_read_moves_exactly_the_shape(tmp_path: Path) -> None:
    files = [(tmp_path / "model", 1 * MiB), (tmp_path / "optim", 6 * MiB)]
    (tmp_path / "optim").write_bytes(b"x" * (9 * MiB))  # a leftover: a write starts from no file
    w = fio_limit.Shape("write", MiB, fio_limit.split_files(files, MiB), fsync_on_close=True)
    for cfg in (fio_limit.Config("psync", 3, 1), fio_limit.Config("io_uring", 1, 4)):
        assert fio_limit.run(w, cfg) > 0
        assert [f.stat().st_size for f, _ in files] == [MiB, 6 * MiB]
    r = fio_limit.Shape("read", MiB, fio_limit.split_files(files, MiB))
    assert fio_limit.run(r, fio_limit.Config("libaio", 2, 4)) > 0
    assert "fsync per file" in w.describe(fio_limit.Config("psync", 3, 1))


@needs_fio
def test_per_file_reads_many_chunk_files_through_links(tmp_path: Path) -> None:
    chunks = []
    for i in range(300):  # more names than one `filename=` holds
        f = tmp_path / "data" / f"{i:03d}" / ("k" * 60)
        f.parent.mkdir(parents=True)
        f.write_bytes(bytes([i % 256]) * 4096)
        chunks.append(f)
    shape = fio_limit.Shape("read", 4096, fio_limit.per_file(chunks, 4096), links=tmp_path / "links")
    best, seen = fio_limit.sweep(shape, [1, 4], lambda _: None, finalists=2, again=1)
    assert len(seen) == len(fio_limit.grid([1, 4])) == 2 + 2 * 2 * 3
    assert best.label in seen and len(seen[best.label]) == 2  # a finalist, run once more
    assert sum(1 for _ in (tmp_path / "links").rglob("*") if _.is_file()) == 300 * 2  # 1 and 4 jobs


@needs_fio
def test_a_missing_file_fails_in_one_line(tmp_path: Path) -> None:
    shape = fio_limit.Shape("read", 4096, fio_limit.per_file([tmp_path / "a", tmp_path / "b"], 4096))
    with pytest.raises(RuntimeError, match=r"^fio psync, 1 jobs x iodepth 1 (failed|moved)") as err:
        fio_limit.run(shape, fio_limit.Config("psync", 1, 1))
    assert "\n" not in str(err.value).strip()


def test_within_picks_the_fastest_config_at_the_callers_depth() -> None:
    seen = {c.label: [1.0] for c in fio_limit.grid([1, 2, 8])}
    seen["io_uring, 8 jobs x iodepth 16"] = [9.0]  # 128 in flight: too deep
    seen["libaio, 2 jobs x iodepth 4"] = [3.0, 2.0, 2.5]  # 8 in flight, median 2.5
    seen["psync, 8 jobs x iodepth 1"] = [2.4]
    best = fio_limit.within(seen, [1, 2, 8], 8)
    assert best == fio_limit.Config("libaio", 2, 4)
    assert fio_limit.within(seen, [1, 2, 8], 128) == fio_limit.Config("io_uring", 8, 16)
    assert fio_limit.within({}, [1, 2, 8], 8) is None
