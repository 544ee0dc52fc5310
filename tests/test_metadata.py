"""The metadata workload: 1, 2 and 4 ranks under the real mpirun, on posix and a real SeaweedFS.

Counts must be exact, listings must hold exactly the expected names (over 1,000 keys, so S3
paginates), the stonewall must catch every rank up to the same count, S3 must report what it
emulates and what it cannot do, and errors must be counted and invalidate the run. The only
fakes inject faults (`Vanishing...`, `ShortListing...`) in front of a real backend.
"""

from __future__ import annotations

import json
import logging
import random
import struct
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import pytest
from conftest import unique_prefix
from helpers import run_cli

from dlio_ext.metrics.histogram import Histogram
from dlio_ext.run import harness
from dlio_ext.s3server import ServerInfo, server_env
from dlio_ext.storage.base import NotFound
from dlio_ext.workloads import metadata
from dlio_ext.workloads.metadata import PHASES, Config
from dlio_ext.workloads.phases import PhaseRunner, per_op
from dlio_ext.world import SoloWorld

FILE_PHASES = [p for p in PHASES if not p.startswith(("dir_", "tree_"))]
DIR_PHASES = [p for p in PHASES if p.startswith(("dir_", "tree_"))]


def run_md(tmp_path: Path, *overrides: str, np: int | None = None, env: dict[str, str] | None = None) -> dict:
    d = run_cli(
        "run", *overrides, f"run.results_dir={tmp_path}/results", "run.progress_interval=0", np=np, env=env
    )
    assert d.code == 0, d.out + d.err
    s = d.summary()
    s["_run_dir"] = str(d.results)
    return s


def s3_args(server: ServerInfo, prefix: str, client: str = "obstore") -> tuple[list[str], dict[str, str]]:
    args = [
        "storage=s3",
        f"storage.client={client}",
        f"storage.endpoint={server.endpoint}",
        f"storage.bucket={server.bucket}",
        f"storage.prefix={prefix}",
        "storage.retries=2",
    ]
    return args, server_env(server)


def check_exact(
    s: dict, ranks: int, items: int, phases: list[str], leaves: int = 1, shared: bool = False
) -> None:
    """Every phase that ran did exactly its items, without errors; listings are exact."""
    assert s["valid"] is True, s["invalid_reasons"]
    assert s["errors"] == 0
    m = s["metadata"]
    assert m["ranks"] == ranks
    for name in phases:
        q = m["phases"][name]
        if q["support"] == "unsupported":
            continue
        assert q["errors"] == 0, name
        if name in ("tree_create", "tree_remove"):
            assert q["items"] == (_tree_dirs(m) if shared else ranks * _tree_dirs(m)), name
        elif name == "list_storm":
            # every rank lists everything, storm_repeats times
            reps = s["workload_config"]["storm_repeats"]
            assert q["listings"] == ranks * reps
            assert q["items"] == ranks * reps * ranks * items, name
        elif name in ("file_list", "dir_list"):
            assert q["listings"] == ranks * leaves, name  # each rank lists every leaf once
            # unique: each rank lists its neighbour's items; shared: every rank lists all of them
            assert q["items"] == (ranks * ranks * items if shared else ranks * items), name
        else:
            assert q["items"] == ranks * items, name
            if not (name == "file_remove" and s["workload_config"]["delete_batch"]):
                assert s["phases"][name]["ops"] == ranks * items, name
        assert q["rate"] > 0 and q["seconds"] > 0, name
        rr = q["rank_rates"]
        assert 0 < rr["min"] <= rr["mean"] <= rr["max"], name
        # the aggregate rate is items over the slowest rank's time
        assert q["rate"] == pytest.approx(q["items"] / q["seconds"], rel=1e-3)
        # ... measured from the barrier every rank left together, so never shorter than any rank's span
        assert q["seconds"] >= s["phases"][name]["rank_seconds"]["max"] - 1e-6, name
        lat = q["latency_us"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"], name
    assert m["geomean"]["rate"] > 0


def _tree_dirs(m: dict) -> int:
    return m["tree"]["dirs_per_tree"]


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"phases": ["file_create", "file_delete"]}, "unknown"),
        ({"phases": ["file_stat"]}, "file_stat needs file_create"),
        ({"phases": ["file_create", "tree_remove"]}, "tree_remove needs file_remove"),
        ({"write_bytes": 10, "read_bytes": 11}, "read_bytes=11 is more than write_bytes=10"),
        ({"delete_batch": 1001}, "at most 1,000"),
        ({"placement": "everywhere"}, "placement"),
        ({"depth": 12, "branching": 10}, "more than 1,000,000 directories"),
        ({"items_per_rank": 0}, "items_per_rank=0"),
    ],
)
def test_config_rejects_with_one_line(changes: dict[str, Any], words: str) -> None:
    problem = Config(**changes).validate()
    assert problem and words in problem and "\n" not in problem


