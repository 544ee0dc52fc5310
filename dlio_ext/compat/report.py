"""The report of one or more targets, side by side: a terminal table, JSON and Markdown.

A report is the dict `compat.run()` builds: {"suite", "probes", "targets": [run_target(...), ...]}.
Nothing here sees a credential; the runner scrubbed every string it put in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dlio_ext.compat.probes import GROUPS, REGISTRY

FAULTS_DOC = (
    "`dlio-ext s3-faults [--scenario proxy|restart|wrong-credentials|all]` runs a small storage_sweep "
    "(write, then verified sequential and random reads) through faults, then reads every stored object "
    "back directly from the store (bypassing any proxy) to show that each acknowledged write is there "
    "and intact (stamp, size, xxh3). The default, `all`, runs every scenario that applies.\n\n"
    "- `proxy`: a loopback proxy in front of the store answers a seeded fraction of requests `503 "
    "SlowDown` (`--slowdown`), cuts them by a TCP reset before or after the store applied them "
    "(`--reset`), delays them (`--latency`, `--latency-ms`), or, with `--corrupt`, flips one byte of a "
    "GET answer. Reported: faults injected, the client's retries (throttled ones too) and failed "
    "operations.\n"
    "- `restart`: a quarter into the writes the store is stopped, left down `--outage` seconds and "
    "started again on the same ports, data directory and keys while the sweep retries "
    "(`--restart-retries`, `--restart-backoff-base`, `--restart-backoff-max`; every request is delayed "
    "`--restart-latency-ms` so the sweep outlasts the stop). Reported: outage length, requests failed "
    "in it, retries and failed operations, time to recover (first successful request after the restart "
    "began), whether the run ended valid, and the read-back of every write acknowledged before the stop. "
    "It needs a SeaweedFS that s3-faults starts itself: with no endpoint (no `--endpoint`, no "
    "`AWS_ENDPOINT_URL`) or with `--local` one is started in `OUT/s3-server` and stopped at the end; a "
    "store given by endpoint is never restarted (`--scenario restart` is refused, `all` skips it). "
    "`--server-dir D` names a SeaweedFS started by `dlio-ext s3-server start --dir D` as the store: its "
    "endpoint and keys come from D, the restart scenario restarts it on the same ports, data and keys, "
    "and it is left running (`dlio-ext evaluate` does this for a target with `local_dir`).\n"
    "- `wrong-credentials`: the sweep with a wrong secret must stop at once with one line (exit 2) and "
    "write nothing.\n\n"
    "`s3-faults.json` and `s3-faults.md` go to `--out`, one section per scenario. Exit status 1 when an "
    "acknowledged write is missing or wrong in the store (reported as `DATA LOST`), the sweep caught a "
    "corrupted read, a run said valid although operations failed, or wrong credentials were not refused; "
    "a run that ended invalid with its failures counted but its data intact exits 0."
)
MARK = {"pass": "pass", "differs": "DIFFERS", "unsupported": "unsupported", "error": "ERROR"}


def _rows(report: dict[str, Any]) -> list[tuple[str, list[dict[str, Any] | None]]]:
    """(probe id, [that probe's result per target]) in catalogue order."""
    by_target = [{r["id"]: r for r in t["results"]} for t in report["targets"]]
    ids = [i for i in REGISTRY if any(i in t for t in by_target)]
    return [(i, [t.get(i) for t in by_target]) for i in ids]


def table(report: dict[str, Any]) -> str:
    """Probe per row, target per column; then one line per result that is not a pass."""
    names = [t["name"] for t in report["targets"]]
    rows = [(i, [MARK[r["outcome"]] if r else "-" for r in rs]) for i, rs in _rows(report)]
    widths = [max(len("probe"), *(len(i) for i, _ in rows))] + [max(len(n), 11) for n in names]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()  # noqa: E731
    out = [line(["probe", *names]), line(["-" * w for w in widths])]
    out += [line([i, *cells]) for i, cells in rows]
    out.append("")
    for t in report["targets"]:
        c = t["counts"]
        out.append(
            f"{t['name']}: {c['pass']} pass, {c['differs']} differs, {c['unsupported']} unsupported, "
            f"{c['error']} error in {t['seconds']:.1f} s; prefix empty afterwards: {t['empty_after']}"
        )
    notes = [
        f"  {t['name']} {r['id']}: {r['outcome']}: {r['observed']} -> {r['why']}"
        for t in report["targets"]
        for r in t["results"]
        if r["outcome"] != "pass"
    ]
    if notes:
        out += ["", "not as AWS documents (what it means for an AI workload):", *notes]
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    names = [t["name"] for t in report["targets"]]
    out = ["# S3 compatibility report", ""]
    out += ["| target | endpoint | pass | differs | unsupported | error | seconds | prefix empty after |"]
    out += ["|---|---|---|---|---|---|---|---|"]
    for t in report["targets"]:
        c = t["counts"]
        out.append(
            f"| {_cell(t['name'])} | {_cell(t['endpoint'])} | {c['pass']} | {c['differs']} | "
            f"{c['unsupported']} | {c['error']} | {t['seconds']} | {t['empty_after']} |"
        )
    out += ["", "| probe | " + " | ".join(map(_cell, names)) + " |", "|---" * (len(names) + 1) + "|"]
    for i, rs in _rows(report):
        cells = [f"**{MARK[r['outcome']]}** {_cell(r['observed'])}" if r else "-" for r in rs]
        out.append(f"| `{i}` | " + " | ".join(cells) + " |")
    out += ["", "## What the differences mean", ""]
    for i, rs in _rows(report):
        bad = [(n, r) for n, r in zip(names, rs, strict=True) if r and r["outcome"] != "pass"]
        if bad:
            probe = REGISTRY[i]
            out.append(f"- `{i}`: AWS: {probe.aws}. AI impact: {probe.why}.")
            out += [f"  - {_cell(n)}: {r['outcome']}: {_cell(r['observed'])}" for n, r in bad]
    return "\n".join(out) + "\n"


def write(report: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "s3-compat.json", out_dir / "s3-compat.md"]
    paths[0].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    paths[1].write_text(markdown(report))
    return paths


def catalogue_markdown() -> str:
    """docs/s3-compat.md: every probe, generated from the registry (`s3-compat --list --markdown`)."""
    out = [
        "# S3 compatibility probes",
        "",
        "<!-- generated by `dlio-ext s3-compat --list --markdown`; do not edit by hand -->",
        "",
        "`dlio-ext s3-compat` sends real requests for each probe below and classifies the answer as "
        "`pass`, `differs` (the store answered, not as AWS documents), `unsupported` (the store "
        "says it does not implement it) or `error` (the probe could not run, e.g. `client lacks "
        "awscrt`). Everything is written under `<--prefix>/dlio-ext-compat-<random>/` and removed "
        "afterwards; a bucket holding other objects is refused unless `--prefix` is given.",
        "",
        "CRC32C and CRC64NVME (`integrity.crc32c`, `integrity.crc64nvme`, `integrity.wrong-crc32c`) "
        "are computed with awscrt, the library the SDKs use for them (installed by `scripts/setup.sh` "
        "through boto3's `crt` extra), and sent as the `x-amz-checksum-*` header; a pass names the "
        "value the store echoed. Once awscrt is importable botocore would also sign every request "
        "and compute CRC32 with it, so dlio-ext sets `BOTO_DISABLE_CRT=true` when it is imported "
        "(unless the variable is set): the S3 backend's boto3 driver and the benchmarks' boto3 "
        "baselines run the same code as without awscrt (`tests/test_s3_compat.py` checks the "
        "signer and the CRC32 class).",
        "",
        f"{len(REGISTRY)} probes.",
    ]
    for group in GROUPS:
        probes = [p for p in REGISTRY.values() if p.group == group]
        out += ["", f"## {group}", "", "| id | what AWS documents | why it matters for AI workloads |"]
        out.append("|---|---|---|")
        out += [f"| `{p.id}` | {_cell(p.aws)} | {_cell(p.why)} |" for p in probes]
    out += ["", "## Fault injection: `dlio-ext s3-faults`", "", FAULTS_DOC]
    return "\n".join(out) + "\n"


def catalogue_text() -> str:
    return "\n".join(f"{p.id:40s} {p.aws}" for p in REGISTRY.values())
