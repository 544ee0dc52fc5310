"""storage=nixl, medium=memory: a tier of registered memory over real MPI ranks, moved by NIXL.

Everything runs for real: mpirun with 2 and 4 ranks, NIXL's UCX over shared memory (UCX's
default here: cma) and over tcp on the loopback device only. The one fake is a `nixl_cu12` that
fails to import, to show the line a machine without NIXL gets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Any

import pytest
from helpers import KV_SMALL, PY, ROOT, Done, mpi_cmd, run_cli

from dlio_ext.errors import UsageError
from dlio_ext.storage import open_backend
from dlio_ext.storage.nixl import agent as nixl_agent
from dlio_ext.storage.nixl.agent import INSTALL, is_rdma, transports
from dlio_ext.storage.nixl.memory import RECORD, Extents, Layout, MemoryMedium, Shard
from dlio_ext.storage.nixl.settings import NixlSettings
from dlio_ext.world import SoloWorld

pytest.importorskip("nixl_cu12")

#: UCX over tcp on the loopback device only (UCX would spread tcp over every interface)
TCP = ["storage.transports=tcp", "storage.net_devices=lo"]
TRANSPORTS = {"shm": [], "tcp": TCP}

# every rank: its own objects, its neighbour's read back one-sidedly, the metadata verbs, then a
# tier filled to the brim. Prints one JSON line per rank.
VERBS = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from dlio_ext.storage import open_backend
    from dlio_ext.storage.base import NoSpace, NotFound
    from dlio_ext.world import get_world

    world = get_world()
    r, n = world.rank, world.size
    cfg = {"type": "nixl", "pool_bytes": 4 << 20, **json.loads(sys.argv[1])}
    b = open_backend(cfg, sys.argv[2])
    out = {"rank": r}

    def body(rank, size):
        return np.random.default_rng(rank).integers(0, 256, size, dtype=np.uint8).tobytes()

    # a registered buffer (from alloc) and a caller's plain bytes (staged) both work
    buf = b.alloc(300_000)
    buf[:] = body(r, 300_000)
    b.put(f"chunk/{r}", buf)
    b.put(f"small/{r}", body(r + 100, 4096))
    with b.writer(f"stream/{r}") as w:
        for i in range(5):
            w.write(body(r + 200 + i, 70_000))
    b.put(f"empty/{r}", b"")
    world.barrier()

    peer = (r + 1) % n
    into = b.alloc(300_000)
    out["chunk_ok"] = b.get(f"chunk/{peer}", into) == 300_000 and bytes(into) == body(peer, 300_000)
    plain = bytearray(4096)
    out["small_ok"] = b.get(f"small/{peer}", memoryview(plain)) == 4096 and bytes(plain) == body(peer + 100, 4096)
    whole = b"".join(body(peer + 200 + i, 70_000) for i in range(5))
    got = bytearray(len(whole))
    out["stream_ok"] = b.get(f"stream/{peer}", memoryview(got)) == len(whole) and bytes(got) == whole
    part = bytearray(1000)
    out["range_ok"] = (
        b.get_range(f"chunk/{peer}", 123_457, memoryview(part)) == 1000
        and bytes(part) == body(peer, 300_000)[123_457:124_457]
        and b.get_range(f"chunk/{peer}", 299_500, memoryview(part)) == 500
    )
    out["empty_size"] = b.stat(f"empty/{peer}").size
    out["stat"] = b.stat(f"chunk/{peer}").size
    out["list"] = list(b.list("chunk/"))
    out["top"] = list(b.list("", "/"))
    try:
        b.get(f"chunk/{peer}", memoryview(bytearray(10)))
        out["too_small"] = "no error"
    except Exception as exc:
        out["too_small"] = type(exc).__name__
    try:  # before the key's first byte lie other keys' bytes
        out["before_start"] = b.get_range(f"chunk/{peer}", -100, memoryview(part))
    except Exception as exc:
        out["before_start"] = type(exc).__name__
    world.barrier()

    # every rank writes one key at once, again and again: the last commit wins, whole
    for i in range(20):
        b.put("same", body(500 + r, 65536))
    world.barrier()
    same = bytearray(65536)
    b.get("same", memoryview(same))
    out["same_whole"] = [q for q in range(n) if bytes(same) == body(500 + q, 65536)]
    world.barrier()

    b.delete(f"chunk/{r}")
    world.barrier()
    for verb, call in (("stat", b.stat), ("delete", b.delete)):
        try:
            call(f"chunk/{peer}")
            out[f"{verb}_deleted"] = "found"
        except NotFound:
            out[f"{verb}_deleted"] = "NotFound"
    world.barrier()

    # fill: rank 0 alone writes 256 KiB objects until the tier says it is full
    if r == 0:
        stored, full = [], None
        for i in range(200):
            try:
                b.put(f"fill/{i}", body(1000 + i, 256 << 10))
                stored.append(i)
            except NoSpace as exc:
                full = str(exc)
                break
        out["fill_stored"] = len(stored)
        out["fill_error"] = full
        ok = True
        for i in stored:  # nothing written before the tier filled up was lost
            back = bytearray(256 << 10)
            ok &= b.get(f"fill/{i}", memoryview(back)) == len(back) and bytes(back) == body(1000 + i, 256 << 10)
        out["fill_intact"] = ok
    world.barrier()
    b.close()
    d = b.describe()
    out["plugins"] = d["nixl_plugins"]
    out["transports"] = d["ucx_transports"]
    out["registrations"] = d["registrations"]
    print("RESULT " + json.dumps(out), flush=True)
    """
)


