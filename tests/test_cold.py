"""Cold means cold: what the kernel counted beside what a phase counted, real files on the real disk.

The pytest temporary directories live on the machine's block device, so /proc/self/io and
/proc/diskstats see the bytes; tmpfs is a real mount; S3 is the session's SeaweedFS.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
from helpers import run_cli

from dlio_ext.metrics import kernel
from dlio_ext.metrics import results as res
from dlio_ext.s3server import ServerInfo, server_env
from dlio_ext.storage.posix import PosixBackend
from dlio_ext.workloads import storage_sweep
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.phases import PhaseRunner
from dlio_ext.world import SoloWorld

MiB = 1 << 20
SWEEP = [
    "run",
    "workload=storage_sweep",
    "storage=posix",
    "workload.object_size=1048576",
    "workload.phases=[write,read_sequential,read_random]",
    "run.progress_interval=0",
]

requires_block_device = pytest.mark.skipif(
    kernel.find_device(os.getcwd()).name is None, reason="the test directory is on no block device"
)


# --- the kernel's counters, parsed ------------------------------------------------------------------


def test_proc_io_and_diskstats_parse_and_absent_files_are_none(tmp_path):
    text = "rchar: 10\nwchar: 5\nsyscr: 1\nsyscw: 1\nread_bytes: 8192\nwrite_bytes: 4096\ncancelled_write_bytes: 512\n"
    assert kernel.parse_proc_io(text) == kernel.ProcIO(8192, 4096, 512)
    assert kernel.parse_proc_io("rchar: 10\n") is None
    stats = " 254       0 vda 9132 5303 2348050 5677 5386 80552 7160392 38032 0 4968 44145\n"
    assert kernel.parse_diskstats(stats, "vda") == kernel.DiskIO(2348050 * 512, 7160392 * 512)
    assert kernel.parse_diskstats(stats, "sdb") is None
    assert kernel.read_proc_io(str(tmp_path / "no-io")) is None
    assert kernel.read_diskstats("vda", str(tmp_path / "no-diskstats")) is None
    mine = kernel.read_proc_io()
    assert mine is not None and mine.read_bytes >= 0


@requires_block_device
def test_find_device_names_the_disk_or_says_why_not(tmp_path):
    dev = kernel.find_device(str(tmp_path))
    st = os.stat(tmp_path).st_dev
    with open(kernel.DISKSTATS) as fh:
        line = next(ln.split() for ln in fh if ln.split()[:2] == [str(os.major(st)), str(os.minor(st))])
    assert dev.name == line[2] and not dev.memory and dev.why is None
    # an anonymous device that is not memory (proc): no device, and the reason names the file system
    proc = kernel.find_device("/proc/self")
    assert proc.name is None and not proc.memory and "proc" in (proc.why or "")
    # a device the diskstats text does not list: said, not guessed
    assert "no line" in (kernel.find_device(str(tmp_path), diskstats="", mountinfo="").why or "")
    # a partition or a device-mapper volume has its own diskstats line: whatever names st_dev there
    dm = f"{os.major(st)} {os.minor(st)} dm-3 1 0 8 0 2 0 16 0 0 0 0\n"
    assert kernel.find_device(str(tmp_path), diskstats=dm, mountinfo="").name == "dm-3"


def test_find_device_of_an_anonymous_device_mounted_from_a_block_device():
    """btrfs and the like: st_dev is anonymous (major 0); the mount's source names the disk."""
    shm = os.stat("/dev/shm").st_dev
    disk = next(p for p in ("/dev/vda", "/dev/sda", "/dev/nvme0n1") if os.path.exists(p))
    rdev = os.stat(disk).st_rdev
    diskstats = f"{os.major(rdev)} {os.minor(rdev)} {Path(disk).name} 1 0 8 0 2 0 16 0 0 0 0\n"
    mountinfo = f"99 1 {os.major(shm)}:{os.minor(shm)} / /dev/shm rw - btrfs {disk} rw\n"
    dev = kernel.find_device("/dev/shm", diskstats=diskstats, mountinfo=mountinfo)
    assert dev.name == Path(disk).name and dev.fstype == "btrfs"
    overlay = f"99 1 {os.major(shm)}:{os.minor(shm)} / /dev/shm rw - overlay overlay rw\n"
    dev = kernel.find_device("/dev/shm", diskstats=diskstats, mountinfo=overlay)
    assert dev.name is None and "overlay" in (dev.why or "") and not dev.memory