def test_bad_key_through_cli_is_one_line(tmp_path: Path) -> None:
    d = run_cli("run", "workload=metadata/easy", "workload.phases=[file_stat]", f"run.results_dir={tmp_path}")
    assert d.code == 2
    assert d.err.strip().count("\n") == 0 and "file_stat needs file_create" in d.err


# --- the stonewall in the phase runner (in process) ------------------------------------------


@pytest.mark.parametrize(("io_depth", "chunk"), [(1, 1), (4, 1), (1, 16), (3, 16)])
def test_deadline_leaves_a_prefix_and_catch_up_reaches_it(io_depth: int, chunk: int) -> None:
    done: list[int] = []
    lock = threading.Lock()

    def op(i: int, _s: Any) -> int:
        time.sleep(0.002 if chunk == 1 else 0.0005)
        with lock:
            done.append(i)
        return 1

    res = PhaseRunner(SoloWorld(), 0).run_chunks(
        "c", 100_000, per_op(op), chunk, io_depth, deadline_s=0.1, catch_up=True
    )
    k = res.extra["stonewall_items"]
    assert 0 < k < 100_000 and k % chunk == 0, "a chunk taken is a chunk run"
    assert sorted(done) == list(range(k)), "an index taken must be an index run"
    assert res.ops == res.bytes == k
    assert res.extra["stonewalled"] is True and res.extra["stonewall_target"] == k
    assert res.extra["wearout_items"] == 0  # one rank: it is its own maximum
    assert 0.1 <= res.extra["stonewall_seconds"] < 5


def test_batched_latency_binning_equals_record() -> None:
    """The runner bins latencies in batches with numpy: exactly Histogram.record's buckets."""
    rng = random.Random(7)
    xs = [rng.lognormvariate(-10, 3) for _ in range(20_000)] + [0.0, 1e-9, 1e-6, 2e-6, 3e8]
    one = Histogram()
    for x in xs:
        one.record(x)
    batch = Histogram()
    batch.record_many(array("d", xs[:7]))
    batch.record_many(array("d", xs[7:]))
    assert batch.counts == one.counts and batch.n == one.n
    assert (batch.min_us, batch.max_us) == (one.min_us, one.max_us)
    assert batch.total_us == pytest.approx(one.total_us, rel=1e-12)


def test_deadline_not_hit_does_everything() -> None:
    res = PhaseRunner(SoloWorld(), 0).run("c", 50, lambda i, s: 0, 2, deadline_s=30, catch_up=True)
    assert res.ops == 50 and res.extra["stonewalled"] is False and res.extra["stonewall_items"] == 50


