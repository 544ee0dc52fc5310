"""A finished run written into mlpstorage's results layout, with the files its checker reads.

    <results>/<closed|open>/<org>/results/<system>/checkpointing/<model>/results.json
                                                                       /<YYYYMMDD_HHmmss>/
    <results>/<closed|open>/<org>/results/<system>/kv_cache/<model>/run/<YYYYMMDD_HHmmss>/

The layout and file names are mlpstorage's (mlpstorage_py/rules/utils.py
`generate_output_location`; Rules.md 2.1.21-2.1.26 and 2.29); the keys of summary.json and of
the `<benchmark>_<timestamp>_metadata.json` are the ones its submission checker and `reportgen`
read (docs/mlperf.md lists them and where each value comes from). Every file the run left is
copied, untouched, under `dlio_ext/` in the timestamp directory, so the export can be checked
against the run it came from.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

from dlio_ext.errors import UsageError
from dlio_ext.metrics.results import write_json, write_yaml
from dlio_ext.mlperf.rules import MODELS, OPTIONS, GiB, Rule, Run

#: dlio-ext's KV models as kv-cache.py names them (the results directory's model level)
KV_MODELS = {"llama3_8b": "llama3.1-8b", "llama3_70b": "llama3.1-70b-instruct"}
DTYPES = {2: "fp16", 4: "fp32"}


def _local(utc: str) -> dt.datetime:
    """A UTC ISO time as the local wall clock: mlpstorage names directories and stamps summaries
    in the local time zone of the run (Rules.md 2.1.23), without an offset, as DLIO does."""
    return dt.datetime.fromisoformat(utc).astimezone().replace(tzinfo=None)


def timestamp(run: Run) -> str:
    return _local(run.summary["started_utc"]).strftime("%Y%m%d_%H%M%S")


def benchmark(run: Run) -> tuple[str, str]:
    """(mlpstorage's benchmark type, model directory name)."""
    if run.workload == "checkpoint_burst":
        model = MODELS.get(run.preset)
        return "checkpointing", model.mlperf if model else run.preset
    option = OPTIONS.get(run.preset)
    name = str((run.section.get("model") or {}).get("name", run.preset))
    return "kv_cache", option.mlperf if option else KV_MODELS.get(name, name)


def leaf(run: Run, results: Path, division: str, org: str, system: str) -> Path:
    kind, model = benchmark(run)
    base = results / division / org / "results" / system / kind / model
    return base / timestamp(run) if kind == "checkpointing" else base / "run" / timestamp(run)


def refuse_second(path: Path) -> None:
    """MLPerf takes one invocation per checkpointing model (10 writes then 10 reads; Rules.md
    2.1.23, 4.7.1) and one timestamp directory per run: never add to or overwrite a run."""
    parent = path.parent
    runs = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
    if path.exists() or (path.parent.name != "run" and runs):
        raise UsageError(
            f"{parent} already holds {', '.join(runs)}; MLPerf takes one run there: "
            "export into another --results or --system, or remove it"
        )


def _df(paths: list[str]) -> str:
    """`df` of the storage and the results, as mlpstorage records it for its file-system check
    (Rules.md 4.4.2: the checker parses the header 'Filesystem ... Use% Mounted on')."""
    try:
        p = subprocess.run(
            ["df", "-k", *paths],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "LC_ALL": "C"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"df failed: {type(exc).__name__}\n"
    return p.stdout if p.returncode == 0 else f"df failed: {p.stderr.strip()}\n"


def _existing(path: str) -> str:
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return str(p)


def _stdout_log(run: Run, rules: list[Rule], results: Path, division: str) -> str:
    storage = run.summary.get("storage") or {}
    paths = [str(results), str(run.dir)]
    if storage.get("backend") == "posix":
        paths.insert(0, _existing(str(storage.get("root"))))
    lines = [
        f"dlio-ext mlperf: export of {run.dir} ({run.workload}) as {division.upper()}",
        f"command: {run.summary.get('command')}",
        f"started {run.summary.get('started_utc')}, finished {run.summary.get('finished_utc')}",
        "",
        "MLPerf Storage v3 rules:",
        *(r.line() for r in rules),
        "",
        "df of the storage root, the results and the run directory (taken at export):",
    ]
    return "\n".join(lines) + "\n" + _df(paths) + "\n"


def _stats(per_checkpoint: list[dict[str, Any]], prefix: str) -> dict[str, float]:
    """DLIO's checkpoint metrics: GiB/s and seconds, mean and population stdev over bursts
    (DLIO statscounter's save_/load_checkpoint_*); a burst lasts from the first rank's first
    byte to the last rank's last close, not rank 0's time as in DLIO."""
    rates = [c["bytes"] / GiB / c["burst_seconds"] for c in per_checkpoint if c.get("burst_seconds")]
    secs = [float(c["burst_seconds"]) for c in per_checkpoint if c.get("burst_seconds")]
    if not rates:
        return {}
    return {
        f"{prefix}_checkpoint_io_mean_GB_per_second": statistics.fmean(rates),
        f"{prefix}_checkpoint_io_stdev_GB_per_second": statistics.pstdev(rates),
        f"{prefix}_checkpoint_duration_mean_seconds": statistics.fmean(secs),
        f"{prefix}_checkpoint_duration_stdev_seconds": statistics.pstdev(secs),
    }


def _params(run: Run, fsync: bool) -> dict[str, Any]:
    """The run as DLIO's workload config (configs/dlio/workload/llama3_*.yaml) would state it."""
    cb, wc = run.section, run.summary.get("workload_config") or {}
    m = cb.get("model") or {}
    model = MODELS.get(run.preset)
    return {
        "model": {
            "name": model.dlio if model else run.preset,
            "type": "transformer",
            "num_layers": m.get("num_layers"),
            "model_datatype": DTYPES.get(m.get("model_dtype_bytes"), m.get("model_dtype_bytes")),
            "optimizer_datatype": DTYPES.get(m.get("optimizer_dtype_bytes"), m.get("optimizer_dtype_bytes")),
            "parallelism": {
                "pipeline": m.get("pp"),
                "tensor": m.get("tp"),
                "zero_stage": m.get("zero_stage"),
            },
            "transformer": {
                k: m.get(k)
                for k in (
                    "vocab_size",
                    "hidden_size",
                    "ffn_hidden_size",
                    "num_attention_heads",
                    "num_kv_heads",
                )
            },
        },
        "workflow": {"generate_data": False, "train": False, "checkpoint": True},
        "checkpoint": {
            "checkpoint_folder": _folder(run),
            "time_between_checkpoints": wc.get("compute_seconds"),
            "num_checkpoints_write": wc.get("checkpoints"),
            "num_checkpoints_read": wc.get("restores"),
            "fsync": fsync,
        },
    }


def _folder(run: Run) -> str:
    storage = run.summary.get("storage") or {}
    if storage.get("backend") == "posix":
        return str(storage.get("root"))
    return f"{storage.get('backend')}://{storage.get('bucket', '')}/{storage.get('prefix', '')}".rstrip("/")


def _overrides(run: Run) -> list[str]:
    words = shlex.split(str(run.summary.get("command") or ""))
    return [w for w in words[2:] if "=" in w] if words[:2] == ["dlio-ext", "run"] else words


def _common(
    run: Run, rules: list[Rule], results: Path, division: str, org: str, system: str
) -> dict[str, Any]:
    kind, model = benchmark(run)
    return {
        "benchmark_type": kind,
        "model": model,
        "command": "run",
        "run_datetime": timestamp(run),
        "num_processes": run.summary.get("ranks"),
        "verification": division,
        "runtime": (_local(run.summary["finished_utc"]) - _local(run.summary["started_utc"])).total_seconds(),
        "args": {
            "model": model,
            "num_processes": run.summary.get("ranks"),
            "results_dir": str(results),
            "orgname": org,
            "systemname": system,
            "mode": division,
            "command": "run",
            "closed": division == "closed",
        },
        "dlio_ext": {
            "run_dir": str(run.dir),
            "command": run.summary.get("command"),
            "schema": run.summary.get("schema"),
            "valid": run.summary.get("valid"),
            "rules": [r.__dict__ for r in rules],
        },
    }


def _checkpointing(run: Run, rules: list[Rule], out: Path, meta: dict[str, Any]) -> None:
    cb, s = run.section, run.summary
    fsync = next(r.met for r in rules if r.id == "4.3.2")
    metric = {"checkpoint_size_GB": int(cb.get("bytes_per_checkpoint") or 0) / GiB}
    metric |= _stats((cb.get("write") or {}).get("per_checkpoint") or [], "save")
    metric |= _stats((cb.get("restore") or {}).get("per_checkpoint") or [], "load")
    hosts = int(s.get("hosts") or 1)
    memory = run.host.get("memory_bytes")
    write_json(
        out / "summary.json",
        {
            "num_accelerators": s.get("ranks"),
            "num_hosts": hosts,
            "hostname": run.host.get("hostname"),
            # host.json records rank 0's host; the others are taken to be alike
            "host_memory_GB": [memory / GiB] * hosts if memory else [],
            "host_cpu_count": [run.host.get("cpus")] * hosts,
            "start": _local(s["started_utc"]).isoformat(),
            "end": _local(s["finished_utc"]).isoformat(),
            "metric": metric,
        },
    )
    params = _params(run, fsync)
    wc = s.get("workload_config") or {}
    subset = int((cb.get("model") or {}).get("layout_ranks") or 0) > int(s.get("ranks") or 0)
    meta["args"] |= {
        "checkpoint_folder": _folder(run),
        "num_checkpoints_write": wc.get("checkpoints"),
        "num_checkpoints_read": wc.get("restores"),
        "hosts": run.host.get("hosts") or [],
    }
    meta |= {
        "parameters": params,
        "override_parameters": {},
        "params_dict": {"checkpoint.mode": "subset" if subset else "default"},
        "combined_params": params,
        "yaml_params": params,
        "metrics": metric,
    }
    write_json(out / f"checkpointing_{meta['run_datetime']}_metadata.json", meta)
    per_epoch: dict[str, Any] = {}
    for prefix, part in (("save", "write"), ("load", "restore")):
        for c in (cb.get(part) or {}).get("per_checkpoint") or []:
            seconds = float(c.get("burst_seconds") or 0)
            per_epoch[f"{prefix}_ckpt{int(c['checkpoint']) + 1}"] = {
                "duration": seconds,
                "throughput": c["bytes"] / GiB / seconds if seconds else None,
                "bytes": c["bytes"],
                "phase": c.get("phase"),
            }
    write_json(out / "per_epoch_stats.json", {"1": per_epoch})
    ranks = sorted(run.dir.glob("rank-*.json"))
    write_json(out / "output.json", {"ranks": [p.name for p in ranks], "phases": s.get("phases")})
    if (run.dir / "run.log").is_file():
        shutil.copyfile(run.dir / "run.log", out / "dlio.log")
    else:
        (out / "dlio.log").write_text("")
    cfg = out / "dlio_config"
    cfg.mkdir()
    if (run.dir / "config.yaml").is_file():
        shutil.copyfile(run.dir / "config.yaml", cfg / "config.yaml")
    else:
        write_yaml(cfg / "config.yaml", {})
    overrides = _overrides(run)
    write_yaml(cfg / "overrides.yaml", overrides)
    write_yaml(
        cfg / "hydra.yaml",
        {
            "hydra": {
                "mode": "RUN",
                "run": {"dir": str(run.dir)},
                "job": {"name": "dlio-ext", "override_dirname": ",".join(overrides)},
                "runtime": {"version": (run.host.get("packages") or {}).get("hydra-core")},
                "overrides": {"task": overrides},
            }
        },
    )


def _kv_cache(run: Run, rules: list[Rule], out: Path, meta: dict[str, Any]) -> None:
    kv, wc = run.section, run.summary.get("workload_config") or {}
    option = OPTIONS.get(run.preset)
    number = str(option.number if option else 0)
    read, write = kv.get("read") or {}, kv.get("write") or {}
    per_rank = kv.get("per_rank") or []
    # mlpstorage's aggregation keys (Rules.md 6.3.4); bandwidth in GiB/s as kv-cache.py's *_gbps
    aggregated = {
        "aggregated_read_bandwidth_gbps": (read.get("bytes") or 0) / GiB / read["seconds"]
        if read.get("seconds")
        else 0.0,
        "aggregated_write_bandwidth_gbps": (write.get("bytes") or 0) / GiB / write["seconds"]
        if write.get("seconds")
        else 0.0,
        "aggregated_storage_throughput_tokens_per_sec": (kv.get("storage_tokens_per_s") or {}).get("total"),
        "aggregated_device_read_p95_ms": read.get("max_rank_p95_ms"),
        "aggregated_device_write_p95_ms": write.get("max_rank_p95_ms"),
        "total_ranks": run.summary.get("ranks"),
        "cpu_tier_ranks": [r["rank"] for r in per_rank if not r.get("read_p95_ms")],
        "trials": 1,
    }
    write_json(
        out / "kvcache_run_summary.json",
        {"options": {number: aggregated}, "mlperf_v3_style": kv.get("mlperf_v3_style")},
    )
    durability = str((kv.get("durability") or {}).get("policy", ""))
    meta["args"] |= {
        "cache_dir": _folder(run),
        "num_users": wc.get("users"),
        "duration": wc.get("duration_s"),
    }
    meta |= {
        "parameters": {
            "option": int(number),
            "model": meta["model"],
            "num_users": wc.get("users"),
            "duration": wc.get("duration_s"),
            "gpu_mem_gb": 0,
            "cpu_mem_gb": int(wc.get("cpu_tier_bytes") or 0) / GiB,
            "max_concurrent_allocs": wc.get("max_inflight"),
            "generation_mode": "none" if not wc.get("prefill_compute_s_per_token") else "simulated",
            "seed": (run.config.get("run") or {}).get("seed"),
            "trials": 1,
            "fsync": durability.startswith("fsync"),
        },
        "override_parameters": {},
        "metrics": aggregated,
    }
    write_json(out / f"kv_cache_{meta['run_datetime']}_metadata.json", meta)


def write(run: Run, rules: list[Rule], results: Path, division: str, org: str, system: str) -> Path:
    """Write the run under `division` and return its timestamp directory. Written whole into a
    temporary sibling, then renamed: an export that fails leaves nothing behind."""
    path = leaf(run, results, division, org, system)
    refuse_second(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        meta = _common(run, rules, results, division, org, system)
        kind = meta["benchmark_type"]
        prefix = "checkpointing_run" if kind == "checkpointing" else "kvcache_run"
        (tmp / f"{prefix}.stdout.log").write_text(_stdout_log(run, rules, results, division))
        (tmp / f"{prefix}.stderr.log").write_text(
            "".join(f"warning: {w}\n" for w in run.summary.get("warnings") or [])
        )
        write_json(tmp / "mlperf_rules.json", {"division": division, "rules": [r.__dict__ for r in rules]})
        (_checkpointing if kind == "checkpointing" else _kv_cache)(run, rules, tmp, meta)
        shutil.copytree(run.dir, tmp / "dlio_ext")
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if kind == "checkpointing":
        # one results.json per model directory (Rules.md 2.1.22): the figures and the verdict
        m = meta["metrics"]
        write_json(
            path.parent / "results.json",
            {
                "model": meta["model"],
                "runs": [path.name],
                "write_GiB_per_second": m.get("save_checkpoint_io_mean_GB_per_second"),
                "write_duration_seconds": m.get("save_checkpoint_duration_mean_seconds"),
                "read_GiB_per_second": m.get("load_checkpoint_io_mean_GB_per_second"),
                "read_duration_seconds": m.get("load_checkpoint_duration_mean_seconds"),
                "division": division,
                "rules_broken": [f"{r.id} {r.name}" for r in rules if not r.met],
            },
        )
    return path