def _mpi_script(tmp_path: Path, np: int, settings: dict[str, object], source: str = VERBS) -> list[dict]:
    script = tmp_path / "script.py"
    script.write_text(source)
    cmd, env = mpi_cmd(np, [PY, str(script), json.dumps(settings), str(tmp_path)])
    env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = [
        json.loads(ln.removeprefix("RESULT ")) for ln in p.stdout.splitlines() if ln.startswith("RESULT ")
    ]
    assert len(rows) == np, p.stdout + p.stderr
    return sorted(rows, key=lambda r: r["rank"])


@pytest.mark.parametrize("medium", ["shm", "tcp"])
def test_every_verb_across_two_ranks(tmp_path: Path, medium: str) -> None:
    """Each rank reads what its neighbour wrote, one-sidedly, byte for byte; stat, list and delete
    see the whole tier; a full tier raises NoSpace with one clear line and keeps every key."""
    settings = {"transports": "tcp", "net_devices": "lo"} if medium == "tcp" else {}
    rows = _mpi_script(tmp_path, 2, settings)
    for row in rows:
        assert row["chunk_ok"] and row["small_ok"] and row["stream_ok"] and row["range_ok"], row
        assert row["stat"] == 300_000 and row["empty_size"] == 0
        assert row["list"] == ["chunk/0", "chunk/1"]
        assert row["top"] == ["chunk/", "empty/", "small/", "stream/"]
        assert len(row["same_whole"]) == 1 and row["same_whole"] == rows[0]["same_whole"]
        assert row["too_small"] == "StorageError" and row["before_start"] == "StorageError"
        assert row["stat_deleted"] == "NotFound" and row["delete_deleted"] == "NotFound"
        assert row["plugins"] == {"read": ["UCX"], "write": ["UCX"]}
        assert set(row["transports"]) == {"read", "write"}, row
        used = {t for names in row["transports"].values() for t in names}
        if medium == "tcp":
            assert used == {"tcp/lo"}, used
    full = rows[0]
    # 2 ranks x 4 MiB; 256 KiB objects hashed over both: the first owner to fill says so
    assert 8 <= full["fill_stored"] < 32 and full["fill_intact"], full
    line = full["fill_error"]
    assert "\n" not in line and "nixl memory tier is full" in line and "storage.pool_bytes" in line


def _run(tmp_path: Path, name: str, *args: str, **kw: Any) -> Done:
    """storage_sweep on storage=nixl through the real CLI, in its own run directory."""
    return run_cli("run", "workload=storage_sweep", "storage=nixl", *args, f"run.dir={tmp_path / name}", **kw)


def _sweep(np: int, extra: list[str], tmp_path: Path, name: str) -> Done:
    return _run(
        tmp_path,
        name,
        "storage.pool_bytes=16777216",
        "workload.object_size=262144",
        "workload.objects_per_rank=8",
        "workload.phases=[write,read_sequential,read_random,stat,delete]",
        *extra,
        np=np,
    )


@pytest.mark.parametrize(("np", "medium"), [(2, "shm"), (4, "tcp")])
def test_storage_sweep_through_the_cli(tmp_path: Path, np: int, medium: str) -> None:
    """The real CLI under mpirun: every rank reads its neighbour's objects, every byte verified."""
    done = _sweep(np, TRANSPORTS[medium], tmp_path, f"sweep{np}")
    assert done.code == 0, done.out + done.err
    s = done.summary()
    assert s["valid"] and s["errors"] == 0 and s["ranks"] == np
    assert s["workload_config"]["verify"] and s["workload_config"]["read_shift"] == 1
    for phase in ("write", "read_sequential", "read_random", "stat", "delete"):
        assert s["phases"][phase]["ops"] == 8 * np, phase
    st = s["storage"]
    assert st["backend"] == "nixl" and st["medium"] == "memory"
    assert st["nixl_plugins"] == {"read": ["UCX"], "write": ["UCX"]}
    assert st["rdma"] is False and st["registrations"] >= np and st["registration_seconds"] > 0
    assert set(st["ucx_transports"]) == {"read", "write"}, st
    used = {t for names in st["ucx_transports"].values() for t in names}
    assert used and not any(is_rdma(t) for t in used)
    if medium == "tcp":
        assert used == {"tcp/lo"}


