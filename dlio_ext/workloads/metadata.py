"""metadata: mdtest-class create/stat/read/list/rename/remove storms, on file systems and S3.

What mdtest does, with the phases it lacks, on both media through one backend interface:
- items: directories (mkdir/stat/list/rename/rmdir) and files (create with `write_bytes`, stat,
  open+read of `read_bytes` verified, list, rename, remove), in a tree of `depth` and `branching`
  per rank (`placement=unique`, mdtest -u) or one tree shared by all ranks (`placement=shared`);
- `stride` (mdtest -N): every phase after a create works on the items of rank (r + stride) % N,
  so no rank finds its own items in a client cache; `random_order` shuffles those phases;
- `stonewall_s` (mdtest -W): a create phase stops at the deadline, the ranks agree on the highest
  count any of them reached and every rank catches up to it (wear-out); later phases work on
  exactly the items created;
- the LIST storm: every rank lists the whole namespace at the same moment, and every listing is
  checked name by name (a failed LIST is an error, never an empty listing);
- what a backend cannot do is reported `unsupported` (S3 has no directories), what it emulates is
  reported `emulated` (S3 rename = copy + delete); nothing is skipped silently.

Rates follow mdtest: items over the slowest rank's time; docs/metadata.md has every definition.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from dlio_ext.storage.base import Backend, Bare, StoreGone, VerifyError
from dlio_ext.storage.native import Expect, Stamp
from dlio_ext.validate import first_problem, io_depth, one_of, positive
from dlio_ext.workloads.base import Workload, register
from dlio_ext.workloads.content import HeadStamped
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.phases import Chunk, PhaseResult, bare_loop, per_op

#: every phase, in the order a run takes them (mdtest's: directories, then files)
PHASES = (
    "tree_create",
    "dir_create",
    "dir_stat",
    "dir_list",
    "dir_rename",
    "dir_remove",
    "file_create",
    "file_stat",
    "file_read",
    "file_list",
    "list_storm",
    "file_rename",
    "file_remove",
    "tree_remove",
)
#: the backend verb each phase times
VERBS = {
    "tree_create": "mkdir",
    "dir_create": "mkdir",
    "dir_stat": "stat",
    "dir_list": "list(delimiter='/')",
    "dir_rename": "rename",
    "dir_remove": "rmdir",
    "file_create": "put",
    "file_stat": "stat",
    "file_read": "get",
    "file_list": "list",
    "list_storm": "list",
    "file_rename": "rename",
    "file_remove": "delete",
    "tree_remove": "rmdir",
}
#: phases that work on what an earlier phase created
NEEDS = {
    "dir_stat": "dir_create",
    "dir_list": "dir_create",
    "dir_rename": "dir_create",
    "dir_remove": "dir_create",
    "file_stat": "file_create",
    "file_read": "file_create",
    "file_list": "file_create",
    "list_storm": "file_create",
    "file_rename": "file_create",
    "file_remove": "file_create",
}
CREATES = ("dir_create", "file_create")
LIST_PHASES = ("dir_list", "file_list", "list_storm")
#: left out of the geometric mean: tree phases are set-up (IO500 leaves them out too); the storm
#: is a latency test whose entries/s counts every rank listing everything
NOT_IN_GEOMEAN = ("tree_create", "tree_remove", "list_storm")
MAX_BATCH = 1000  # S3 DeleteObjects takes at most 1,000 keys
MAX_TREE_DIRS = 1_000_000
PRECOMPUTE_MAX = 1 << 20  # keys per phase built before the clock; more are formatted per op


@dataclass
class Config:
    name: str = "metadata"
    # which phases run (always in the order of PHASES): tree_create, dir_create, dir_stat,
    # dir_list, dir_rename, dir_remove, file_create, file_stat, file_read, file_list,
    # list_storm, file_rename, file_remove, tree_remove
    phases: list[str] = field(
        default_factory=lambda: ["file_create", "file_stat", "file_read", "file_list", "file_remove"]
    )
    items_per_rank: int = 1000
    placement: str = "unique"
    depth: int = 0
    branching: int = 1
    write_bytes: int = 0
    read_bytes: int | None = None  # None: read what was written
    stride: int = 1
    random_order: bool = False
    iterations: int = 1
    stonewall_s: float = 0.0
    io_depth: int = 1
    list_delimiter: bool = True
    list_repeats: int = 1
    storm_repeats: int = 3
    delete_batch: int = 0
    verify: bool = True

    def validate(self) -> str | None:
        bad = [p for p in self.phases if p not in PHASES]
        missing = [f"{p} needs {NEEDS[p]}" for p in self.phases if p in NEEDS and NEEDS[p] not in self.phases]
        leftovers = [
            c.replace("create", "remove")
            for c in CREATES
            if "tree_remove" in self.phases
            and c in self.phases
            and c.replace("create", "remove") not in self.phases
        ]
        read = self.write_bytes if self.read_bytes is None else self.read_bytes
        return first_problem(
            f"phases={bad} are unknown; use any of: {', '.join(PHASES)}" if bad else None,
            "phases is empty; name at least one of: " + ", ".join(PHASES) if not self.phases else None,
            f"phases: {missing[0]} (items are named after this run, nothing else exists to work on)"
            if missing
            else None,
            f"phases: tree_remove needs {leftovers[0]} (a directory that still holds items cannot be removed)"
            if leftovers
            else None,
            positive("items_per_rank", self.items_per_rank),
            one_of("placement", self.placement, ("unique", "shared")),
            positive("depth", self.depth, allow_zero=True),
            positive("branching", self.branching),
            f"depth={self.depth}, branching={self.branching} make more than {MAX_TREE_DIRS:,} directories "
            "per tree; lower them"
            if _tree_size(self.depth, self.branching) > MAX_TREE_DIRS
            else None,
            positive("write_bytes", self.write_bytes, allow_zero=True),
            positive("read_bytes", read, allow_zero=True),
            f"read_bytes={read} is more than write_bytes={self.write_bytes}; a read is verified against "
            "what was written"
            if read > self.write_bytes
            else None,
            positive("stride", self.stride, allow_zero=True),
            positive("iterations", self.iterations),
            positive("stonewall_s", self.stonewall_s, allow_zero=True),
            io_depth("io_depth", self.io_depth),
            positive("list_repeats", self.list_repeats),
            positive("storm_repeats", self.storm_repeats),
            f"delete_batch={self.delete_batch} must be 0 (one delete per item) or 1..{MAX_BATCH} "
            "(keys per delete_many; S3 DeleteObjects takes at most 1,000)"
            if not 0 <= self.delete_batch <= MAX_BATCH
            else None,
        )

    @property
    def read_size(self) -> int:
        return self.write_bytes if self.read_bytes is None else self.read_bytes


def _tree_size(depth: int, branching: int) -> int:
    return depth + 1 if branching == 1 else (branching ** (depth + 1) - 1) // (branching - 1)


def _tree_paths(depth: int, branching: int) -> tuple[list[str], list[str]]:
    """Every directory of one tree below its root, parents before children, and its leaves."""
    level = [""]
    nodes: list[str] = []
    for _ in range(depth):
        level = [f"{p}/t{j}" if p else f"t{j}" for p in level for j in range(branching)]
        nodes.extend(level)
    return nodes, level


def support(phase: str, backend: Backend, cfg: Config) -> tuple[str, str]:
    """(native | emulated | unsupported, why) for one phase on one backend, from its capabilities."""
    caps = backend.capabilities
    if phase.startswith(("dir_", "tree_")):
        mkdir = caps.get("mkdir", "unsupported")
        if mkdir != "native":
            return "unsupported", (
                f"{backend.name} has no directories (mkdir is {mkdir}: a prefix exists only through the "
                "keys under it), so there is none to create, stat, list, rename or remove"
            )
    if phase in ("dir_rename", "file_rename"):
        how = caps.get("rename", "unsupported")
        if how == "unsupported":
            return how, f"{backend.name} cannot rename"
        if how == "emulated":
            return how, f"{backend.name} has no rename; it copies, then deletes the source (not atomic)"
        return how, ""
    if phase in LIST_PHASES:
        how = caps.get("list", "native")
        return how, "" if how == "native" else f"{backend.name} lists by {how} means"
    if phase == "file_remove" and cfg.delete_batch:
        how = caps.get("delete_many") or (
            "native" if type(backend).delete_many is not Backend.delete_many else "emulated"
        )
        return how, "" if how == "native" else f"{backend.name} deletes a batch one key at a time"
    return "native", ""


def phase_label(phase: str, it: int, iterations: int) -> str:
    return phase if iterations == 1 else f"{phase}@{it + 1}"


# --------------------------------------------------------------------------------------------
# the namespace


class _LazyKeys:
    """Keys formatted on demand, for phases too large to hold every key in memory."""

    __slots__ = ("make", "order")

    def __init__(self, make: Callable[[int], str], order: Sequence[int] | None):
        self.make, self.order = make, order

    def __getitem__(self, i: int) -> str:
        return self.make(self.order[i] if self.order is not None else i)


class _Namespace:
    """Where every item of one iteration lives; names depend only on (rank, index)."""

    def __init__(self, ctx: Context, cfg: Config, it: int):
        self.base = f"{ctx.run_id}/md{it + 1}"
        self.shared = cfg.placement == "shared"
        nodes, leaves = _tree_paths(cfg.depth, cfg.branching)
        self.nodes, self.leaves = nodes, leaves
        self.nleaves = len(leaves)
        self._leafdirs: dict[int, list[str]] = {}

    def root(self, rank: int) -> str:
        return f"{self.base}/shared" if self.shared else f"{self.base}/r{rank}"

    def tree(self, rank: int) -> list[str]:
        """The directories of `rank`'s tree (the shared one's, for placement=shared), parents first."""
        root = self.root(rank)
        return [root] + [f"{root}/{p}" for p in self.nodes]

    def leafdirs(self, rank: int) -> list[str]:
        key = -1 if self.shared else rank
        if key not in self._leafdirs:
            root = self.root(rank)
            self._leafdirs[key] = [f"{root}/{p}" if p else root for p in self.leaves]
        return self._leafdirs[key]

    def maker(self, rank: int, tag: str) -> Callable[[int], str]:
        """index -> key of item `index` of `rank` ('f' file, 'm' renamed file, 'd'/'e' dirs)."""
        dirs, n = self.leafdirs(rank), self.nleaves
        if n == 1:
            d = dirs[0]
            return lambda i: f"{d}/{tag}.{rank}.{i}"
        return lambda i: f"{dirs[i % n]}/{tag}.{rank}.{i}"

    def keys(
        self,
        rank: int,
        tag: str,
        n: int,
        order: Sequence[int] | None = None,
        resolve: Callable[[str], Any] | None = None,
    ) -> Any:
        """The keys of `rank`'s first n items (in `order`), through a backend's `resolve` if given."""
        make = self.maker(rank, tag)
        if resolve is not None:
            key = make
            make = lambda i: resolve(key(i))  # noqa: E731
        if n > PRECOMPUTE_MAX:
            return _LazyKeys(make, order)
        return [make(i) for i in (order if order is not None else range(n))]

    def leaf_listing(
        self, ranks: Sequence[int], tag: str, count: int, dirs: bool
    ) -> list[tuple[str, set[str]]]:
        """Per leaf: (prefix to list, the exact item keys expected in it) for the given writers."""
        suffix = "/" if dirs else ""
        out = []
        for j in range(self.nleaves):
            prefix = f"{self.leafdirs(ranks[0])[j]}/"
            expect = {
                f"{self.leafdirs(r)[j]}/{tag}.{r}.{i}{suffix}"
                for r in ranks
                for i in range(j, count, self.nleaves)
            }
            out.append((prefix, expect))
        return out


class _Thread:
    """What one thread reuses across its ops: a payload buffer, the bare verb bound to it, a tally."""

    __slots__ = ("buf", "bare", "items")

    def __init__(self, buf: memoryview, bare: Bare | None):
        self.buf, self.bare, self.items = buf, bare, 0


def _bare_of(st: _Thread) -> Bare:
    return cast(Bare, st.bare)  # set whenever a phase runs a bare loop


def _checking(
    bare: Bare, *, stamp: Stamp | None = None, expect: Expect | None = None, size: int = -1
) -> Bare:
    """`bare`, its compiled verb (if any) told what the Python hooks stamp and check."""
    if bare.native is not None:
        bare.native.checking(stamp=stamp, expect=expect, size=size)
    return bare


# --------------------------------------------------------------------------------------------
# running


@dataclass
class _RankPhase:
    """One rank's numbers for one phase: what rank 0 needs for per-rank rates and the stonewall."""

    items: int
    seconds: float  # its own span: first op's start to last op's end
    end: float  # its last op's end, from the barrier every rank left together
    stonewall_items: int | None = None
    stonewall_seconds: float | None = None


