"""MLPerf Storage v3's rules for the two workloads dlio-ext mirrors, checked on a finished run.

Each rule carries the number and name it has in mlcommons/storage's Rules.md (sections 4,
"Validating the Checkpointing Workloads", and 6, "Validating the KVCache Options"), and is
judged from what the run directory holds: summary.json, config.yaml, host.json and, for
checkpoint_burst, timeline.csv (docs/mlperf.md says which key decides each rule). A rule is met
or not, always with the figures that decided it; nothing is judged from what a run was asked to
do when the run recorded what it did.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dlio_ext.errors import UsageError


@dataclass(frozen=True)
class Model:
    """An MLPerf checkpointing model: its results directory name, DLIO's model name and the
    process count CLOSED requires (Rules.md Table 2)."""

    mlperf: str
    dlio: str
    processes: int


#: checkpoint_burst presets that are MLPerf's checkpointing models
MODELS = {
    "llama3_8b": Model("llama3-8b", "llama_8b", 8),
    "llama3_70b": Model("llama3-70b", "llama_70b", 64),
    "llama3_405b": Model("llama3-405b", "llama_405b", 512),
    "llama3_1t": Model("llama3-1t", "llama_1t", 1024),
}


@dataclass(frozen=True)
class Option:
    """One of the three CLOSED KV-cache workload Options (Rules.md Table KVCache-1)."""

    number: int
    mlperf: str  # model name as kv-cache.py spells it (and the results directory)
    users: int  # per client (MPI rank)
    cpu_gib: int
    allocs: int  # max-concurrent-allocs


#: kv_cache presets that mirror an Option
OPTIONS = {
    "llama3_8b_200u": Option(1, "llama3.1-8b", 200, 0, 16),
    "llama3_8b_100u_cpu4g": Option(2, "llama3.1-8b", 100, 4, 16),
    "llama3_70b_70u": Option(3, "llama3.1-70b-instruct", 70, 0, 4),
}

#: CLOSED: the time between two checkpoints (configs/dlio/workload/llama3_*.yaml,
#: checkpoint.time_between_checkpoints) and the read-phase start after the write phase (4.7.1)
TIME_BETWEEN_CHECKPOINTS_S = 5.0
MAX_GAP_S = 30.0
#: KV-cache CLOSED sequence locks (6.3.2.1) and the Options' duration (Table KVCache-1)
KV_SEED, KV_TRIALS, KV_DURATION_S = 42, 3, 300.0
GiB = 1 << 30


@dataclass(frozen=True)
class Rule:
    id: str  # Rules.md number, or "dlio-ext" for the run's own validity
    name: str  # Rules.md name
    met: bool
    why: str

    def line(self) -> str:
        return f"{'met   ' if self.met else 'breaks'} {self.id:9s} {self.name}: {self.why}"


@dataclass(frozen=True)
class Run:
    """What a finished run left: its directory, summary, resolved config, host record and (for
    checkpoint_burst) the timeline of every file."""

    dir: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    host: dict[str, Any]

    @property
    def workload(self) -> str:
        return str(self.summary["workload"])

    @property
    def section(self) -> dict[str, Any]:
        return dict(self.summary.get(self.workload) or {})

    @property
    def preset(self) -> str:
        return str(self.summary.get("workload_config", {}).get("preset", ""))

    def timeline(self) -> list[dict[str, str]]:
        name = (self.section.get("timeline") or {}).get("csv")
        path = self.dir / str(name or "timeline.csv")
        if not path.is_file():
            return []
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))


def _json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"{path.parent}: no {path.name}; give the directory a finished `dlio-ext run` printed"
        ) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read it as JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return doc


def load(run_dir: Path) -> Run:
    """The run in `run_dir`; one UsageError line when it is not a finished checkpoint_burst or
    kv_cache run."""
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run directory")
    summary = _json(run_dir / "summary.json")
    workload = summary.get("workload")
    if workload not in RULES:
        raise UsageError(
            f"{run_dir}: a {workload or 'unknown'} run; MLPerf Storage v3 has checkpointing and KV-cache "
            f"workloads only: export a {' or '.join(RULES)} run"
        )
    if not isinstance(summary.get(workload), dict) or not isinstance(summary.get("phases"), dict):
        raise UsageError(f"{run_dir}: summary.json has no {workload} section (the run stopped early)")
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    host = _json(run_dir / "host.json") if (run_dir / "host.json").is_file() else {}
    return Run(run_dir, summary, config if isinstance(config, dict) else {}, host)


# --- helpers -------------------------------------------------------------------------------------


def _device(path: str) -> tuple[int, str]:
    """st_dev of `path`, or of its nearest existing parent (the data may be cleaned up)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return os.stat(p).st_dev, str(p)