@pytest.fixture
def tmpfs(tmp_path: Path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_find_device_on_tmpfs_is_memory(tmpfs):
    dev = kernel.find_device(str(tmpfs))
    assert dev.name is None and dev.memory and dev.fstype == "tmpfs" and "memory" in (dev.why or "")


def test_sources_that_disagree_are_flagged_with_the_numbers():
    def state(proc_read: int, disk_read: int | None) -> dict:
        return {
            "host": "h",
            "proc_self_io": {"read_bytes": proc_read, "write_bytes": 0, "cancelled_write_bytes": 0},
            "diskstats": None if disk_read is None else {"read_bytes": disk_read, "write_bytes": 0},
            "device": "vda",
            "no_device": None,
            "memory": False,
            "fstype": "ext4",
            "fsync_calls": 0,
            "fsync_seconds": 0.0,
        }

    agree = res.merge_kernel([state(60 * MiB, 103 * MiB), state(40 * MiB, None)], "read", 100 * MiB)
    assert agree["device_bytes"] == 100 * MiB and agree["device_bytes_source"] == "proc_self_io"
    assert agree["cache_fraction"] == 0.0 and agree["kernel"]["disagree"] is False
    off = res.merge_kernel([state(10 * MiB, 90 * MiB), state(0, None)], "read", 100 * MiB)
    assert off["cache_fraction"] == 0.9 and off["kernel"]["disagree"] is True
    assert "10,485,760" in off["kernel"]["disagreement"] and "94,371,840" in off["kernel"]["disagreement"]


# --- storage_sweep on posix: warm, cold, durable, tmpfs, and cache control defeated -------------------


@requires_block_device
def test_sweep_warm_reads_are_cache_and_cold_reads_are_device_under_mpirun(tmp_path):
    n, ranks = 48, 2
    warm = run_cli(*SWEEP, f"run.results_dir={tmp_path}/w", f"workload.objects_per_rank={n}", np=ranks)
    cold = run_cli(
        *SWEEP,
        f"run.results_dir={tmp_path}/c",
        f"workload.objects_per_rank={n}",
        "workload.cold=true",
        np=ranks,
    )
    assert warm.code == 0 and cold.code == 0, warm.err + cold.err
    w, c = warm.summary(), cold.summary()
    counted = ranks * n * MiB
    for name in ("read_sequential", "read_random"):
        pw, pc = w["phases"][name], c["phases"][name]
        assert pw["bytes"] == pc["bytes"] == counted
        # warm: the objects were just written through the page cache; nothing comes from the disk
        assert pw["cache_fraction"] > 0.9, pw
        assert "cold" not in pw
        # cold: evicted before the phase, so (about) every byte came from the device
        assert pc["cache_fraction"] < 0.05, pc
        assert pc["device_bytes"] >= 0.95 * counted and pc["device_bytes_source"] == "proc_self_io"
        assert pc["kernel"]["proc_self_io"]["ranks"] == ranks
        assert pc["kernel"]["diskstats"]["hosts"] == 1  # one rank per host samples the device
        assert pc["cold"] == {"claimed": True, "method": "fadvise_dontneed"}
    assert c["valid"] and not c["invalid_reasons"]
    # the console table carries the kernel's columns
    assert "dev GB" in cold.out and "cache%" in cold.out
    row = next(ln for ln in cold.out.splitlines() if ln.startswith("read_sequential"))
    assert row.split()[-1] == f"{c['phases']['read_sequential']['cache_fraction']:.0%}"


@requires_block_device
def test_write_phase_with_fsync_reaches_the_device(tmp_path):
    d = run_cli(
        *SWEEP,
        f"run.results_dir={tmp_path}",
        "workload.objects_per_rank=32",
        "workload.phases=[write]",
        "storage.fsync=file",
    )
    assert d.code == 0, d.err
    s = d.summary()
    p = s["phases"]["write"]
    assert p["io"] == "write" and p["bytes"] == 32 * MiB
    assert p["device_bytes"] >= p["bytes"], p
    assert p["device_bytes_source"].startswith("diskstats")
    assert p["fsync_calls"] == 32 and p["fsync_seconds"] > 0
    assert s["storage"]["fsync"] == "file" and s["storage"]["fsync_source"] == "user"


def test_cold_claim_on_tmpfs_is_invalid_with_the_reason(tmp_path, tmpfs):
    d = run_cli(
        *SWEEP,
        f"run.results_dir={tmp_path}/r",
        f"storage.root={tmpfs}",
        "workload.objects_per_rank=8",
        "workload.cold=true",
    )
    assert d.code == 1, d.out + d.err
    s = d.summary()
    assert not s["valid"]
    reasons = [r for r in s["invalid_reasons"] if "tmpfs" in r]
    assert {r.split()[1] for r in reasons} == {"read_sequential", "read_random"}, s["invalid_reasons"]
    assert "memory by definition" in reasons[0]
    p = s["phases"]["read_sequential"]
    assert p["cache_fraction"] == 1.0 and p["device_bytes"] == 0 and p["kernel"]["memory"]


class fake_NoEvictPosix(PosixBackend):  # noqa: N801 - the name says it is a fake
    """A real posix backend whose eviction does nothing: cache control defeated (fault injection)."""

    def evict(self, keys) -> None:
        for _ in keys:
            pass


@requires_block_device
def test_cold_claim_with_eviction_defeated_is_invalid(tmp_path):
    backend = fake_NoEvictPosix(str(tmp_path / "data"))
    backend.check()
    cfg = storage_sweep.Config(
        objects_per_rank=16, object_size=MiB, phases=["write", "read_sequential"], read_shift=0, cold=True
    )
    world = SoloWorld()
    ctx = Context(
        world, backend, PhaseRunner(world, 0, backend), cfg, tmp_path, "t", 1, logging.getLogger("t")
    )
    phases = {p.name: res.merge_phase([p.to_state()]) for p in storage_sweep.StorageSweep(ctx).run()}
    read = phases["read_sequential"]
    assert read["cold"]["claimed"] and read["cache_fraction"] > 0.9
    reasons, _warnings = res.cold_check(phases, 0.05)  # what the harness calls
    assert len(reasons) == 1 and reasons[0].startswith("phase read_sequential claims cold reads")
    assert f"cache_fraction {read['cache_fraction']:.3f}" in reasons[0] and "proc_self_io" in reasons[0]
    # the same run with eviction working is within the bound
    ok = PosixBackend(str(tmp_path / "data2"))
    ok.check()
    ctx = Context(world, ok, PhaseRunner(world, 0, ok), cfg, tmp_path, "u", 1, logging.getLogger("t"))
    phases = {p.name: res.merge_phase([p.to_state()]) for p in storage_sweep.StorageSweep(ctx).run()}
    assert res.cold_check(phases, 0.05)[0] == []


# --- S3: the server's cache is not ours ---------------------------------------------------------------


def test_s3_phases_say_server_cache_not_controlled(tmp_path, s3_server: ServerInfo):
    d = run_cli(
        "run",
        "workload=storage_sweep",
        "storage=s3",
        "storage.prefix=cold-s3",
        f"run.results_dir={tmp_path}",
        "workload.objects_per_rank=4",
        "workload.object_size=65536",
        "workload.phases=[write,read_sequential]",
        "workload.cold=true",
        "run.progress_interval=0",
        env=server_env(s3_server),
        np=2,
    )
    assert d.code == 0, d.err
    s = d.summary()
    assert s["valid"]
    for name in ("write", "read_sequential"):
        p = s["phases"][name]
        assert "server cache not controlled" in p["kernel"]["no_device"]
        assert p["device_bytes"] is None
    assert s["phases"]["read_sequential"]["cache_fraction"] is None
    assert s["phases"]["read_sequential"]["cold"]["method"] == "remote"
    assert any(
        w.startswith("read_sequential: cold not verified") and "server cache not controlled" in w
        for w in s["warnings"]
    ), s["warnings"]


# --- kv_cache: the MLPerf presets read cold and write durably -----------------------------------------

KV_TINY = [
    "run",
    "workload=kv_cache/llama3_8b_200u",
    "storage=posix",
    "workload.users=16",
    "workload.requests_per_user=2",
    "run.progress_interval=0",
]


@requires_block_device
def test_kv_mlperf_preset_reads_cold_and_fsyncs_every_chunk(tmp_path):
    d = run_cli(*KV_TINY, f"run.results_dir={tmp_path}", np=2)
    assert d.code == 0, d.out + d.err
    s = d.summary()
    read, write = s["phases"]["read"], s["phases"]["write"]
    assert read["bytes"] > 0 and read["cold"]["claimed"]
    assert read["cache_fraction"] is not None and read["cache_fraction"] < 0.05, read
    assert write["fsync_calls"] == write["ops"] > 0 and write["fsync_seconds"] > 0
    assert read["fsync_calls"] == 0
    kv = s["kv_cache"]
    assert kv["durability"]["source"] == "preset" and kv["durability"]["policy"].startswith("fsync per file")
    assert s["storage"]["fsync"] == "file" and s["storage"]["fsync_source"] == "preset"
    assert kv["cold_reads"]["claimed"] and kv["cold_reads"]["cache_fraction"] == read["cache_fraction"]
    assert s["valid"]


@requires_block_device
def test_kv_user_fsync_none_wins_over_the_preset(tmp_path):
    d = run_cli(*KV_TINY, f"run.results_dir={tmp_path}", "storage.fsync=none")
    assert d.code == 0, d.out + d.err
    s = d.summary()
    assert s["kv_cache"]["durability"]["source"] == "user"
    assert s["kv_cache"]["durability"]["policy"].startswith("none")
    assert s["storage"]["fsync"] == "none" and s["storage"]["fsync_source"] == "user"
    assert s["phases"]["write"]["fsync_calls"] == 0 and s["phases"]["write"]["ops"] > 0


def test_posix_cold_read_keeps_a_second_reader_out_until_the_first_is_done(tmp_path):
    """Two readers of one chunk at once would share a cache fill: the second waits (any thread)."""
    import threading
    import time

    b = PosixBackend(str(tmp_path))
    b.put("k", b"x" * 8192)
    inside = threading.Event()
    order: list[str] = []

    def second() -> None:
        inside.wait()
        with b.cold_read("k"):
            order.append("second in")

    t = threading.Thread(target=second)
    t.start()
    with b.cold_read("k"):
        inside.set()
        time.sleep(0.3)  # the second reader is at the door the whole time
        order.append("first out")
    t.join(10)
    assert order == ["first out", "second in"]
    with b.cold_read("missing"):  # nothing to evict or hold: the read reports the missing key
        pass
    assert b.resident(["k"])[0] == 0  # evicted on entry


@pytest.mark.parametrize(
    ("preset", "mirrors_mlperf"),
    [
        ("llama3_8b_200u", True),
        ("llama3_70b_70u", True),
        ("llama3_8b_100u_cpu4g", True),
        ("deepseek_v3", False),  # ours: no MLPerf invocation behind it
        ("custom", False),
    ],
)
def test_kv_presets_that_mirror_mlperf_claim_cold_reads_and_fsync(preset, mirrors_mlperf):
    from dlio_ext.run.harness import load_config as load

    cfg = load([f"workload=kv_cache/{preset}"]).workload
    assert (cfg.cold, cfg.durability) == ((True, "fsync") if mirrors_mlperf else (False, "storage"))
    assert load([f"workload=kv_cache/{preset}", "workload.cold=false"]).workload.cold is False


def test_cold_read_turns_are_per_host_and_per_file(tmp_path):
    """Another process on this host waits for a file's turn (a rank beside this one); a reader of
    another file does not wait at all; the data file itself carries no lock (an flock on a cluster
    file system would queue readers across hosts)."""
    import subprocess
    import sys
    import threading
    import time

    b = PosixBackend(str(tmp_path))
    for k in ("a", "b"):
        b.put(k, b"x" * 8192)
    holder = (
        "import sys, time\n"
        "from dlio_ext.storage.posix import PosixBackend\n"
        "b = PosixBackend(sys.argv[1])\n"
        "with b.cold_read('a'):\n"
        "    print('in', flush=True)\n"
        "    time.sleep(1.5)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "in"
        t0 = time.monotonic()
        with b.cold_read("b"):  # another file: no wait
            other = time.monotonic() - t0
        with b.cold_read("a"):
            waited = time.monotonic() - t0
        assert other < 0.5 and waited > 0.8, (other, waited)
    finally:
        p.wait(10)
    # no lock on the data file: a plain flock of it is free while a cold reader holds its turn
    import fcntl

    inside = threading.Event()
    release = threading.Event()

    def reader() -> None:
        with b.cold_read("a"):
            inside.set()
            release.wait(10)

    t = threading.Thread(target=reader)
    t.start()
    inside.wait(10)
    with open(tmp_path / "a", "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    release.set()
    t.join(10)
