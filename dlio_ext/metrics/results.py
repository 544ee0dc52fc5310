"""Merging per-rank phase results and writing a run's results directory.

summary.json is the stable, versioned contract (its `schema` key): the JSON Schema SCHEMA_FILE,
shipped beside this module, describes its common part and each workload's own schema, shipped
beside the workload, its section (`schema()` composes them into one document, `validate` checks a
summary). Per-rank JSON, phases.csv, config.yaml (secrets redacted) and host.json sit beside it. Every phase, in the summary and in each rank file, keeps
its latency histogram's exact state (`Histogram.encode`), so `reanalyse` rebuilds a finished
run's phases from its rank files and `compare` sets two runs' latencies side by side.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dlio_ext.metrics.histogram import PERCENTILES, Histogram

#: the summary's version: bumped whenever a key is removed or changes meaning (2: every phase keeps
#: its histogram state, `hist`; the schema document ships in the package)
SCHEMA = "dlio-ext/summary/2"
SCHEMA_FILE = Path(__file__).with_name("summary.schema.json")
LATENCY_KEYS = ("p50", "p90", "p99", "p999", "max")


def merge_phase(per_rank: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One phase over all ranks: totals, the span from first start to last end, merged latency."""
    active = [r for r in per_rank if r["ops"] or r["errors"]]
    ops = sum(r["ops"] for r in per_rank)
    nbytes = sum(r["bytes"] for r in per_rank)
    errors = sum(r["errors"] for r in per_rank)
    kinds: dict[str, int] = {}
    for r in per_rank:
        for k, v in r["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    first_start = min((r["start"] for r in active), default=0.0)
    last_end = max((r["end"] for r in active), default=0.0)
    seconds = max(last_end - first_start, 0.0)
    rank_secs = sorted(max(r["end"] - r["start"], 0.0) for r in per_rank)
    median = statistics.median(rank_secs) if rank_secs else 0.0
    hist = Histogram.merged(Histogram.from_state(r["hist"]) for r in per_rank)
    lat = hist.summary()
    out: dict[str, Any] = {
        "ops": ops,
        "planned_ops": sum(r["planned_ops"] for r in per_rank),
        "bytes": nbytes,
        "errors": errors,
        "error_kinds": kinds,
        "seconds": round(seconds, 9),
        "ops_per_s": round(ops / seconds, 3) if seconds else 0.0,
        "GBps": round(nbytes / seconds / 1e9, 6) if seconds else 0.0,
        "latency_us": {k: lat[k] for k in ("p50", "p90", "p95", "p99", "p999", "max", "mean")},
        "rank_seconds": {
            "min": round(rank_secs[0], 9) if rank_secs else 0.0,
            "p50": round(median, 9),
            "max": round(rank_secs[-1], 9) if rank_secs else 0.0,
        },
        # elbencho's columns: when the first rank finished, and when the last did
        "first_done_s": round(min((r["end"] for r in active), default=0.0) - first_start, 6),
        "last_done_s": round(seconds, 9),
        "straggler_ratio": round(rank_secs[-1] / median, 4) if median else 0.0,
        # the merged histogram itself, so the run can be re-analysed or compared after it ended
        "hist": hist.encode(),
    }
    firsts = [r["first_error"] for r in per_rank if r.get("first_error")]
    if firsts:
        out["first_error"] = firsts[0]
    extras = [r["extra"] for r in per_rank if r.get("extra")]
    if extras:
        out["extra"] = _sum_extras(extras)
    io = next((r["io"] for r in per_rank if r.get("io")), None)
    if io:
        out["io"] = io
    cold = next((r["cold"] for r in per_rank if r.get("cold")), None)
    if cold:
        out["cold"] = {"claimed": True, "method": cold}
    states = [r["kernel"] for r in per_rank if r.get("kernel")]
    if states:
        out.update(merge_kernel(states, io, nbytes))
    return out


def rank_phase(state: dict[str, Any]) -> dict[str, Any]:
    """One rank's phase as its rank file keeps it: the rank's own figures, its latency
    percentiles and its histogram state (`merge_phase` reads it back, see `reanalyse`)."""
    hist = Histogram.from_state(state["hist"])
    q = {k: v for k, v in state.items() if k not in ("hist", "name")}
    q["seconds"] = max(state["end"] - state["start"], 0.0)
    q["latency_us"] = hist.summary()
    q["hist"] = hist.encode()
    return q


def reanalyse(run_dir: Path) -> dict[str, dict[str, Any]]:
    """A finished run's phases merged again from its rank files, as `merge_phase` gave them to
    summary.json; ValueError when a rank file is missing or holds no histogram state."""
    files = list(Path(run_dir).glob("rank-[0-9]*.json"))
    if not files:
        raise ValueError(f"{run_dir}: no rank-NNNNN.json files")
    ranks = sorted((json.loads(f.read_text()) for f in files), key=lambda r: r["rank"])
    if [r["rank"] for r in ranks] != list(range(len(ranks))):
        raise ValueError(
            f"{run_dir}: rank files {[r['rank'] for r in ranks]} are not ranks 0..{len(ranks) - 1}"
        )
    out: dict[str, dict[str, Any]] = {}
    for name in ranks[0]["phases"]:
        states = []
        for r in ranks:
            q = r["phases"].get(name)
            if q is None or "hist" not in q:
                raise ValueError(
                    f"{run_dir}: rank {r['rank']}'s phase {name} has no histogram state (written "
                    f"before {SCHEMA})"
                )
            states.append(q | {"hist": Histogram.decode(q["hist"]).to_state()})
        out[name] = merge_phase(states)
    return out


def histograms(summary: dict[str, Any]) -> dict[str, Histogram]:
    """Each phase's merged latency histogram, from a summary.json."""
    return {name: Histogram.decode(p["hist"]) for name, p in summary["phases"].items()}


def compare(a: dict[str, Histogram], b: dict[str, Histogram]) -> dict[str, dict[str, Any]]:
    """Two runs' latencies, phase by phase (the phases both have): each run's percentiles (us)
    and b / a for each (None where a's is 0)."""
    out: dict[str, dict[str, Any]] = {}
    for name in a.keys() & b.keys():
        sa, sb = a[name].summary(), b[name].summary()
        keys = (*PERCENTILES, "mean", "max")
        ratio = {k: round(sb[k] / sa[k], 4) if sa[k] else None for k in keys}
        out[name] = {"a": sa, "b": sb, "b_over_a": ratio}
    return {name: out[name] for name in a if name in out}


def schema(sections: Mapping[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The whole JSON Schema of summary.json (draft 2020-12): the common part (SCHEMA_FILE) and,
    for each workload named in `sections`, its section's schema (`Workload.summary_schema`;
    None when it writes no section). `workload` must be one of those names, the summary must hold
    that workload's section (unless the run stopped: `store_gone`) and no other workload's.

    A section's `$ref`s name its own `$defs` (kept in the whole document as `<workload>.<def>`) or
    the common part's (`#/$defs/latency_us`, `hist`, `count`, ...); ValueError on any other."""
    doc = json.loads(SCHEMA_FILE.read_text())
    common = set(doc["$defs"])
    written = [name for name, section in sections.items() if section is not None]
    doc["properties"]["workload"] = {"enum": list(sections)}
    for name, section in sections.items():
        then: dict[str, Any] = {"properties": {"workload_config": {"properties": {"name": {"const": name}}}}}
        if section is not None:
            if name in doc["properties"] or name in common:
                raise ValueError(f"workload {name!r} is named as a key of the summary's common part")
            doc["$defs"].update(_section_defs(name, section, common))
            doc["properties"][name] = {"$ref": f"#/$defs/{name}"}
            then["anyOf"] = [{"required": [name]}, {"required": ["store_gone"]}]
        others = [{"required": [o]} for o in written if o != name]
        if others:
            then["not"] = {"anyOf": others}
        doc["allOf"].append(
            {"if": {"properties": {"workload": {"const": name}}, "required": ["workload"]}, "then": then}
        )
    return doc


def _section_defs(name: str, section: dict[str, Any], common: set[str]) -> dict[str, Any]:
    """`section` and its own $defs as entries of the whole document's $defs, every $ref to one
    of its own $defs renamed `<name>.<def>`."""
    own = set(section.get("$defs", {}))

    def moved(node: Any) -> Any:
        if isinstance(node, list):
            return [moved(x) for x in node]
        if not isinstance(node, dict):
            return node
        out = {k: moved(v) for k, v in node.items()}
        ref = node.get("$ref")
        if ref is not None:
            target = ref.removeprefix("#/$defs/")
            if target in own:
                out["$ref"] = f"#/$defs/{name}.{target}"
            elif target not in common or target == ref:
                raise ValueError(
                    f"{name}'s summary section: $ref {ref!r} names neither one of its own $defs "
                    f"({', '.join(sorted(own)) or 'none'}) nor the common part's ({', '.join(sorted(common))})"
                )
        return out

    # a resource's own keywords make no sense inside another document
    body = {k: v for k, v in section.items() if k not in ("$schema", "$id", "$defs")}
    defs = {f"{name}.{d}": moved(s) for d, s in section.get("$defs", {}).items()}
    return {name: moved(body), **defs}


def validate(summary: dict[str, Any], section: dict[str, Any] | None = None) -> list[str]:
    """Where `summary` breaks its schema, one line each; [] when it holds. `section` is the
    schema of its workload's section (`Workload.summary_schema()`; None: the workload writes
    none, and a section key is then an error like any unknown key)."""
    import jsonschema  # only readers of results need it, not every rank's start-up

    name = summary.get("workload")
    doc = schema({name: section} if isinstance(name, str) else {})
    validator = jsonschema.Draft202012Validator(doc)
    return [
        f"{e.json_path}: {e.message}"
        for e in sorted(validator.iter_errors(summary), key=lambda e: list(map(str, e.absolute_path)))
    ]


#: the two kernel sources disagree when they differ by more than this fraction of the larger of
#: (bytes counted, either source), plus KERNEL_SLACK bytes: diskstats counts every process on the
#: host and writeback that falls in the phase, /proc/self/io only this run's processes, and a
#: small phase carries a few MiB of metadata and journal traffic either way
KERNEL_TOLERANCE = 0.10
KERNEL_SLACK = 8 << 20


def merge_kernel(states: Sequence[dict[str, Any]], io: str | None, counted: int) -> dict[str, Any]:
    """The kernel's view of one phase over all ranks (PhaseResult.kernel, from KernelMeter).

    device_bytes: read phases, bytes read from the device by this run's processes (/proc/self/io
    read_bytes summed over ranks; exact attribution), else the device's diskstats; write phases,
    bytes the device wrote during the phase (diskstats summed over hosts: it saw them land), else
    bytes the ranks dirtied (/proc/self/io, which does not prove they reached the device).
    cache_fraction (read phases): 1 - device_bytes / bytes counted, within [0, 1]; null when no
    block device holds the data (remote, overlay: not measurable); 1 on tmpfs (memory)."""
    procs = [s["proc_self_io"] for s in states if s.get("proc_self_io") is not None]
    disks = [s for s in states if s.get("diskstats") is not None]
    devices = sorted({s["device"] for s in states if s.get("device")})
    memory = any(s.get("memory") for s in states)
    proc = None
    if procs and len(procs) == len(states):  # a rank without /proc/self/io: the sum would lie
        proc = {k: sum(p[k] for p in procs) for k in ("read_bytes", "write_bytes", "cancelled_write_bytes")}
        proc["ranks"] = len(procs)
    disk = None
    if disks:
        disk = {
            "device": ",".join(sorted({s["device"] for s in disks})),
            "read_bytes": sum(s["diskstats"]["read_bytes"] for s in disks),
            "write_bytes": sum(s["diskstats"]["write_bytes"] for s in disks),
            "hosts": len(disks),
        }
    info: dict[str, Any] = {"proc_self_io": proc, "diskstats": disk, "device": ",".join(devices) or None}
    # a background phase (an async persist, a tier-0 drain) cannot end on a barrier: each rank read
    # the device at its own end, so diskstats covers the sampling rank's span, not every rank's
    own_span = any(s.get("own_span") for s in states)
    if own_span:
        info["own_span"] = (
            "a background phase: diskstats was read at the sampling rank's own end and misses what "
            "other ranks wrote after it; /proc/self/io (every rank's own writes) is the figure, and "
            "the two are not compared"
        )
    if not devices:
        info["no_device"] = next((s["no_device"] for s in states if s.get("no_device")), "unknown")
        info["memory"] = memory
        info["fstype"] = next((s["fstype"] for s in states if s.get("fstype")), None)
    out: dict[str, Any] = {
        "device_bytes": None,
        "device_bytes_source": None,
        "fsync_calls": sum(s.get("fsync_calls", 0) for s in states),
        "fsync_seconds": round(sum(s.get("fsync_seconds", 0.0) for s in states), 6),
        "kernel": info,
    }
    dev_proc = dev_disk = None
    if io == "read":
        dev_proc = proc["read_bytes"] if proc and devices else None
        dev_disk = disk["read_bytes"] if disk else None
        out["cache_fraction"] = None
        out["cache_fraction_source"] = None
        if memory:
            out["device_bytes"], out["device_bytes_source"] = 0, f"{info.get('fstype')}: no device, memory"
            if counted:
                out["cache_fraction"] = 1.0
                out["cache_fraction_source"] = f"{info.get('fstype')}: file data is memory by definition"
        else:
            if dev_proc is not None:
                out["device_bytes"], out["device_bytes_source"] = dev_proc, "proc_self_io"
            elif dev_disk is not None:
                out["device_bytes"], out["device_bytes_source"] = dev_disk, f"diskstats {disk['device']}"
            if out["device_bytes"] is not None and counted:
                out["cache_fraction"] = round(min(1.0, max(0.0, 1 - out["device_bytes"] / counted)), 6)
                out["cache_fraction_source"] = out["device_bytes_source"] + (
                    f" on {info['device']}" if out["device_bytes_source"] == "proc_self_io" else ""
                )
    elif io == "write":
        dev_proc = proc["write_bytes"] - proc["cancelled_write_bytes"] if proc and devices else None
        dev_disk = disk["write_bytes"] if disk and not own_span else None
        if dev_disk is not None:
            out["device_bytes"], out["device_bytes_source"] = dev_disk, f"diskstats {disk['device']}"
        elif dev_proc is not None:
            out["device_bytes"] = dev_proc
            out["device_bytes_source"] = "proc_self_io (bytes dirtied: not proof they reached the device)"
    if dev_proc is not None and dev_disk is not None:
        tol = KERNEL_TOLERANCE * max(counted, dev_proc, dev_disk) + KERNEL_SLACK
        info["tolerance"] = (
            f"{KERNEL_TOLERANCE:.0%} of max(bytes counted, either source) + {KERNEL_SLACK >> 20} MiB"
        )
        info["disagree"] = abs(dev_proc - dev_disk) > tol
        if info["disagree"]:
            what = "read from" if io == "read" else "written to"
            info["disagreement"] = (
                f"bytes {what} {disk['device']}: /proc/self/io says {dev_proc:,}, diskstats says "
                f"{dev_disk:,} (they differ by more than {KERNEL_TOLERANCE:.0%} of {max(counted, dev_proc, dev_disk):,} "
                f"+ {KERNEL_SLACK >> 20} MiB; diskstats counts every process on the host and writeback "
                "in the phase, /proc/self/io this run's reads and the bytes it dirtied)"
            )
            if io == "write" and dev_disk < dev_proc:
                info["disagreement"] += (
                    "; bytes dirtied but not written back by the phase's end were still in the page cache"
                    " (no fsync)"
                )
            elif io == "write" and out["fsync_calls"]:
                info["disagreement"] += (
                    f"; the device wrote more than the run: the file system's journal and metadata for "
                    f"{out['fsync_calls']:,} fsync(s), or other writers on the host"
                )
    return out


def cold_check(phases: dict[str, dict[str, Any]], max_cache_fraction: float) -> tuple[list[str], list[str]]:
    """(reasons the run is invalid, warnings) from the phases that claim cold reads, and the
    kernel sources' disagreements. Called by the harness on every run."""
    reasons: list[str] = []
    warnings: list[str] = []
    for name, p in phases.items():
        k = p.get("kernel") or {}
        if k.get("disagree"):
            warnings.append(f"{name}: kernel sources disagree: {k['disagreement']}")
        if not p.get("cold") or not p.get("bytes"):
            continue
        cf = p.get("cache_fraction")
        if k.get("memory"):
            reasons.append(
                f"phase {name} claims cold reads but its data is on {k.get('fstype')}, whose reads are "
                f"memory by definition (cache_fraction 1.0, source {p.get('cache_fraction_source')})"
            )
        elif cf is None:
            warnings.append(f"{name}: cold not verified: {k.get('no_device') or 'no kernel counters'}")
        elif cf > max_cache_fraction:
            reasons.append(
                f"phase {name} claims cold reads but the kernel says {cf:.1%} of its {p['bytes']:,} bytes "
                f"came from the page cache (cache_fraction {cf:.3f} > run.max_cache_fraction "
                f"{max_cache_fraction:g}; measured by {p.get('cache_fraction_source')}; made cold by "
                f"{p['cold'].get('method')})"
            )
    return reasons, warnings


#: numeric extras whose merge over ranks is the largest value, not the sum: a time on the phase's
#: clock, or a value all ranks agreed on (the stonewall's, see PhaseRunner.run)
MAX_EXTRAS = frozenset({"stonewall_seconds", "stonewall_target"})


def _sum_extras(extras: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for e in extras:
        for k, v in e.items():
            if k in MAX_EXTRAS and isinstance(v, int | float):
                out[k] = max(out.get(k, v), v)
            elif isinstance(v, int | float) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
            else:
                out.setdefault(k, v)
    return out


def host_info() -> dict[str, Any]:
    from importlib import metadata  # rank 0, once: 15 ms of import every rank would pay

    versions = {}
    for pkg in ("dlio-ext", "numpy", "boto3", "obstore", "mpi4py", "hydra-core", "dlio-benchmark"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    try:
        import psutil

        mem = psutil.virtual_memory().total
    except Exception:  # psutil is optional for this record only
        mem = None
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_bytes": mem,
        "python": platform.python_version(),
        "packages": versions,
    }


def write_json(path: Path, obj: Any) -> None:
    """Write-then-rename, so a reader never sees a half-written file."""
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def write_yaml(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(yaml.safe_dump(obj, sort_keys=False))
    os.replace(tmp, path)


def write_phases_csv(path: Path, phases: dict[str, dict[str, Any]]) -> None:
    cols = ["phase", "ops", "bytes", "errors", "seconds", "ops_per_s", "GBps"]
    cols += [f"lat_{k}_us" for k in LATENCY_KEYS]
    cols += ["rank_s_min", "rank_s_p50", "rank_s_max", "straggler_ratio", "device_bytes", "cache_fraction"]
    tmp = path.with_suffix(".csv.partial")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for name, p in phases.items():
            w.writerow(
                [name, p["ops"], p["bytes"], p["errors"], p["seconds"], p["ops_per_s"], p["GBps"]]
                + [p["latency_us"][k] for k in LATENCY_KEYS]
                + [p["rank_seconds"][k] for k in ("min", "p50", "max")]
                + [p["straggler_ratio"], p.get("device_bytes"), p.get("cache_fraction")]
            )
    os.replace(tmp, path)