def _run_setting(run: Run, key: str, default: Any) -> Any:
    return (run.config.get("run") or {}).get(key, default)


def _valid(run: Run) -> Rule:
    s = run.summary
    reasons = list(s.get("invalid_reasons") or [])
    why = "valid: no errors, every phase complete, cold reads confirmed by the kernel"
    if not s.get("valid"):
        why = f"invalid: {reasons[0] if reasons else 'see summary.json'}" + (
            f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
        )
    return Rule("dlio-ext", "runValid", bool(s.get("valid")), why)


def _filesystems(run: Run, results: Path, rid: str, name: str) -> Rule:
    storage = run.summary.get("storage") or {}
    if storage.get("backend") != "posix":
        return Rule(
            rid, name, True, f"{storage.get('backend')}: object storage, no file system to share with results"
        )
    root = str(storage.get("root") or "")
    dev, where = _device(root)
    same = [str(p) for p in (run.dir, results) if _device(str(p))[0] == dev]
    if same:
        return Rule(
            rid,
            name,
            False,
            f"storage root {root} and results {', '.join(same)} are on one file system (st_dev {dev})",
        )
    return Rule(
        rid,
        name,
        True,
        f"storage root {root} (st_dev {dev} at {where}) and results are on different file systems",
    )


def _phases(run: Run, pattern: str) -> list[tuple[str, dict[str, Any]]]:
    rx = re.compile(pattern)
    return [(n, p) for n, p in run.summary["phases"].items() if rx.fullmatch(n)]


def _cold(run: Run, phases: list[tuple[str, dict[str, Any]]], claimed: bool) -> tuple[bool, str]:
    """(cold, why) from the kernel's cache fractions of the read phases."""
    storage = run.summary.get("storage") or {}
    limit = float(_run_setting(run, "max_cache_fraction", 0.05))
    if storage.get("cache_control") == "remote":
        return True, "object store: no client page cache (the server's cache is not controlled)"
    fractions = [p.get("cache_fraction") for _, p in phases]
    if not phases or any(f is None for f in fractions):
        if not claimed:
            return False, "reads were not made cold"
        return False, "the kernel did not confirm cold reads (no cache_fraction on every read phase)"
    worst = max(float(f) for f in fractions)
    if worst > limit:
        return False, f"up to {worst:.1%} of a read phase came from the page cache (limit {limit:.0%})"
    return True, f"every read phase cold: at most {worst:.1%} from the page cache (kernel counters)"


# --- checkpointing (Rules.md section 4) ----------------------------------------------------------

WRITES = r"(write|persist|drain)_\d+"
READS = r"restore_\d+"


def _fsync(run: Run) -> Rule:
    rid, name = "4.3.2", "checkpointFsyncVerification"
    storage = run.summary.get("storage") or {}
    writes = _phases(run, WRITES)
    if storage.get("durability_source") == "medium":
        return Rule(rid, name, True, f"{storage.get('durability')} (no fsync on object storage)")
    files = sum(int((p.get("extra") or {}).get("files", p.get("ops", 0))) for _, p in writes)
    calls = sum(int(p.get("fsync_calls") or 0) for _, p in writes)
    policy = storage.get("fsync")
    if policy in (None, "none") or calls < files or not writes:
        return Rule(
            rid, name, False, f"storage.fsync={policy}: {calls} fsyncs for {files} checkpoint files written"
        )
    return Rule(
        rid, name, True, f"storage.fsync={policy}: {calls} fsyncs for {files} checkpoint files written"
    )


def _structure(run: Run) -> Rule:
    """10 checkpoints written, then 10 read, every one complete, no read before the last write."""
    rid, name = "4.7.1", "checkpointInvocationStructure"
    writes, reads = _phases(run, WRITES), _phases(run, READS)
    short = [n for n, p in writes + reads if p.get("ops", 0) < p.get("planned_ops", 0) or p.get("errors")]
    counts = f"{len(writes)} checkpoints written, {len(reads)} read"
    if (len(writes), len(reads)) != (10, 10):
        return Rule(rid, name, False, f"{counts}; CLOSED runs 10 writes then 10 reads")
    if short:
        return Rule(rid, name, False, f"{counts}, but {', '.join(short)} did not finish")
    gap = _gap(run)
    if gap is not None and gap < 0:
        return Rule(
            rid, name, False, f"{counts}, but the first read began {-gap:.3f} s before the last write ended"
        )
    return Rule(rid, name, True, f"{counts}, all complete, the reads after the writes")


