"""`dlio-ext run`: compose the config, open the backend, run the workload, write the results.

Every rank runs this same code; rank 0 alone decides the run directory, checks the storage,
merges what the ranks measured and writes the summary. Anything rank 0 finds wrong before
the run starts is broadcast, so all ranks stop together with the same one-line error; anything
else that fails on one rank ends every rank at once (see `lifecycle`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from dlio_ext import __version__
from dlio_ext.config import RunConfig, check, composed, redact_args
from dlio_ext.errors import Failed, UsageError
from dlio_ext.metrics import results as res
from dlio_ext.metrics import trials
from dlio_ext.run import lifecycle, preflight
from dlio_ext.run.lifecycle import (
    INCOMPLETE,
    Ending,
    RunDirLock,
    console_filter,
    mark_incomplete,
    one_line,
    release_signals,
    take_signals,
)
from dlio_ext.storage import open_backend, storage_schema
from dlio_ext.storage.base import Backend, StorageError, StoreGone, kind_text
from dlio_ext.workloads.base import Workload, workload_class
from dlio_ext.workloads.base import known as known_workloads
from dlio_ext.workloads.context import Context
from dlio_ext.workloads.phases import PhaseRunner
from dlio_ext.world import SoloWorld, get_world

T = TypeVar("T")


def check_config(raw: dict[str, Any]) -> RunConfig:
    """A composed configuration checked, its schemas looked up in the registries by name."""
    return check(raw, workload_schema=lambda name: workload_class(name).Config, storage_schema=storage_schema)


def load_config(argv: list[str]) -> RunConfig:
    """The run's configuration: composed and checked in this process."""
    return check_config(composed(argv))


def _verdict(exc: Exception) -> tuple[str, bool]:
    """(one line, whether it is the user's to fix) for an error every rank is about to share."""
    return one_line(exc), isinstance(exc, UsageError | StorageError | OSError | ValueError)


def _raise(line: str, usage: bool) -> None:
    # bad input or an unusable environment exits 2; anything else (a bug) is a failure, exit 3
    raise UsageError(line) if usage else Failed(line)


def on_rank0(world: SoloWorld, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 and hand its result, or its one-line error, to every rank."""
    payload: tuple[tuple[str, bool] | None, Any] = (None, None)
    if world.rank == 0:
        try:
            payload = (None, fn())
        except Exception as exc:  # any failure here is every rank's: none may wait for rank 0
            payload = (_verdict(exc), None)
    err, value = world.bcast(payload)
    if err is not None:
        _raise(*err)
    return value


def on_every_rank(world: SoloWorld, fn: Callable[[], T]) -> T:
    """Run `fn` on every rank; if it fails on any, every rank raises that rank's error.

    For checks that read a rank's own environment or disk (S3 credentials exported on the
    launching host only, a CA bundle missing on one node): a rank that failed alone and left
    would leave the others waiting in the next collective."""
    try:
        value, mine = fn(), None
    except Exception as exc:
        value, mine = None, _verdict(exc)
    failed = [(r, e) for r, e in enumerate(world.allgather(mine)) if e is not None]
    if failed:
        rank, (line, usage) = failed[0]
        where = f"rank {rank}: " if len(failed) < world.size else ""
        _raise(where + line, usage)
    return value  # type: ignore[return-value]


def _make_run_dir(cfg: RunConfig, lock: list[RunDirLock]) -> tuple[Path, str]:
    """Create and lock the run directory, mark it INCOMPLETE and record the config (rank 0)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{cfg.workload_name}-{stamp}-{secrets.token_hex(3)}"
    path = Path(cfg.run.dir) if cfg.run.dir else Path(cfg.run.results_dir) / run_id
    fix = "run.dir=<empty or new dir>" if cfg.run.dir else "run.results_dir=<writable dir>"
    try:
        path.mkdir(parents=True, exist_ok=True)
        held = RunDirLock(path)
        held.acquire()  # before looking inside: two runs started together cannot both pass
        lock.append(held)
        if any(p.name in ("summary.json", INCOMPLETE, trials.TRIALS_FILE) for p in path.iterdir()):
            raise UsageError(
                f"run.dir={path} already holds a run's results; choose an empty or new directory"
            )
        (path / INCOMPLETE).write_text("this run has not finished; its results are partial\n")
        res.write_yaml(path / "config.yaml", cfg.redacted())
    except OSError as exc:
        raise UsageError(f"cannot write the results directory {path} ({exc.strerror}); set {fix}") from None
    return path.resolve(), run_id