# --- posix through the CLI --------------------------------------------------------------------


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_posix_every_phase_exact_counts(tmp_path: Path, ranks: int) -> None:
    """Every phase on a tree (depth 1, branching 2), random order, then nothing is left behind."""
    n = 40
    s = run_md(
        tmp_path,
        "workload=metadata/full",
        "storage=posix",
        f"workload.items_per_rank={n}",
        "workload.depth=1",
        "workload.branching=2",
        "workload.storm_repeats=2",
        np=ranks if ranks > 1 else None,
    )
    assert list(s["phases"]) == list(PHASES)
    check_exact(s, ranks, n, list(PHASES), leaves=2)
    m = s["metadata"]
    assert m["unsupported"] == [] and m["emulated"] == []
    assert m["target_ranks"] == [(r + 1) % ranks for r in range(ranks)]
    assert m["tree"] == {"depth": 1, "branching": 2, "dirs_per_tree": 3, "leaves": 2}
    # every file was read and verified (stamp = writer rank and index) from the neighbour's tree
    assert s["phases"]["file_read"]["bytes"] == ranks * n * 3901
    data = Path(s["_run_dir"]) / "data"
    assert files_under(data) == [], "file_remove must remove every file"
    assert not [p for p in data.rglob("r*") if p.is_dir()], "tree_remove must remove every tree"


def test_posix_shared_dir_4_ranks_lists_over_1000_names(tmp_path: Path) -> None:
    """mdtest-hard-like: 4 ranks x 300 files of 3,901 bytes in one directory; left on disk."""
    ranks, n = 4, 300
    s = run_md(
        tmp_path,
        "workload=metadata/hard",
        "storage=posix",
        f"workload.items_per_rank={n}",
        "workload.phases=[file_create,file_stat,file_read,file_list,list_storm]",
        "workload.storm_repeats=1",
        np=ranks,
    )
    check_exact(
        s, ranks, n, ["file_create", "file_stat", "file_read", "file_list", "list_storm"], shared=True
    )
    files = files_under(Path(s["_run_dir"]) / "data")
    assert len(files) == ranks * n > 1000
    assert {f.parent for f in files} == {files[0].parent}, "one shared directory"
    names = {f.name for f in files}
    assert names == {f"f.{r}.{i}" for r in range(ranks) for i in range(n)}
    for f in files[:50]:
        raw = f.read_bytes()
        r, i = (int(x) for x in f.name.split(".")[1:])
        assert len(raw) == 3901 and struct.unpack_from("<QQ", raw) == (r, i)


def test_posix_stonewall_catch_up(tmp_path: Path) -> None:
    """Ranks stop at the deadline with different counts, then all continue to the highest one;
    the later phases work on exactly the items created."""
    ranks = 2
    s = run_md(
        tmp_path,
        "workload=metadata/easy",
        "storage=posix",
        "workload.items_per_rank=10000000",
        "workload.stonewall_s=0.4",
        "workload.phases=[file_create,file_stat,file_list]",
        np=ranks,
    )
    assert s["valid"] is True and s["errors"] == 0, s["invalid_reasons"]
    q = s["metadata"]["phases"]["file_create"]
    sw = q["stonewall"]
    after = sw["items_per_rank_after"]
    assert sw["hit"] and sw["stonewalled"] and 0 < after < 10_000_000
    assert sw["items_per_rank"]["max"] == after  # the highest count reached is the one agreed
    assert q["items"] == ranks * after == sw["items"] + sw["wearout_items"]
    assert sw["seconds"] >= 0.4 and sw["rate"] == pytest.approx(sw["items"] / sw["seconds"], rel=1e-3)
    per_rank = [json.loads((Path(s["_run_dir"]) / f"rank-{r:05d}.json").read_text()) for r in range(ranks)]
    assert [p["phases"]["file_create"]["ops"] for p in per_rank] == [after] * ranks
    assert s["phases"]["file_create"]["extra"]["stonewalled"] is True
    for later in ("file_stat", "file_list"):
        assert s["metadata"]["phases"][later]["items"] == ranks * after
    assert len(files_under(Path(s["_run_dir"]) / "data")) == ranks * after


# --- S3 (SeaweedFS) through the CLI ----------------------------------------------------------