def _gap(run: Run) -> float | None:
    """Seconds from the last checkpoint write's end to the first restore's start (timeline.csv,
    one clock for all ranks), or None without a timeline."""
    rows = run.timeline()
    ends = [float(r["end_s"]) for r in rows if r.get("kind") in ("write", "persist", "drain")]
    starts = [float(r["start_s"]) for r in rows if r.get("kind") == "restore"]
    return min(starts) - max(ends) if ends and starts else None


def _gap_rule(run: Run) -> Rule:
    rid, name = "4.7.1", "checkpointCacheFlushValidation"
    gap = _gap(run)
    if gap is None:
        return Rule(rid, name, False, "no write and restore in timeline.csv to measure the gap")
    if gap > MAX_GAP_S:
        return Rule(
            rid, name, False, f"{gap:.1f} s from the last write to the first read (at most {MAX_GAP_S:.0f} s)"
        )
    return Rule(
        rid,
        name,
        True,
        f"{gap:.3f} s from the last write's end to the first read's start (at most {MAX_GAP_S:.0f} s), one invocation",
    )


def _cache(run: Run) -> Rule:
    """Caches cleared before the reads, or more than 3x a client's memory written per client."""
    rid, name = "4.3.1", "checkpointDataSizeRatio"
    cb = run.section
    method = (cb.get("cold_restore") or {}).get("method")
    cold, why = _cold(run, _phases(run, READS), not str(method).startswith("none"))
    memory = run.host.get("memory_bytes")
    per_client = int(cb.get("bytes_per_checkpoint") or 0) / max(1, int(run.summary.get("hosts") or 1))
    ratio = per_client / memory if memory else None
    big = f"{per_client / GiB:.3g} GiB a checkpoint per client" + (
        f" = {ratio:.3g}x its {memory / GiB:.0f} GiB memory" if ratio is not None else " (memory unknown)"
    )
    if ratio is not None and ratio > 3:
        return Rule(rid, name, True, f"{big} (> 3x: no cache to clear)")
    if cold:
        return Rule(rid, name, True, f"cold restores ({method}): {why}; {big}")
    return Rule(rid, name, False, f"restores ({method}): {why}, and {big}, not > 3x")


def _model(run: Run) -> Rule:
    model = MODELS.get(run.preset)
    if model is None:
        return Rule(
            "4.3.3",
            "checkpointModelConfigurationReq",
            False,
            f"preset {run.preset!r} is none of MLPerf's models ({', '.join(MODELS)})",
        )
    return Rule("4.3.3", "checkpointModelConfigurationReq", True, f"{run.preset}: MLPerf's {model.mlperf}")


def _processes(run: Run) -> Rule:
    model = MODELS.get(run.preset)
    ranks = int(run.summary.get("ranks") or 0)
    if model is None:
        return Rule(
            "4.6.1",
            "checkpointClosedMpiProcesses",
            False,
            f"{ranks} ranks; no MLPerf process count for preset {run.preset!r}",
        )
    return Rule(
        "4.6.1",
        "checkpointClosedMpiProcesses",
        ranks == model.processes,
        f"{ranks} ranks; CLOSED {model.mlperf} runs {model.processes} processes",
    )


def _per_host(run: Run) -> Rule:
    ranks, hosts = int(run.summary.get("ranks") or 0), max(1, int(run.summary.get("hosts") or 1))
    return Rule(
        "4.6.2",
        "checkpointClosedAcceleratorsPerHost",
        ranks / hosts > 4,
        f"{ranks / hosts:g} ranks per host ({ranks} on {hosts}); CLOSED needs more than 4",
    )