def _logger(run_dir: Path, rank: int) -> logging.Logger:
    # a full or read-only results disk must not turn every log line into a traceback on the
    # console; the failure is reported once, where results are written
    logging.raiseExceptions = False
    log = logging.getLogger("dlio_ext")
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s rank%(rank)s %(levelname)s %(message)s")
    fh = logging.FileHandler(run_dir / ("run.log" if rank == 0 else f"rank-{rank:05d}.log"), delay=True)
    fh.setFormatter(fmt)
    fh.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.addHandler(fh)
    if rank == 0:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter("%(message)s"))
        sh.addFilter(console_filter)
        log.addHandler(sh)
    old = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old(*args, **kwargs)
        record.rank = rank
        return record

    logging.setLogRecordFactory(factory)
    return log


def _backend(settings: Any, run_dir: Path, world: SoloWorld) -> Backend:
    backend = on_every_rank(world, lambda: open_backend(dataclasses.asdict(settings), str(run_dir)))
    on_rank0(world, backend.check)
    world.barrier()
    return backend


def _tier0(
    cfg: RunConfig, kind: type[Workload], run_dir: Path, world: SoloWorld, storage: Backend
) -> Backend | None:
    """The tier-0 in front of `storage`, when the run names one and its workload takes one. Its
    defaults live under <run dir>/tier0 (a posix tier-0 never lands on the durable files)."""
    if cfg.tier0 is None:
        return None
    if not kind.tier0_use:
        takers = ", ".join(n for n in known_workloads() if workload_class(n).tier0_use)
        raise UsageError(
            f"workload={cfg.workload_name} takes no tier-0; drop tier0={cfg.tier0.type} (the workloads "
            f"that take one: {takers})"
        )
    home = run_dir / "tier0"
    home.mkdir(exist_ok=True)  # on every rank: a backend may keep its logs there (NIXL's UCX does)
    tier0 = _backend(cfg.tier0, home, world)
    if tier0.where() == storage.where():
        tier0.close()
        raise UsageError(
            f"tier0 and storage are the same place ({storage.where()}): give the tier-0 its own "
            f"(e.g. tier0.root=... or tier0.prefix=...)"
        )
    return tier0


def _print_table(summary: dict[str, Any]) -> None:
    print(
        f"{'phase':<18}{'ops':>10}{'GB/s':>10}{'ops/s':>12}{'p50 us':>11}{'p99 us':>11}{'max us':>11}"
        f"{'straggler':>10}{'errors':>8}{'dev GB':>9}{'cache%':>8}"
    )
    for name, p in summary["phases"].items():
        lat = p["latency_us"]
        dev, cf = p.get("device_bytes"), p.get("cache_fraction")
        print(
            f"{name:<18}{p['ops']:>10}{p['GBps']:>10.3f}{p['ops_per_s']:>12,.0f}{lat['p50']:>11,.0f}"
            f"{lat['p99']:>11,.0f}{lat['max']:>11,.0f}{p['straggler_ratio']:>10.2f}{p['errors']:>8}"
            f"{'-' if dev is None else f'{dev / 1e9:.3f}':>9}{'-' if cf is None else f'{cf:.0%}':>8}"
        )
    for w in summary.get("warnings", []):
        print(f"warning: {w}")
    print(
        f"valid: {summary['valid']}"
        + ("" if summary["valid"] else f" ({'; '.join(summary['invalid_reasons'])})")
    )


RUN_HELP = """usage: dlio-ext run workload=<name>[/<preset>] storage=<backend> [key=value | ++key=value ...]

workloads: {workloads}
storage:   {storage}
Every key is documented in workload_configs/ (config.yaml, workload/, storage/) and in the README.
The last line printed is `results: <dir>`; exit 0 for a valid run, 1 for an invalid one, 2 for bad input,
3 when a rank failed, 128 + the signal (130, 143) when interrupted."""


#: draws a run's figures from its directory and summary: {figure: file}, handed in by the cli (the
#: harness does not know the report package)
Figures = Callable[[Path, dict[str, Any]], dict[str, str]]