def test_require_rdma_without_rdma_makes_the_run_invalid(tmp_path: Path) -> None:
    done = _sweep(2, ["storage.require_rdma=true"], tmp_path, "rdma")
    assert done.code == 1, done.out + done.err
    s = done.summary()
    assert not s["valid"] and s["errors"] == 0
    why = [r for r in s["invalid_reasons"] if "require_rdma" in r]
    assert len(why) == 1 and "no RDMA transport carried the transfers" in why[0], s["invalid_reasons"]
    assert "valid: False" in done.out and "require_rdma" in done.out


def test_a_full_tier_is_counted_as_no_space(tmp_path: Path) -> None:
    """The tier fills during the write phase: each failed put is counted under no_space, the
    console says so in one line and the run is invalid (that nothing stored before is lost:
    test_every_verb_across_two_ranks)."""
    done = _run(
        tmp_path,
        "full",
        "storage.pool_bytes=2097152",
        "workload.object_size=262144",
        "workload.objects_per_rank=12",
        "workload.phases=[write]",
        "run.preflight=false",
        np=2,
    )
    assert done.code == 1, done.out + done.err
    s = done.summary()
    w = s["phases"]["write"]
    assert w["error_kinds"].get("no_space", 0) > 0 and w["ops"] > 0
    assert w["ops"] + w["errors"] == 24
    lines = [ln for ln in done.out.splitlines() if ln.startswith("no space left on device:")]
    assert len(lines) == 1 and "nixl memory tier" in lines[0], done.out
    # where the data is: the ranks' own memory, gone with them (not "left" anywhere)
    assert "its contents are lost when the ranks exit" in lines[0], lines[0]
    assert "Traceback" not in done.err


def test_one_process_exits_with_its_own_code(tmp_path: Path) -> None:
    """Without mpirun (no MPI in the process) a UCX agent crashed the exit (rc 139, in UCX's ib
    module): the backend turns that module off on a host without InfiniBand, so a valid run exits
    0 and bad input found after the agent exists (the preflight check) exits 2."""
    plain = _run(
        tmp_path,
        "plain",
        "storage.pool_bytes=8388608",
        "workload.object_size=65536",
        "workload.objects_per_rank=4",
    )
    assert plain.code == 0, plain.out + plain.err
    assert plain.summary()["storage"]["ucx_modules"].startswith("ib module off")
    bad = _run(
        tmp_path,
        "bad",
        "storage.pool_bytes=1048576",
        "workload.object_size=65536",
        "workload.objects_per_rank=64",
    )
    assert bad.code == 2, bad.out + bad.err
    assert "the nixl memory tier" in bad.err and "storage.pool_bytes" in bad.err


def test_a_pool_larger_than_memory_is_refused_in_one_line(tmp_path: Path) -> None:
    done = _run(tmp_path, "huge", "storage.pool_bytes=100000000000000", np=2)
    assert done.code == 2, done.out + done.err
    lines = {ln for ln in done.err.splitlines() if "dlio-ext: error" in ln}
    assert len(lines) == 1 and "Traceback" not in done.err, done.err
    assert "storage.pool_bytes=100000000000000 x 2 rank(s) on this host" in lines.pop()


def test_without_nixl_the_run_says_what_to_install(tmp_path: Path) -> None:
    """A machine without NIXL: a stand-in nixl_cu12 that fails to import, first on the path."""
    fake = tmp_path / "fake_site"
    (fake / "nixl_cu12").mkdir(parents=True)
    (fake / "nixl_cu12" / "__init__.py").write_text('raise ImportError("No module named nixl_cu12")\n')
    done = _run(tmp_path, "r", env={"PYTHONPATH": f"{fake}:{ROOT}"})
    assert done.code == 2, done.out + done.err
    assert "Traceback" not in done.err
    lines = [ln for ln in done.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].endswith(INSTALL), done.err