def _check_listing(prefix: str, got: list[str], expect: set[str]) -> None:
    """Exactly the expected names, each once: a short, long or repeating listing is an error."""
    if len(got) == len(expect) and expect.issuperset(got):
        return
    seen = set(got)
    missing = len(expect - seen)
    extra = len(seen - expect)
    dup = len(got) - len(seen)
    raise VerifyError(
        f"list {prefix!r}: {len(got)} names, expected {len(expect)} "
        f"({missing} missing, {extra} unexpected, {dup} repeated)",
        prefix,
    )


def _stats(xs: Sequence[float]) -> dict[str, float]:
    if not xs:
        return {"min": 0.0, "mean": 0.0, "max": 0.0}
    return {"min": round(min(xs), 3), "mean": round(sum(xs) / len(xs), 3), "max": round(max(xs), 3)}


@register
class Metadata(Workload):
    """mdtest-style metadata phases (see the module's docstring): one rank's run, and rank 0's
    summary of all of them."""

    name = "metadata"
    Config = Config

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.cfg: Config = ctx.config
        self.b: Backend = ctx.backend
        self.rank, self.size = ctx.rank, ctx.size
        self.target = (self.rank + self.cfg.stride) % self.size
        self.resolve = self.b.resolve
        probe = self.b.bare("stat")
        self.chunk = probe.chunk
        #: the backend loops its bare verbs in compiled code (storage.native): phases lay their
        #: targets out for it before the clock, and tell each thread's verb what to stamp and check
        self.native = probe.native is not None
        self.loops = "compiled" if self.native else f"python ({self.b.bare_loops()})"
        self.results: list[PhaseResult] = []
        self.per_rank: dict[str, dict[str, Any]] = {}

    @classmethod
    def footprint(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        """File bytes stored at once (the preflight check): an iteration's files, or every
        iteration's when no file_remove phase deletes them."""
        if "file_create" not in cfg.phases or not cfg.write_bytes:
            return 0, "no file bytes"
        kept = 1 if "file_remove" in cfg.phases else cfg.iterations
        return (
            cfg.items_per_rank * cfg.write_bytes * ranks * kept,
            f"workload.items_per_rank={cfg.items_per_rank} x workload.write_bytes={cfg.write_bytes} "
            f"x {ranks} rank(s)" + (f" x workload.iterations={kept}" if kept > 1 else ""),
        )

    @classmethod
    def memory(cls, cfg: Config, ranks: int) -> tuple[int, str]:
        """Bytes a rank allocates before the clock: a file body per thread and the template."""
        return (
            cfg.io_depth + 1
        ) * cfg.write_bytes, f"workload.io_depth={cfg.io_depth} x workload.write_bytes={cfg.write_bytes}"

    def run(self) -> list[PhaseResult]:
        ctx, cfg = self.ctx, self.cfg
        # one body for every file, made once (files differ in their stamp); untimed
        self.content = HeadStamped(ctx.seed, cfg.write_bytes, self.b.alloc, salt=17, read=cfg.read_size)
        skipped: dict[str, tuple[str, str]] = {}
        try:
            for it in range(cfg.iterations):
                self.iteration(it, skipped)
        except StoreGone:
            # items are not tracked one by one: name the tree they are in (rank 0, once for the run)
            if self.rank == 0:
                self.b.leftovers.add([f"{ctx.run_id}/ (whatever this run's metadata phases left)"])
            raise
        if self.rank == 0:
            by_reason: dict[str, list[str]] = {}
            for phase, (_how, why) in skipped.items():
                by_reason.setdefault(why, []).append(phase)
            for why, names in by_reason.items():
                ctx.log.warning(
                    "metadata: not run, unsupported on %s: %s (%s)", self.b.name, ", ".join(names), why
                )
        return self.results

    def rank_metrics(self) -> dict[str, Any]:
        return {"target_rank": self.target, "phases": self.per_rank}

    # helpers -------------------------------------------------------------------------------
    def order(self, n: int, salt: int) -> list[int] | None:
        if not self.cfg.random_order:
            return None
        order = list(range(n))
        random.Random(self.ctx.seed * 1_000_003 + self.rank * 7919 + salt).shuffle(order)
        return order

    def timed(
        self,
        label: str,
        n_ops: int,
        op: Callable[[int, Any], int] | None = None,
        *,
        loop: Chunk | None = None,
        bare: Callable[[memoryview], Bare] | None = None,
        buffers: bool = False,
        count_items: bool = False,
        io_depth: int | None = None,
        stonewall: bool = False,
        how: str = "native",
    ) -> PhaseResult:
        """Run one phase through the shared runner; items, retries and throttles go in `extra`.

        Either `op` (one op at a time, through the generic path) or `loop` (a `bare_loop`, given
        chunks of the backend's size; `bare(thread's buffer)` binds each thread's verb)."""
        states: list[_Thread] = []
        empty = memoryview(b"")

        def thread_state(_t: int) -> _Thread:
            buf = self.content.buffer() if buffers else empty
            st = _Thread(buf, bare(buf) if bare is not None else None)
            states.append(st)
            return st

        before = self.b.counters.as_dict()
        deadline = self.cfg.stonewall_s if stonewall and self.cfg.stonewall_s > 0 else None
        depth = io_depth or self.cfg.io_depth
        if loop is not None:
            chunk_op, chunk = loop, self.chunk
        elif op is not None:
            chunk_op, chunk = per_op(op), 1
        else:
            raise TypeError("timed() needs an op or a loop")
        if depth > 1:  # every thread gets a few chunks, so io_depth ops are really in flight
            chunk = max(1, min(chunk, n_ops // (depth * 4)))
        res = self.ctx.runner.run_chunks(
            label,
            n_ops,
            chunk_op,
            chunk,
            depth,
            thread_state,
            deadline_s=deadline,
            catch_up=deadline is not None,
        )
        after = self.b.counters.as_dict()
        items = sum(s.items for s in states) if count_items else res.ops
        res.extra.update(
            items=items,
            support=how,
            retries=int(after["retries"]) - int(before["retries"]),
            throttles=int(after["throttles"]) - int(before["throttles"]),
        )
        if count_items and label.split("@")[0] in LIST_PHASES:
            res.extra["listings"] = res.ops
        rp = _RankPhase(items=items, seconds=res.seconds, end=res.end)
        if deadline is not None:
            rp.stonewall_items = int(res.extra["stonewall_items"])
            rp.stonewall_seconds = float(res.extra["stonewall_seconds"])
        self.per_rank[label] = rp.__dict__
        self.results.append(res)
        return res

    def setup_tree(self, ns: _Namespace) -> None:
        """Untimed: the tree the items go in, when tree_create is not one of the phases."""
        if self.b.capabilities.get("mkdir") != "native":
            return
        if not ns.shared or self.rank == 0:
            for d in ns.tree(self.rank):
                self.b.mkdir(d)
        self.ctx.world.barrier()

    # phases --------------------------------------------------------------------------------
    def tree_phase(self, label: str, ns: _Namespace, remove: bool, how: str) -> None:
        mine = not ns.shared or self.rank == 0
        dirs = ns.tree(self.rank) if mine else []
        if remove:
            dirs.reverse()  # children before parents
        verb = self.b.rmdir if remove else self.b.mkdir

        def op(i: int, _s: Any) -> int:
            verb(dirs[i])
            return 0

        # one thread: a parent is made before, and removed after, its children
        self.timed(label, len(dirs), op, io_depth=1, how=how)

    def create(self, label: str, ns: _Namespace, dirs: bool, how: str) -> int:
        cfg, rank, b = self.cfg, self.rank, self.b
        n = cfg.items_per_rank
        keys = ns.keys(rank, "d" if dirs else "f", n, resolve=self.resolve)
        if dirs:
            mkdir = b.bare("mkdir")
            res = self.timed(
                label, n, loop=bare_loop(keys, _bare_of), bare=lambda _buf: mkdir, stonewall=True, how=how
            )
        else:
            # every file differs in its head (its stamp), so no dedup can make the writes cheap
            before = self.content.stamper(rank)
            stamp = self.content.native_stamp(rank)
            res = self.timed(
                label,
                n,
                loop=bare_loop(keys, _bare_of, before=before, moves=True, native=self.native),
                bare=lambda buf: _checking(b.bare("put", buf), stamp=stamp),
                buffers=True,
                stonewall=True,
                how=how,
            )
        # every rank continued to the same count (or did all n): later phases use exactly that
        return int(res.extra.get("stonewall_target", n))

    def stat(self, label: str, ns: _Namespace, tag: str, count: int, salt: int, how: str) -> None:
        targets = ns.keys(self.target, tag, count, self.order(count, salt), self.resolve)
        b = self.b
        check: Callable[[int, _Thread, Any], None] | None = None
        w = -1
        if self.cfg.verify and tag == "f":
            w, size = self.cfg.write_bytes, b.bare("stat").size

            def check(i: int, _st: _Thread, info: Any) -> None:
                if size(info) != w:
                    raise VerifyError(f"{targets[i]}: stat says {size(info)} bytes, {w} were written")

        self.timed(
            label,
            count,
            loop=bare_loop(targets, _bare_of, check=check, native=self.native),
            bare=lambda _buf: _checking(b.bare("stat"), size=w),  # a verb per thread: its own tallies
            how=how,
        )

    def read(self, label: str, ns: _Namespace, count: int, salt: int, how: str) -> None:
        cfg, t, b = self.cfg, self.target, self.b
        order = self.order(count, salt)
        targets = ns.keys(t, "f", count, order, self.resolve)
        w, e = cfg.write_bytes, cfg.read_size
        # the writer's stamp (target rank, item index), then the body's hash
        check = self.content.checker(t, order, targets) if cfg.verify else None
        expect = self.content.native_expect(t, order) if cfg.verify else None
        verb = "get" if e == w else "get_head"  # a whole file, or its first read_bytes
        self.timed(
            label,
            count,
            loop=bare_loop(targets, _bare_of, check=check, moves=True, native=self.native),
            bare=lambda buf: _checking(b.bare(verb, buf[:e] if verb == "get_head" else buf), expect=expect),
            buffers=True,
            how=how,
        )

    def listing(self, label: str, ns: _Namespace, tag: str, count: int, dirs: bool, how: str) -> None:
        """Each rank lists every leaf holding its target's items (every leaf, when shared)."""
        writers = list(range(self.size)) if ns.shared else [self.target]
        plan = ns.leaf_listing(writers, tag, count, dirs) * self.cfg.list_repeats
        lst = self.b.list
        delim = "/" if (dirs or self.cfg.list_delimiter) else None

        def op(i: int, st: _Thread) -> int:
            prefix, expect = plan[i]
            head = prefix + tag + "."
            got = [k for k in lst(prefix, delim) if k.startswith(head) and k.endswith("/") == dirs]
            _check_listing(prefix, got, expect)
            st.items += len(got)
            return 0

        self.timed(label, len(plan), op, count_items=True, how=how)

    def storm(self, label: str, ns: _Namespace, count: int, how: str) -> None:
        """Every rank lists the whole namespace of this iteration at once, flat, storm_repeats times."""
        prefix = f"{ns.base}/"
        expect = {ns.maker(r, "f")(i) for r in range(self.size) for i in range(count)}
        lst = self.b.list

        def op(_i: int, st: _Thread) -> int:
            got = list(lst(prefix, None))
            _check_listing(prefix, got, expect)
            st.items += len(got)
            return 0

        self.timed(label, self.cfg.storm_repeats, op, count_items=True, how=how)

    def rename(self, label: str, ns: _Namespace, tag: str, new: str, count: int, salt: int, how: str) -> None:
        order = self.order(count, salt)
        src = ns.keys(self.target, tag, count, order)
        dst = ns.keys(self.target, new, count, order)
        mv = self.b.rename

        def op(i: int, _s: Any) -> int:
            mv(src[i], dst[i])
            return 0

        self.timed(label, count, op, how=how)

    def remove(
        self, label: str, ns: _Namespace, tag: str, count: int, dirs: bool, salt: int, how: str
    ) -> None:
        order = self.order(count, salt)
        batch = self.cfg.delete_batch
        if dirs or not batch:
            targets = ns.keys(self.target, tag, count, order, self.resolve)
            b, name = self.b, "rmdir" if dirs else "delete"
            self.timed(
                label,
                count,
                loop=bare_loop(targets, _bare_of, native=self.native),
                bare=lambda _buf: b.bare(name),  # a verb per thread: its own tallies
                how=how,
            )
            return
        keys = ns.keys(self.target, tag, count, order)
        batches = [[keys[j] for j in range(s, min(s + batch, count))] for s in range(0, count, batch)]
        delete_many = self.b.delete_many

        def op_many(i: int, st: _Thread) -> int:
            st.items += delete_many(batches[i])
            return 0

        self.timed(label, len(batches), op_many, count_items=True, how=how)

    def iteration(self, it: int, skipped: dict[str, tuple[str, str]]) -> None:
        cfg = self.cfg
        ns = _Namespace(self.ctx, cfg, it)
        chosen = [p for p in PHASES if p in cfg.phases]
        counts = {"d": 0, "f": 0}
        names = {"d": "d", "f": "f"}
        tree_ready = False
        for n, phase in enumerate(chosen):
            salt = it * len(PHASES) + n  # a shuffle of its own for every phase and iteration
            how, _why = support(phase, self.b, cfg)
            if how == "unsupported":
                skipped[phase] = (how, _why)
                continue
            label = phase_label(phase, it, cfg.iterations)
            kind = "d" if phase.startswith("dir_") else "f"
            if phase == "tree_create":
                self.tree_phase(label, ns, remove=False, how=how)
                tree_ready = True
            elif phase == "tree_remove":
                self.tree_phase(label, ns, remove=True, how=how)
            elif phase in CREATES:
                if not tree_ready:
                    self.setup_tree(ns)
                    tree_ready = True
                counts[kind] = self.create(label, ns, kind == "d", how)
            elif phase.endswith("_stat"):
                self.stat(label, ns, names[kind], counts[kind], salt, how)
            elif phase == "file_read":
                self.read(label, ns, counts["f"], salt, how)
            elif phase.endswith("_list"):
                self.listing(label, ns, names[kind], counts[kind], kind == "d", how)
            elif phase == "list_storm":
                self.storm(label, ns, counts["f"], how)
            elif phase.endswith("_rename"):
                new = "e" if kind == "d" else "m"
                self.rename(label, ns, names[kind], new, counts[kind], salt, how)
                names[kind] = new
            elif phase.endswith("_remove"):
                self.remove(label, ns, names[kind], counts[kind], kind == "d", salt, how)

    # summary (rank 0) -----------------------------------------------------------------------
    def summarize(self, phases: dict[str, dict[str, Any]], per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        cfg, b = self.cfg, self.b
        out: dict[str, Any] = {}
        for label, p in phases.items():
            ranks = [m["phases"][label] for m in per_rank if label in m.get("phases", {})]
            extra = p.get("extra", {})
            items = int(extra.get("items", p["ops"]))
            # mdtest's phase time: from the barrier all ranks leave together to the last rank's end
            slowest = max((r["end"] for r in ranks), default=0.0)
            rate = items / slowest if slowest else 0.0
            rank_rates = [r["items"] / r["seconds"] for r in ranks if r["items"] and r["seconds"]]
            q: dict[str, Any] = {
                "support": extra.get("support", "native"),
                "verb": VERBS[label.split("@")[0]],
                "items": items,
                "ops": p["ops"],
                "errors": p["errors"],
                "seconds": round(slowest, 9),
                "rate": round(rate, 3),
                "rank_rates": _stats(rank_rates),
                "latency_us": {k: p["latency_us"][k] for k in ("p50", "p90", "p99", "p999", "max")},
                "retries": int(extra.get("retries", 0)),
                "throttles": int(extra.get("throttles", 0)),
            }
            if "listings" in extra:
                q["listings"] = int(extra["listings"])
                q["listings_per_s"] = round(q["listings"] / slowest, 3) if slowest else 0.0
            if any(r.get("stonewall_items") is not None for r in ranks):
                at = [int(r["stonewall_items"]) for r in ranks]
                stop = max(float(r["stonewall_seconds"]) for r in ranks)
                q["stonewall"] = {
                    "deadline_s": cfg.stonewall_s,
                    "hit": min(at) < cfg.items_per_rank,
                    "stonewalled": bool(extra.get("stonewalled", False)),
                    "items": sum(at),
                    "items_per_rank": _stats(at),
                    "seconds": round(stop, 9),
                    "rate": round(sum(at) / stop, 3) if stop else 0.0,
                    "wearout_items": int(extra.get("wearout_items", 0)),
                    "items_per_rank_after": int(extra.get("stonewall_target", cfg.items_per_rank)),
                }
            out[label] = q
        for phase in PHASES:
            if phase not in cfg.phases:
                continue
            how, why = support(phase, b, cfg)
            if how == "unsupported":
                out[phase] = {"support": how, "reason": why, "verb": VERBS[phase]}
        # iterations: mdtest's min/mean/max over them, per phase
        by_phase: dict[str, list[float]] = {}
        for label, q in out.items():
            if q["support"] != "unsupported":
                by_phase.setdefault(label.split("@")[0], []).append(q["rate"])
        scored = {p: sum(v) / len(v) for p, v in by_phase.items() if p not in NOT_IN_GEOMEAN and all(v)}
        geomean = math.exp(sum(math.log(v) for v in scored.values()) / len(scored)) if scored else 0.0
        meta: dict[str, Any] = {
            "rate_definition": "items / slowest rank's time (mdtest); list phases count names listed",
            "placement": cfg.placement,
            "ranks": self.size,
            "items_per_rank": cfg.items_per_rank,
            "stride": cfg.stride,
            "target_ranks": [m.get("target_rank") for m in per_rank],
            "tree": {
                "depth": cfg.depth,
                "branching": cfg.branching,
                "dirs_per_tree": _tree_size(cfg.depth, cfg.branching),
                "leaves": cfg.branching**cfg.depth,
            },
            "write_bytes": cfg.write_bytes,
            "read_bytes": cfg.read_size,
            "fsync": b.describe().get("fsync", "n/a"),
            "loops": self.loops,
            "iterations": cfg.iterations,
            "phases": out,
            "unsupported": [p for p, q in out.items() if q["support"] == "unsupported"],
            "emulated": sorted({p.split("@")[0] for p, q in out.items() if q["support"] == "emulated"}),
            "geomean": {"rate": round(geomean, 3), "phases": sorted(scored)},
        }
        if cfg.iterations > 1:
            meta["over_iterations"] = {p: _stats(v) for p, v in by_phase.items()}
        return {"metadata": meta}