def run(argv: list[str], figures: Figures | None = None) -> int:
    if any(a in ("-h", "--help") for a in argv):
        from dlio_ext.config import choices

        print(
            RUN_HELP.format(workloads=", ".join(choices("workload")), storage=", ".join(choices("storage")))
        )
        return 0
    ending = lifecycle.current
    take_signals()  # a no-op when the CLI took them already, before numpy's threads started
    try:
        world = ending.world = get_world()
        # every rank has the same command line: rank 0 composes it, every rank checks the
        # composition (plain data), so only rank 0 imports Hydra and composes (~0.3 s of CPU a
        # rank; scripts/bench_harness.py --only startup)
        raw = on_rank0(world, lambda: composed(argv))
        cfg = on_every_rank(world, lambda: check_config(raw))
        lock: list[RunDirLock] = []
        run_dir, run_id = on_rank0(world, lambda: _make_run_dir(cfg, lock))
        ending.run_dir = run_dir
        try:
            if cfg.run.trials > 1:
                return _trials(cfg, world, run_dir, run_id, ending, figures)
            return _run(cfg, world, run_dir, run_id, ending, figures)
        except UsageError as exc:
            # a verdict every rank reached alike (a broadcast check, a workload's check of its config)
            if world.rank == 0:
                mark_incomplete(run_dir, f"did not start: {exc}")
            raise
        except Exception as exc:
            return ending.fail(exc)
        finally:
            for held in lock:
                held.release()
    finally:
        release_signals()


def _trials(
    cfg: RunConfig, world: SoloWorld, run_dir: Path, run_id: str, ending: Ending, figures: Figures | None
) -> int:
    """run.trials=N: N runs of the same configuration one after the other, each a run directory
    of its own (trial-NN), then trials.json with the median and spread of every phase's figures.
    A trial that ends invalid does not stop the others; a failure (exit 2, 3) does."""
    codes, dirs = [], []
    for i in range(cfg.run.trials):
        trial_dir = run_dir / f"trial-{i + 1:02d}"
        if world.rank == 0:
            trial_dir.mkdir()
            (trial_dir / INCOMPLETE).write_text("this trial has not finished; its results are partial\n")
            res.write_yaml(trial_dir / "config.yaml", cfg.redacted())
            print(f"trial {i + 1}/{cfg.run.trials}", file=sys.stderr, flush=True)
        ending.run_dir, ending.finished = trial_dir, False
        codes.append(_run(cfg, world, trial_dir, f"{run_id}-t{i + 1}", ending, figures))
        dirs.append(trial_dir.name)
    ending.run_dir = run_dir
    if world.rank != 0:
        return 0
    summaries = [json.loads((run_dir / d / "summary.json").read_text()) for d in dirs]
    doc = trials.aggregate(summaries, dirs)
    res.write_json(run_dir / trials.TRIALS_FILE, doc)
    (run_dir / INCOMPLETE).unlink(missing_ok=True)
    _print_trials(doc)
    print(f"results: {run_dir}", flush=True)
    return 0 if doc["valid"] and not any(codes) else 1


def _print_trials(doc: dict[str, Any]) -> None:
    print(f"{doc['trials']} trials: median (spread = (max - min) / median)")
    print(f"{'phase':<18}{'GB/s':>10}{'spread':>9}{'ops/s':>12}{'spread':>9}{'p99 us':>11}{'spread':>9}")
    for name, p in doc["phases"].items():
        g, o, q = p["GBps"], p["ops_per_s"], p["p99_us"]
        print(
            f"{name:<18}{g['median']:>10.3f}{g['spread_pct']:>8.1f}%{o['median']:>12,.0f}{o['spread_pct']:>8.1f}%"
            f"{q['median']:>11,.0f}{q['spread_pct']:>8.1f}%"
        )
    print(f"valid: {doc['valid']}" + ("" if doc["valid"] else f" ({'; '.join(doc['invalid_reasons'])})"))