@pytest.mark.parametrize("ranks, client", [(1, "obstore"), (2, "boto3"), (4, "obstore")])
def test_s3_every_phase(
    tmp_path: Path, s3_server: ServerInfo, s3_admin: Any, ranks: int, client: str
) -> None:
    """Files phases exact; rename reported emulated; directories reported unsupported; batch delete."""
    n = 30
    prefix = unique_prefix("md")
    args, env = s3_args(s3_server, prefix, client)
    s = run_md(
        tmp_path,
        "workload=metadata/full",
        *args,
        f"workload.items_per_rank={n}",
        "workload.depth=1",
        "workload.branching=2",
        "workload.io_depth=4",
        "workload.delete_batch=7",
        "workload.storm_repeats=2",
        np=ranks if ranks > 1 else None,
        env=env,
    )
    assert list(s["phases"]) == FILE_PHASES
    check_exact(s, ranks, n, FILE_PHASES, leaves=2)
    m = s["metadata"]
    assert m["unsupported"] == DIR_PHASES
    assert "no directories" in m["phases"]["dir_create"]["reason"]
    assert m["emulated"] == ["file_rename"] and m["phases"]["file_rename"]["support"] == "emulated"
    # file_remove went in DeleteObjects batches of 7 keys: ceil(n / 7) calls per rank
    assert s["phases"]["file_remove"]["ops"] == ranks * -(-n // 7)
    assert m["phases"]["file_remove"]["support"] == "native"
    left = s3_admin.list_objects_v2(Bucket=s3_server.bucket, Prefix=f"{prefix}/")
    assert left.get("KeyCount", 0) == 0


def test_s3_shared_prefix_4_ranks_lists_over_1000_keys(
    tmp_path: Path, s3_server: ServerInfo, s3_admin: Any
) -> None:
    """4 ranks x 300 objects of 3,901 bytes under one prefix: listings page past 1,000 keys."""
    ranks, n = 4, 300
    prefix = unique_prefix("md")
    args, env = s3_args(s3_server, prefix)
    s = run_md(
        tmp_path,
        "workload=metadata/hard",
        *args,
        f"workload.items_per_rank={n}",
        "workload.io_depth=4",
        "workload.phases=[file_create,file_stat,file_read,file_list,list_storm]",
        "workload.storm_repeats=1",
        np=ranks,
        env=env,
    )
    phases = ["file_create", "file_stat", "file_read", "file_list", "list_storm"]
    check_exact(s, ranks, n, phases, shared=True)
    keys = []
    for page in s3_admin.get_paginator("list_objects_v2").paginate(
        Bucket=s3_server.bucket, Prefix=f"{prefix}/"
    ):
        keys += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
    assert len(keys) == ranks * n > 1000 and {size for _, size in keys} == {3901}
    assert {k.rsplit("/", 1)[1] for k, _ in keys} == {f"f.{r}.{i}" for r in range(ranks) for i in range(n)}
    for start in range(0, len(keys), 1000):
        chunk = [{"Key": k} for k, _ in keys[start : start + 1000]]
        s3_admin.delete_objects(Bucket=s3_server.bucket, Delete={"Objects": chunk})


# --- errors are counted and invalidate the run (fault injection, in process) ---------------


def _after_create(backend: Any, hook: Any) -> Any:
    """A real backend whose bare "put" (the tight loop's create, on resolved keys: the verb the
    workload writes through) calls `hook(target)` right after each create."""
    real_bare = backend.bare

    def bare(verb: str, buf: Any = None) -> Any:
        b = real_bare(verb, buf)
        if verb != "put":
            return b

        def put(target: Any) -> int:
            n = b.call(target)
            hook(str(target))
            return n

        # the hook runs in Python, so creates take the Python loop; the other verbs stay compiled
        return b._replace(call=put, native=None)

    backend.bare = bare
    return backend


def _vanishing(backend: Any) -> Any:
    """VanishingX: a real backend that loses item 3 of rank 0 right after creating it (through
    the bare "delete" on the same target)."""
    lose = backend.bare("delete").call
    return _after_create(backend, lambda target: lose(target) if target.endswith("/f.0.3") else None)


def _short_listing(backend: Any) -> Any:
    """ShortListingX: a real backend whose listings silently drop their last name."""
    real_list = backend.list
    inside = threading.local()

    def lst(prefix: str = "", delimiter: str | None = None):
        if getattr(inside, "on", False):  # posix lists subdirectories through self.list
            return real_list(prefix, delimiter)
        inside.on = True
        try:
            names = list(real_list(prefix, delimiter))
        finally:
            inside.on = False
        return iter(names[:-1])

    backend.list = lst
    return backend


def _run_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: Any, args: list[str]) -> dict:
    real_open = harness.open_backend
    monkeypatch.setattr(harness, "open_backend", lambda cfg, run_dir=None: fault(real_open(cfg, run_dir)))
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("dlio_ext.world._world", None)
    logging.getLogger("dlio_ext").handlers.clear()
    code = harness.run([*args, f"run.results_dir={tmp_path}/results", "run.progress_interval=0"])
    (summary,) = list((tmp_path / "results").glob("*/summary.json"))
    s = json.loads(summary.read_text())
    assert code == (0 if s["valid"] else 1), "an invalid run exits 1"
    return s