def _parameters(run: Run) -> Rule:
    """CLOSED may change the checkpoint folder only: the reference config's sizes, timing, fsync."""
    wc = run.summary.get("workload_config") or {}
    cb = run.section
    differs = []
    if float(wc.get("scale", 1)) != 1:
        differs.append(f"workload.scale={wc.get('scale')} (real sizes: 1)")
    if wc.get("layout") != "deepspeed":
        differs.append(f"workload.layout={wc.get('layout')} (DLIO's: deepspeed)")
    if wc.get("mode") != "sync":
        differs.append(f"workload.mode={wc.get('mode')} (sync)")
    if float(wc.get("compute_seconds", 0)) != TIME_BETWEEN_CHECKPOINTS_S:
        differs.append(
            f"workload.compute_seconds={wc.get('compute_seconds')} (time_between_checkpoints {TIME_BETWEEN_CHECKPOINTS_S:g})"
        )
    if "tier0" in run.summary:
        differs.append("a tier-0 in front of storage")
    model = cb.get("model") or {}
    if (model.get("model_dtype_bytes"), model.get("optimizer_dtype_bytes")) != (2, 4):
        differs.append("dtypes other than fp16 weights and fp32 optimizer state")
    if differs:
        return Rule("4.6.3", "checkpointClosedCheckpointParameters", False, "; ".join(differs))
    return Rule(
        "4.6.3",
        "checkpointClosedCheckpointParameters",
        True,
        "the reference config's sizes, layout, timing and dtypes",
    )


# --- KV cache (Rules.md section 6) ---------------------------------------------------------------


def _option(run: Run) -> Rule:
    rid, name = "6.3.1.1", "kvcacheFixedWorkloadPerOption"
    option = OPTIONS.get(run.preset)
    if option is None:
        return Rule(rid, name, False, f"preset {run.preset!r} is none of the Options ({', '.join(OPTIONS)})")
    wc = run.summary.get("workload_config") or {}
    differs = []
    want = {
        "scale": 1.0,
        "users": option.users,
        "requests_per_user": 0,
        "duration_s": KV_DURATION_S,
        "cpu_tier_bytes": option.cpu_gib * GiB,
        "max_inflight": option.allocs,
        "prefill_compute_s_per_token": 0.0,
    }
    for key, value in want.items():
        if float(wc.get(key, -1)) != float(value):
            differs.append(f"workload.{key}={wc.get(key)} ({value:g})")
    if differs:
        return Rule(rid, name, False, f"Option {option.number} ({run.preset}) differs: " + "; ".join(differs))
    return Rule(
        rid,
        name,
        True,
        f"Option {option.number}: {option.mlperf}, {option.users} users a rank, {KV_DURATION_S:g} s",
    )


def _sequence(run: Run) -> Rule:
    seed, trials = _run_setting(run, "seed", None), int(_run_setting(run, "trials", 1) or 1)
    ok = seed == KV_SEED and trials == KV_TRIALS
    return Rule(
        "6.3.2.1",
        "kvcacheClosedSequenceLocks",
        ok,
        f"run.seed={seed}, {trials} trial(s) of one Option; CLOSED runs seed {KV_SEED}, {KV_TRIALS} trials of every Option",
    )


def _kv_writes(run: Run) -> Rule:
    storage, durability = run.summary.get("storage") or {}, run.section.get("durability") or {}
    posix = storage.get("backend") == "posix"
    return Rule(
        "6.4.2",
        "kvcachePosixIoModel",
        posix and str(durability.get("policy", "")).startswith("fsync"),
        f"writes: {storage.get('backend')}, {durability.get('policy')} (source {durability.get('source')})"
        + ("" if posix else "; KV-cache storage is a POSIX directory (6.5.1: object stores through a mount)"),
    )


def _kv_reads(run: Run) -> Rule:
    claimed = bool((run.section.get("cold_reads") or {}).get("claimed"))
    cold, why = _cold(run, _phases(run, "read"), claimed)
    posix = (run.summary.get("storage") or {}).get("backend") == "posix"
    return Rule("6.4.2", "kvcachePosixIoModel", cold and posix, f"reads: {why}")


def _reads_happened(run: Run) -> Rule:
    chunks = int((run.section.get("read") or {}).get("chunks") or 0)
    return Rule(
        "6.3.4.4",
        "kvcacheLatencyValidity",
        chunks > 0,
        f"{chunks} chunk reads from storage (a run served from memory has no storage latency)",
    )


#: each workload's rules after the run's own validity, and its file-system rule
RULES = {
    "checkpoint_burst": (
        (_model, _processes, _per_host, _parameters, _fsync, _structure, _gap_rule, _cache),
        ("4.4.2", "checkpointFilesystemCheck"),
    ),
    "kv_cache": (
        (_option, _sequence, _kv_writes, _kv_reads, _reads_happened),
        ("6.4.1", "kvcachePosixCacheDir"),
    ),
}


def check(run: Run, results: Path) -> list[Rule]:
    """Every v3 rule of the run's workload, met or not and why. `results`: where the export goes
    (it must not share the storage's file system either)."""
    rules, (rid, name) = RULES[run.workload]
    return [_valid(run), *(rule(run) for rule in rules), _filesystems(run, results, rid, name)]