def _run(
    cfg: RunConfig, world: SoloWorld, run_dir: Path, run_id: str, ending: Ending, figures: Figures | None
) -> int:
    log = ending.log = _logger(run_dir, world.rank)
    started = datetime.now(timezone.utc)
    backend = _backend(cfg.storage, run_dir, world)
    backend.liveness.timeout_s = cfg.run.store_timeout_s
    ending.data_where = backend.where
    kind = workload_class(cfg.workload_name)
    try:
        tier0 = _tier0(cfg, kind, run_dir, world, backend)
    except UsageError:
        backend.close()
        raise
    if tier0 is not None:
        tier0.liveness.timeout_s = cfg.run.store_timeout_s
        ending.data_where = lambda: f"{backend.where()} (tier-0: {tier0.where()})"
    local_ranks = world.ranks_on_host()
    try:
        on_rank0(
            world,
            lambda: preflight.check(
                kind, cfg.workload, backend, world.size, local_ranks, disk=cfg.run.preflight
            ),
        )
        if tier0 is not None:
            on_rank0(world, lambda: kind.check_tier0(cfg.workload, tier0, world.size))
    except UsageError:
        _close(backend, tier0)
        raise
    if world.rank == 0:
        log.info(
            "dlio-ext %s: workload %s on %s%s, %d rank(s), results in %s",
            __version__,
            cfg.workload_name,
            cfg.storage.type,
            f" behind a {cfg.tier0.type} tier-0" if tier0 is not None else "",
            world.size,
            run_dir,
        )
    runner = PhaseRunner(world, cfg.run.progress_interval, backend)  # collective: every rank builds it
    ending.phase = lambda: runner.current
    ctx = Context(
        world=world,
        backend=backend,
        runner=runner,
        config=cfg.workload,
        run_dir=run_dir,
        run_id=run_id,
        seed=cfg.run.seed,
        log=log,
        tier0=tier0,
    )
    workload = kind(ctx)
    ending.status = workload.status
    t0 = time.perf_counter()
    gone: StoreGone | None = None
    try:
        workload.prepare()
        phases = workload.run()
        extra = workload.rank_metrics()
    except StoreGone as exc:
        # raised on every rank at the same point: keep what was measured, end invalid (exit 1)
        gone, phases, extra = exc, ctx.runner.results, {}
    finally:
        _close(backend, tier0)
    wall = time.perf_counter() - t0
    mine = {
        "rank": world.rank,
        "host": os.uname().nodename,
        "wall_seconds": wall,
        "phases": [p.to_state() for p in phases],
        "counters": backend.counters.as_dict(),
        "metrics": extra,
        "leftovers": backend.leftovers.as_dict(),
    }
    if tier0 is not None:
        mine["tier0_counters"] = tier0.counters.as_dict()
    gathered = world.gather(mine)
    if world.rank != 0:
        ending.finished = True
        return 0
    assert gathered is not None
    summary = _summarize(cfg, workload, backend, gathered, started, gone, tier0)
    for r in gathered:
        res.write_json(run_dir / f"rank-{r['rank']:05d}.json", _rank_record(r))
    res.write_phases_csv(run_dir / "phases.csv", summary["phases"])
    res.write_json(run_dir / "host.json", res.host_info() | {"hosts": sorted({r["host"] for r in gathered})})
    if figures is not None:
        drawn = figures(run_dir, summary)
        if drawn:
            summary["figures"] = drawn
    res.write_json(run_dir / "summary.json", summary)
    (run_dir / INCOMPLETE).unlink(missing_ok=True)
    ending.finished = True
    _print_table(summary)
    for line in error_lines(summary["phases"], backend.where()):
        print(line)
    _print_ends(summary)
    log.info("finished in %.1f s", wall)
    print(f"results: {run_dir}", flush=True)
    # an invalid run still leaves its results, but a script or CI job must not read it as a pass
    return 0 if summary["valid"] else 1


def error_lines(phases: dict[str, dict[str, Any]], where: str) -> list[str]:
    """What went wrong, by kind, in words: "no space left on device: 28 of 64 op(s) failed in phase
    write (data in /mnt/x)", one line a phase and kind, then the phase's first error."""
    out = []
    for name, p in phases.items():
        for kind, n in sorted(p.get("error_kinds", {}).items(), key=lambda kv: -kv[1]):
            out.append(
                f"{kind_text(kind)}: {n} of {p['planned_ops'] or p['ops'] + p['errors']} op(s) failed in "
                f"phase {name} (data in {where})"
            )
        if p.get("first_error") and p.get("errors"):
            out.append(f"  first error in {name}: {p['first_error']}")
    return out


def _rank_record(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "rank": r["rank"],
        "host": r["host"],
        "wall_seconds": r["wall_seconds"],
        "phases": {p["name"]: res.rank_phase(p) for p in r["phases"]},
        "counters": r["counters"],
        "metrics": r["metrics"],
    }