@pytest.mark.parametrize("medium", ["posix", "s3"])
def test_gone_item_is_counted_and_invalidates_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, medium: str, request: pytest.FixtureRequest
) -> None:
    args = ["workload=metadata/hard", "workload.items_per_rank=10", "workload.write_bytes=100"]
    args += ["workload.read_bytes=100", "workload.phases=[file_create,file_stat,file_read,file_remove]"]
    if medium == "s3":
        server = request.getfixturevalue("s3_server")
        s3, env = s3_args(server, unique_prefix("md"))
        args += s3
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    else:
        args.append("storage=posix")
    s = _run_in_process(tmp_path, monkeypatch, _vanishing, args)
    # S3's DeleteObject of a missing key succeeds (it is idempotent): only posix's unlink can tell
    failing = ["file_stat", "file_read"] + (["file_remove"] if medium == "posix" else [])
    assert s["valid"] is False and s["errors"] == len(failing)
    assert f"{len(failing)} operation(s) failed" in s["invalid_reasons"][0]
    for phase in failing:
        p = s["phases"][phase]
        assert p["errors"] == 1 and p["error_kinds"] == {NotFound.kind: 1} and p["ops"] == 9, phase
        assert "f.0.3" in p["first_error"]
        assert s["metadata"]["phases"][phase]["errors"] == 1


def test_short_listing_is_an_error_not_a_smaller_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["workload=metadata/easy", "storage=posix", "workload.items_per_rank=20"]
    args += ["workload.phases=[file_create,file_list,list_storm]", "workload.storm_repeats=2"]
    s = _run_in_process(tmp_path, monkeypatch, _short_listing, args)
    assert s["valid"] is False
    for phase, n in (("file_list", 1), ("list_storm", 2)):
        p = s["phases"][phase]
        assert p["errors"] == n and p["ops"] == 0 and p["error_kinds"] == {"corrupt": n}, phase
        assert "19 names, expected 20 (1 missing" in p["first_error"]


def _corrupting(backend: Any) -> Any:
    """CorruptingPosix: a real posix backend that, right after creating them, flips byte 2000 of
    rank 0's item 3 and gives item 5 the head of item 6 (a file holding another item's bytes)."""

    def spoil(path: str) -> None:
        if path.endswith("/f.0.3"):
            with open(path, "r+b") as f:
                f.seek(2000)
                byte = f.read(1)
                f.seek(2000)
                f.write(bytes([byte[0] ^ 0x20]))
        elif path.endswith("/f.0.5"):
            with open(path, "r+b") as f:
                f.write(struct.pack("<QQ", 0, 6))

    return _after_create(backend, spoil)