def test_without_nixl_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nixl_agent, "_nixl", None)
    # what load_nixl sets before it tries the import: restored after the test
    for var, value in (
        ("NIXL_LOG_LEVEL", "FATAL"),
        ("UCX_MODULES", "^ib"),
        ("UCX_PROTO_INFO", "y"),
        ("UCX_LOG_FILE", "/tmp/unused"),
    ):
        monkeypatch.setenv(var, os.environ.get(var, value))
    monkeypatch.setitem(sys.modules, "nixl_cu12", None)  # import now raises ImportError
    with pytest.raises(UsageError) as err:
        open_backend({"type": "nixl"})
    assert str(err.value) == INSTALL


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"transports": ","}, "storage.transports=',' names no transport"),
        ({"medium": "disk"}, "storage.medium"),
        ({"pool_bytes": 0}, "storage.pool_bytes=0 must be > 0"),
        ({"medium": "obj"}, "storage.bucket is not set for medium=obj"),
        ({"medium": "obj", "bucket": "b", "access_key": "AKIA-x"}, "storage.secret_key is not set"),
    ],
)
def test_bad_settings_are_one_line(
    given: dict[str, object], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("DLIO_EXT_S3_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UsageError) as err:
        open_backend({"type": "nixl", **given})
    line = str(err.value)
    assert "\n" not in line and says in line and "AKIA-x" not in line


# what UCX prints with UCX_PROTO_INFO=y (lines from this machine's probes, /work/wt/notes/nixl.md)
PROTO_INFO = """\
[1795949990.169269] [vm:9144 :0]   +--------+-------------+-----------------------------------+
[1795949990.169269] [vm:9144 :0]   | rank0 self cfg#0                                         |
[1795949990.169269] [vm:9144 :0]   | remote memory write by ucp_put* from host memory to host |
[1795949990.169269] [vm:9144 :0]   +--------+-------------+-----------------------------------+
[1795949990.169269] [vm:9144 :0]   | Range  | Description |              Config               |
[1795949990.169269] [vm:9144 :0]   +--------+-------------+-----------------------------------+
[1795949990.169269] [vm:9144 :0]   | 0..inf | zero-copy   | 52% on tcp/lo and 48% on tcp/eth0 |
[1795949990.169269] [vm:9144 :0]   +--------+-------------+-----------------------------------+
[1795949990.173026] [vm:9144 :0]   | rank0 self cfg#0                                |
[1795949990.173026] [vm:9144 :0]   | active message by ucp_am_send* from host memory |
[1795949990.173026] [vm:9144 :0]   |   1..16515 | zero-copy          | tcp/mlx5_0        |
[1795949988.242604] [vm:9123 :0]   | remote memory read by ucp_get* from host memory to host |
[1795949988.242604] [vm:9123 :0]   | 0..inf | zero-copy   | cma/memory                        |
[1795949988.242604] [vm:9123 :0]   | remote memory write by ucp_put* from host memory to host |
[1795949988.242604] [vm:9123 :0]   | 0..8192 | short   | rc_mlx5/mlx5_0:1                        |
"""


def test_the_transport_report_is_read_from_ucx() -> None:
    used = transports(PROTO_INFO.splitlines())
    # the active-message table (notifications) is not a data transport
    assert used == {"write": {"tcp/lo", "tcp/eth0", "rc_mlx5/mlx5_0:1"}, "read": {"cma/memory"}}
    assert is_rdma("rc_mlx5/mlx5_0:1") and is_rdma("dc_mlx5/mlx5_1:1") and is_rdma("ud_verbs/mlx5_0:1")
    assert not any(is_rdma(t) for t in ("tcp/lo", "cma/memory", "sysv/memory", "posix/memory", "self/memory"))


def test_first_fit_allocation_merges_what_is_freed() -> None:
    ext = Extents(1024)
    a, b, c = ext.take(100), ext.take(64), ext.take(1)
    assert (a, b, c) == (0, 128, 192) and ext.free_bytes == 1024 - 256
    assert ext.take(1024) is None  # no run that long: the caller raises NoSpace, nothing moves
    ext.give(b, 64)
    ext.give(a, 100)
    assert ext.free == [(0, 192), (256, 768)]
    ext.give(c, 1)
    assert ext.free == [(0, 1024)] and ext.take(1024) == 0


class FakeNixl:
    """A NIXL agent whose notification queue we fill by hand (to inject a foreign notification and
    a peer that left), recording what it sends. The only NIXL calls the control plane makes."""

    def __init__(self, notifs: dict[str, list[bytes]], gone: set[str]):
        self.notifs, self.gone = notifs, gone
        self.sent: list[tuple[str, list[Any]]] = []

    def get_new_notifs(self) -> dict[str, list[bytes]]:
        out, self.notifs = self.notifs, {}
        return out

    def send_notif(self, peer: str, msg: bytes) -> None:
        if peer in self.gone:
            raise ConnectionError(f"fake_disconnect: {peer} left")
        self.sent.append((peer, json.loads(msg)))


class FakeAgent:
    name = "fake-r0"

    def __init__(self, nixl: FakeNixl):
        self.agent = nixl


def _fake_medium(nixl: FakeNixl) -> MemoryMedium:
    agent: Any = FakeAgent(nixl)
    ctrl = memoryview(bytearray(Layout(1).size))
    return MemoryMedium(NixlSettings(pool_bytes=1 << 20), SoloWorld(), agent, memoryview(bytearray(64)), ctrl)


def test_one_bad_notification_loses_no_other_request() -> None:
    """One poll hands over every notification that arrived. A foreign one (valid JSON, not ours) and
    an answer to a peer that has left must not drop the requests after them in the same batch (an
    unpin lost so pins its bytes for good; a lookup lost leaves its asker waiting a minute), nor
    raise out of the poll (the poller may be this rank's own thread inside an unrelated get)."""
    q = lambda rid, op, *args: json.dumps(["q", rid, op, list(args)]).encode()  # noqa: E731
    nixl = FakeNixl(
        {
            "gone": [q(1, "grant", 0, 100, [])],
            "other": [b"7", b'{"x": 1}', b"[]", q(2, "grant", 0, 100, []), q(3, "lookup", "k", True)],
            "third": [q(4, "commit", "k", 0, 100, 1.0)],
        },
        gone={"gone"},
    )
    m = _fake_medium(nixl)
    assert m._pump()  # raises nothing
    answered = {(peer, msg[1]) for peer, msg in nixl.sent}
    assert answered == {("other", 2), ("other", 3), ("third", 4)}, nixl.sent
    assert m.serve_error and "gone" in m.serve_error


# rank 0 overwrites and deletes one key as fast as it can, in a pool so small that freed bytes are
# handed out again soon; rank 1 reads that key meanwhile. Every read must be one whole version
# (or NotFound): a read that raced an overwrite or delete must never see bytes of the next put.
RACE = textwrap.dedent(
    """
    import json, sys, time
    from dlio_ext.storage import open_backend
    from dlio_ext.storage.base import NotFound
    from dlio_ext.world import get_world

    world = get_world()
    r = world.rank
    b = open_backend({"type": "nixl", "pool_bytes": 2 << 20, **json.loads(sys.argv[1])}, sys.argv[2])
    # 8 of them fill the pool (first fit): every put reuses bytes some earlier version had; room
    # for the live version, the one being written, the one the reader pins, and the gaps
    N = 256 << 10
    key = next(f"race/{i}" for i in range(100) if b.home(f"race/{i}") == 0)

    def version(i):
        # sizes differ from one version to the next: bytes of a later put read under an earlier
        # version's lookup show, even when that put landed whole before the read
        return i.to_bytes(8, "little") + bytes([i % 251]) * (N - 8 - 64 * (i % 3))

    b.put(key, version(0))
    world.barrier()
    out = {"rank": r}
    if r == 0:
        i, deadline = 0, time.monotonic() + 120
        while time.monotonic() < deadline:
            i += 1
            if i % 7 == 0:
                b.delete(key)
            b.put(key, version(i))
            if i % 16 == 0:
                try:
                    b.stat("race/done")
                    break
                except NotFound:
                    pass
        out["puts"] = i
    else:
        buf = b.alloc(N)
        whole, missing, torn = 0, 0, []
        for _ in range(1000):
            try:
                n = b.get(key, buf)
            except NotFound:
                missing += 1
                continue
            i = int.from_bytes(buf[:8], "little")
            if bytes(buf[:n]) == version(i):
                whole += 1
            else:
                torn.append(i)
        b.put("race/done", b"")
        out.update(whole=whole, missing=missing, torn=torn[:5], torn_count=len(torn))
    world.barrier()
    b.close()
    print("RESULT " + json.dumps(out), flush=True)
    """
)


def test_a_read_racing_overwrites_and_deletes_gets_one_whole_version(tmp_path: Path) -> None:
    rows = _mpi_script(tmp_path, 2, {}, RACE)
    writer, reader = rows
    assert reader["torn_count"] == 0, rows
    assert reader["whole"] + reader["missing"] == 1000 and reader["whole"] > 0, rows
    assert writer["puts"] > 1, rows


def test_kv_cache_on_the_memory_tier_reads_across_ranks(tmp_path: Path) -> None:
    """kv_cache with the nixl memory tier as its shared storage tier (issue #12 item 3's base
    case): chunks one rank stored are loaded by the other, one-sidedly, every byte verified."""
    done = run_cli(
        "run",
        *KV_SMALL,
        "storage=nixl",
        "storage.pool_bytes=67108864",
        f"run.dir={tmp_path / 'kv'}",
        np=2,
    )
    assert done.code == 0, done.out + done.err
    s = done.summary()
    k = s["kv_cache"]
    assert s["valid"] and s["errors"] == 0
    assert k["integrity"]["corrupt"] == 0 and k["integrity"]["chunks_verified"] > 0
    assert k["cross_rank_reads"] > 0, k
    st = s["storage"]
    assert st["backend"] == "nixl" and st["medium"] == "memory" and st["nixl_plugins"]["read"] == ["UCX"]


# puts place their bytes themselves and leave a commit record; gets of a key seen before read it
# one-sidedly and check its bucket's stamp. Everything a rank can see of that, under real ranks:
# keys read by ranks that never saw them, an overwrite and a delete by another rank seen by readers
# that remembered the old place, no request per cached get or per small put, a writer's ring of
# records wrapping, a key too long for a record, a full tier, and room again after deletes.
TIER = textwrap.dedent(
    """
    import json, sys
    from dlio_ext.storage import open_backend
    from dlio_ext.storage.base import NoSpace, NotFound
    from dlio_ext.storage.nixl.memory import Layout
    from dlio_ext.world import get_world

    world = get_world()
    r, n = world.rank, world.size
    b = open_backend({"type": "nixl", "pool_bytes": 4 << 20, **json.loads(sys.argv[1])}, sys.argv[2])
    m = b.medium
    out = {"rank": r}

    def body(tag, size):
        return bytes((tag * 7 + i) % 251 for i in range(size))

    def owned_by(rank, stem, avoid=None):
        for i in range(100_000):
            k = f"{stem}/{i}"
            if b.home(k) == rank and (avoid is None or Layout.bucket(k) != Layout.bucket(avoid)):
                yield k

    # 1. every rank reads what every other rank wrote, never having seen the key
    b.put(f"own/{r}", body(r, 5000 + r))
    world.barrier()
    ok = True
    for q in range(n):
        buf = bytearray(5000 + q)
        ok &= b.get(f"own/{q}", memoryview(buf)) == len(buf) and bytes(buf) == body(q, 5000 + q)
    out["read_all"] = ok

    # 2. readers remember where "hot" is; another rank overwrites it, then a third deletes it
    hot = next(owned_by(n - 1, "hot"))
    if r == 0:
        b.put(hot, body(1, 3000))
    world.barrier()
    buf = bytearray(8000)
    out["first"] = b.get(hot, memoryview(buf)) == 3000 and bytes(buf[:3000]) == body(1, 3000)
    out["first_again"] = b.get(hot, memoryview(buf)) == 3000 and bytes(buf[:3000]) == body(1, 3000)
    world.barrier()
    if r == 1:
        b.put(hot, body(2, 7000))
    world.barrier()
    out["overwritten"] = b.get(hot, memoryview(buf)) == 7000 and bytes(buf[:7000]) == body(2, 7000)
    out["stat_after_overwrite"] = b.stat(hot).size
    world.barrier()
    if r == n - 1:
        b.delete(hot)
    world.barrier()
    seen = []
    for verb in ("get", "get_range", "stat"):
        try:
            if verb == "get":
                b.get(hot, memoryview(buf))
            elif verb == "get_range":
                b.get_range(hot, 10, memoryview(buf))
            else:
                b.stat(hot)
            seen.append("found")
        except NotFound:
            seen.append("NotFound")
    out["after_delete"] = seen
    world.barrier()

    # 3. cached gets and small puts ask the owner nothing (one grant at most for the puts)
    cached = next(owned_by(1, "cached"))
    if r == 0:
        b.put(cached, body(3, 4096))
        into = b.alloc(4096)
        b.get(cached, into)
    world.barrier()
    before = world.allgather(m.shard.served)
    if r == 0:
        keys = owned_by(1, "quiet", avoid=cached)
        for i in range(50):
            b.get(cached, into)
            b.put(next(keys), body(i, 1000))
        out["cached_ok"] = bytes(into) == body(3, 4096)
    world.barrier()
    after = world.allgather(m.shard.served)
    out["owner_requests"] = after[1] - before[1]
    out["nudge"] = m._nudge().decode()  # decided by now, from what UCX reported
    world.barrier()

    # 4. more records than a ring holds, a key too long for a record: all there, list exact
    if r == 0:
        for i, k in zip(range(m.layout.ring * 2 + 10), owned_by(1, "many")):
            b.put(k, body(i, 100))
        b.put("long/" + "x" * 400, body(9, 100))
    world.barrier()
    out["many"] = len(list(b.list("many/")))
    out["ring"] = m.layout.ring
    buf = bytearray(100)
    out["long_ok"] = b.get("long/" + "x" * 400, memoryview(buf)) == 100 and bytes(buf) == body(9, 100)
    world.barrier()
    for k in list(b.list("many/")) if r == 0 else []:
        b.delete(k)
    world.barrier()

    # 5. rank 0 fills rank 1's pool: NoSpace, nothing stored is lost (read by the last rank,
    # which never saw the keys); after deletes the same put fits again
    fill = list(zip(range(200), owned_by(1, "fill")))
    if r == 0:
        stored, full = [], None
        for i, k in fill:
            try:
                b.put(k, body(i, 64 << 10))
                stored.append(i)
            except NoSpace as exc:
                full = str(exc)
                break
        out["fill_stored"], out["fill_error"] = len(stored), full
    stored = world.allgather(out.get("fill_stored"))[0]
    world.barrier()
    if r == n - 1:
        ok = True
        back = bytearray(64 << 10)
        for i, k in fill[:stored]:
            ok &= b.get(k, memoryview(back)) == len(back) and bytes(back) == body(i, 64 << 10)
        out["fill_intact"] = ok
    world.barrier()
    if r == 0:
        for i, k in fill[:stored]:
            b.delete(k)
        b.put(fill[stored][1], body(0, 64 << 10))  # the put that did not fit now does
        out["room_again"] = True
    world.barrier()
    b.close()
    print("RESULT " + json.dumps(out), flush=True)
    """
)


@pytest.mark.parametrize(("np", "medium"), [(2, "shm"), (4, "shm"), (2, "tcp")])
def test_the_tier_is_exact_without_asking_the_owner(tmp_path: Path, np: int, medium: str) -> None:
    rows = _mpi_script(
        tmp_path, np, {"transports": "tcp", "net_devices": "lo"} if medium == "tcp" else {}, TIER
    )
    for row in rows:
        assert row["read_all"] and row["first"] and row["first_again"], row
        assert row["overwritten"] and row["stat_after_overwrite"] == 7000, row
        assert row["after_delete"] == ["NotFound", "NotFound", "NotFound"], row
        assert row["many"] == row["ring"] * 2 + 10 and row["long_ok"], row
    writer, reader = rows[0], rows[-1]
    assert writer["cached_ok"], writer
    # over tcp a one-sided transfer waits for the owner's UCX progress: each op nudges the owner's
    # control thread to keep polling; over shared memory (cma) nothing is sent
    assert writer["nudge"] == ("~" if medium == "tcp" else ""), writer
    # 50 gets of a cached key and 50 small puts: at most one request (a grant) reached the owner
    assert writer["owner_requests"] <= 1, rows
    # rank 1's 4 MiB pool, 64 KiB objects: most of it fills before the put that does not fit
    assert 40 <= writer["fill_stored"] < 64, writer
    line = writer["fill_error"]
    assert "\n" not in line and "nixl memory tier is full" in line and "storage.pool_bytes" in line
    assert reader["fill_intact"] and writer["room_again"], rows


def _record(shard: Shard, writer: int, seq: int, key: str, off: int, size: int, mtime: float) -> int:
    """Write a commit record as a writer's WRITE leaves it in the owner's ring; returns its offset."""
    raw = key.encode()
    head = RECORD.pack(seq + 1, off, size, mtime, len(raw), 0)[:-4]
    crc = zlib.crc32(raw, zlib.crc32(head))
    at = shard.layout.slot(writer, seq)
    shard.ctrl[at : at + RECORD.size + len(raw)] = head + crc.to_bytes(4, "little") + raw
    return at


def test_records_apply_in_order_whole_and_the_later_put_wins() -> None:
    """The owner applies a ring's records in order, leaves a record it finds half written (bad
    crc) and everything after it for the next drain, restamps the key's bucket before any change,
    and of two puts of one key keeps the later (the earlier one's bytes are freed)."""
    shard = Shard(1 << 20, 0, 2, memoryview(bytearray(Layout(2).size)))
    a, b = shard.extents.take(4096), shard.extents.take(4096)
    stamp0 = shard.stamp("k")
    at = _record(shard, 1, 0, "k", b, 4096, 200.0)
    _record(shard, 1, 1, "j", a, 100, 150.0)
    shard.ctrl[at + RECORD.size] ^= 0xFF  # the key's first byte not there yet
    shard.drain()
    assert shard.keys == {} and shard.applied[1] == 0 and shard.stamp("k") == stamp0
    shard.ctrl[at + RECORD.size] ^= 0xFF
    shard.drain()
    assert shard.applied[1] == 2 and shard.keys["k"].offset == b and shard.keys["j"].size == 100
    stamp1 = shard.stamp("k")
    assert stamp1 != stamp0
    c = shard.extents.take(4096)
    free = shard.extents.free_bytes
    _record(shard, 1, 2, "k", c, 4096, 100.0)  # an earlier put of "k" that landed late
    shard.drain()
    assert shard.keys["k"].offset == b and shard.extents.free_bytes == free + 4096
    assert shard.stamp("k") != stamp1  # restamped all the same: readers re-ask, never misread


# a writer told the object's size writes each chunk straight to its place: what a checkpoint
# burst through the tier-0 does. Keys owned by this rank and by the other are both used.
SIZED = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from dlio_ext.storage import open_backend
    from dlio_ext.storage.base import NotFound, StorageError
    from dlio_ext.world import get_world

    world = get_world()
    r, n = world.rank, world.size
    b = open_backend({"type": "nixl", "pool_bytes": 8 << 20, **json.loads(sys.argv[1])}, sys.argv[2])
    out = {"rank": r, "owners": []}
    peer = (r + 1) % n

    def body(seed, size):
        return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()

    chunk = b.alloc(70_000)  # registered: each chunk is one WRITE, no staging
    keys = [f"placed/{r}/{i}" for i in range(4)]
    out["owners"] = [b.home(k) for k in keys]
    writers = [b.sized_writer(k, 3 * 70_000) for k in keys]
    for i, w in enumerate(writers):
        for c in range(3):
            chunk[:] = body(r * 100 + i * 10 + c, 70_000)
            w.write(chunk)  # the buffer is ours again once write returns: restamp it
    world.barrier()
    # written but not closed: no rank finds the keys yet (a reader never sees half an object)
    hidden = 0
    for i in range(4):
        try:
            b.stat(f"placed/{peer}/{i}")
        except NotFound:
            hidden += 1
    out["hidden_before_close"] = hidden
    world.barrier()
    for w in writers:
        w.close()
    world.barrier()
    ok = []
    for i in range(4):
        got = bytearray(3 * 70_000)
        want = b"".join(body(peer * 100 + i * 10 + c, 70_000) for c in range(3))
        ok.append(b.get(f"placed/{peer}/{i}", memoryview(got)) == len(want) and bytes(got) == want)
    out["peer_read_ok"] = ok
    # a write past the size, and a close short of it, fail; neither leaves a key
    w = b.sized_writer(f"over/{r}", 100)
    try:
        w.write(b"x" * 101)
        out["over"] = "no error"
    except StorageError as exc:
        out["over"] = str(exc)
        w.abort()
    w = b.sized_writer(f"short/{r}", 100)
    w.write(b"x" * 50)
    try:
        w.close()
        out["short"] = "no error"
    except StorageError as exc:
        out["short"] = str(exc)
    out["left"] = sorted(b.list("over/")) + sorted(b.list("short/"))
    world.barrier()
    # an aborted writer gives its room back: rank 0 alone aborts a 3 MiB writer, then puts and
    # deletes 3 MiB, three times, in one 8 MiB pool (a leak would fill it by the third)
    again = 0
    if r == 0:
        try:
            for _ in range(3):
                w = b.sized_writer("big", 3 << 20)
                w.abort()
                b.put("big", body(7, 3 << 20))
                b.delete("big")
                again += 1
        except StorageError as exc:  # said, not raised: the other rank waits at the barrier
            out["room_error"] = str(exc)
    out["room_back"] = again
    world.barrier()
    b.close()
    print("RESULT " + json.dumps(out), flush=True)
    """
)


def test_a_sized_writer_places_the_object_and_commits_it_whole(tmp_path: Path) -> None:
    rows = _mpi_script(tmp_path, 2, {}, SIZED)
    owners = {o for row in rows for o in row["owners"]}
    assert owners == {0, 1}, owners  # keys this rank owns and keys the other owns
    for row in rows:
        assert row["hidden_before_close"] == 4, row
        assert row["peer_read_ok"] == [True] * 4, row
        assert "101 bytes written to a writer opened for 100" in row["over"], row
        assert "closed after 50 of the 100 bytes" in row["short"], row
        assert row["left"] == [] and row["room_back"] == (3 if row["rank"] == 0 else 0), row