def _summarize(
    cfg: RunConfig,
    workload: Workload,
    backend: Backend,
    gathered: list[dict[str, Any]],
    started: datetime,
    gone: StoreGone | None = None,
    tier0: Backend | None = None,
) -> dict[str, Any]:
    names = [p["name"] for p in gathered[0]["phases"]]
    phases = {n: res.merge_phase([r["phases"][i] for r in gathered]) for i, n in enumerate(names)}
    counters = _sum_counters([r["counters"] for r in gathered])
    errors = sum(p["errors"] for p in phases.values())
    kinds: dict[str, int] = {}
    for p in phases.values():
        for k, v in p["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    # the phases' tally is the truth: a backend counts only the errors it saw itself (S3 after its
    # retries), a workload's checks (corrupt, short) and a posix failure never reach its counters
    counters["backend_errors"] = counters.pop("errors", 0)
    counters.pop("errors_by_kind", None)
    counters["errors"], counters["errors_by_kind"] = errors, kinds
    reasons = []
    if errors:
        what = ", ".join(f"{kind_text(k)} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
        reasons.append(f"{errors} operation(s) failed ({what})")
    unfinished = [
        n
        for n, p in phases.items()
        if p["ops"] + p["errors"] < p["planned_ops"] and not p.get("extra", {}).get("stonewalled")
    ]
    if unfinished:
        reasons.append(f"phase(s) not finished: {', '.join(unfinished)}")
    cold_reasons, warnings = res.cold_check(phases, cfg.run.max_cache_fraction)
    reasons += cold_reasons
    reasons += backend.invalid_reasons()
    if tier0 is not None:
        reasons += [f"tier-0: {r}" for r in tier0.invalid_reasons()]
    if gone is not None:
        reasons.insert(0, gone.reason)
    summary: dict[str, Any] = {
        "schema": res.SCHEMA,
        "dlio_ext_version": __version__,
        "workload": cfg.workload_name,
        "workload_config": dataclasses.asdict(cfg.workload),
        "storage": backend.describe(),
        "ranks": workload.ctx.size,
        "hosts": len({r["host"] for r in gathered}),
        "valid": not reasons,
        "invalid_reasons": reasons,
        "warnings": warnings,
        "errors": errors,
        "counters": counters,
        "started_utc": started.isoformat(),
        "finished_utc": datetime.now(timezone.utc).isoformat(),
        "command": "dlio-ext run " + " ".join(redact_args(sys.argv[2:])),
        "phases": phases,
        "cleanup": _cleanup(backend, gathered),
    }
    if tier0 is not None:
        summary["tier0"] = tier0.describe() | {"use": workload.tier0_use}
        summary["tier0_counters"] = _sum_counters([r["tier0_counters"] for r in gathered])
    if gone is not None:
        summary["store_gone"] = gone.reason
        status = workload.status()  # what the data's state is, e.g. which checkpoints are durable
        if status:
            summary["data_status"] = status
    else:  # a stopped run has no workload state to summarize
        summary.update(workload.summarize(phases, [r["metrics"] for r in gathered]))
    return summary


def _sum_counters(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    counters: dict[str, Any] = {}
    for c in per_rank:
        for k, v in c.items():
            if isinstance(v, dict):
                d = counters.setdefault(k, {})
                for kk, vv in v.items():
                    d[kk] = d.get(kk, 0) + vv
            else:
                counters[k] = counters.get(k, 0) + v
    return counters


def _close(backend: Backend, tier0: Backend | None) -> None:
    if tier0 is not None:
        tier0.close()
    backend.close()


def _cleanup(backend: Backend, gathered: list[dict[str, Any]]) -> dict[str, Any]:
    """What the ranks could not delete (or abort), summed, the first keys listed, and where."""
    failed = sum(r["leftovers"]["failed"] for r in gathered)
    keys = [k for r in gathered for k in r["leftovers"]["left_behind"]]
    return {"failed": failed, "left_behind": keys[:20], "where": backend.where()}


def _print_ends(summary: dict[str, Any]) -> None:
    """One line each for why a run stopped early and what it left behind."""
    if "store_gone" in summary:
        print(f"dlio-ext: run stopped: {summary['store_gone']}", file=sys.stderr, flush=True)
    if "data_status" in summary:
        print(f"dlio-ext: {summary['data_status']}", file=sys.stderr, flush=True)
    c = summary["cleanup"]
    if c["failed"]:
        shown = ", ".join(c["left_behind"][:3])
        print(
            f"dlio-ext: cleanup left {c['failed']} item(s) behind in {c['where']} (first: {shown}; "
            "the first 20 are in summary.json cleanup.left_behind)",
            file=sys.stderr,
            flush=True,
        )