def test_a_read_of_other_bytes_is_caught_where_they_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [
        "workload=metadata/easy",
        "storage=posix",
        "workload.items_per_rank=10",
        "workload.write_bytes=3901",
    ]
    args += ["workload.phases=[file_create,file_read,file_remove]"]
    s = _run_in_process(tmp_path, monkeypatch, _corrupting, args)
    assert s["valid"] is False and s["errors"] == 2
    p = s["phases"]["file_read"]
    assert p["errors"] == 2 and p["error_kinds"] == {"corrupt": 2} and p["ops"] == 8
    # items are read in order: item 3 (the flipped byte, at its offset) fails first
    assert p["first_error"].endswith("/f.0.3: content differs at offset 2000"), p["first_error"]
    assert s["phases"]["file_create"]["errors"] == 0 and s["phases"]["file_remove"]["ops"] == 10


def test_a_file_with_another_items_stamp_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = [
        "workload=metadata/easy",
        "storage=posix",
        "workload.items_per_rank=10",
        "workload.write_bytes=3901",
    ]
    args += ["workload.phases=[file_create,file_read]", "workload.read_bytes=16"]  # the stamp only
    s = _run_in_process(tmp_path, monkeypatch, _corrupting, args)
    p = s["phases"]["file_read"]
    assert s["valid"] is False and p["errors"] == 1 and p["error_kinds"] == {"corrupt": 1}
    assert p["first_error"].endswith(
        "/f.0.5: holds another object's stamp (0, 6), not (0, 5) (its stamp differs)"
    )


def test_keys_past_the_precompute_limit_are_formatted_per_op(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Phases too large to hold every key in memory format (and resolve) each key as they go."""
    monkeypatch.setattr(metadata, "PRECOMPUTE_MAX", 5)
    args = [
        "workload=metadata/hard",
        "storage=posix",
        "workload.items_per_rank=40",
        "workload.random_order=true",
    ]
    args += ["workload.phases=[file_create,file_stat,file_read,file_rename,file_remove]"]
    s = _run_in_process(tmp_path, monkeypatch, lambda b: b, args)
    assert s["valid"] is True and s["errors"] == 0
    for phase in ("file_create", "file_stat", "file_read", "file_rename", "file_remove"):
        assert s["phases"][phase]["ops"] == 40, phase
    assert s["phases"]["file_read"]["bytes"] == 40 * 3901


def test_io_depth_keeps_that_many_ops_in_flight_on_posix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Posix hands out items in chunks; with io_depth=4 and 100 items the chunks must still be small
    enough for four threads to have ops in flight at once (InFlightX: real stats, counted, slowed)."""
    seen = {"now": 0, "max": 0}
    lock = threading.Lock()

    def in_flight(backend: Any) -> Any:
        real_bare = backend.bare

        def bare(verb: str, buf: Any = None) -> Any:
            b = real_bare(verb, buf)
            if verb != "stat":
                return b

            def stat(target: Any) -> Any:
                with lock:
                    seen["now"] += 1
                    seen["max"] = max(seen["max"], seen["now"])
                try:
                    time.sleep(0.002)  # long enough for the other threads to be inside too
                    return b.call(target)
                finally:
                    with lock:
                        seen["now"] -= 1

            return b._replace(call=stat, native=None)  # the slowed call runs in Python

        backend.bare = bare
        return backend

    args = ["workload=metadata/easy", "storage=posix", "workload.items_per_rank=100", "workload.io_depth=4"]
    args += ["workload.phases=[file_create,file_stat,file_remove]"]
    s = _run_in_process(tmp_path, monkeypatch, in_flight, args)
    assert s["valid"] is True and s["phases"]["file_stat"]["ops"] == 100
    assert seen["max"] == 4, seen
