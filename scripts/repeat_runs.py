"""Run one `dlio-ext run ...` command N times and count the invalid runs: a failure that shows
once in 24 runs (issue #10's false corruption at the default scale) is caught only by repeating.

    .venv/bin/python scripts/repeat_runs.py [-n 20] [--np K] [--results-dir D] -- run <args...>

Everything after `--` is what `dlio-ext` is given (starting with `run`); with --np it runs under
mpirun with K ranks on this machine. Each run prints one line: valid or INVALID with the reason
(summary.json's `invalid_reasons`, else the last line it printed) and where its results are; then
the tally. The exit status is 0 only if every run was valid.

The runs use this checkout's dlio_ext. A local S3 server is found as every run finds it: through
the environment `dlio-ext s3-server start` prints (eval it first).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib


def _verdict(code: int, out: str, err: str) -> tuple[bool, str, Path | None]:
    """(valid, why not, results directory) of one finished run."""
    where = benchlib.results_dir(out)
    summary = where / "summary.json" if where is not None else None
    if summary is None or not summary.is_file():
        last = (err.strip() or out.strip() or "no output").splitlines()[-1]
        return False, f"exit {code}, no summary: {last}", where
    s = json.loads(summary.read_text())
    if code == 0 and s.get("valid") is True:
        return True, "", where
    reasons = "; ".join(str(r) for r in s.get("invalid_reasons") or []) or f"exit {code}"
    first = next(
        (p.get("first_error") for p in (s.get("phases") or {}).values() if p.get("first_error")), None
    )
    return False, reasons + (f" (first error: {first})" if first else ""), where


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=20, help="how many times (default 20)")
    ap.add_argument("--np", type=int, default=0, help="run under mpirun with this many ranks")
    ap.add_argument(
        "--results-dir", help="run.results_dir for every run (default: a new temporary directory)"
    )
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- run <dlio-ext arguments>")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or command[0] != "run":
        ap.error("give the dlio-ext command after --, starting with 'run' (e.g. -- run workload=...)")
    if args.runs < 1 or args.np < 0:
        ap.error("-n must be >= 1 and --np >= 0")
    if not any(a.startswith("run.results_dir=") for a in command):
        results = args.results_dir or tempfile.mkdtemp(prefix="repeat-runs-")
        command = [*command, f"run.results_dir={results}"]
    cmd = [*(benchlib.mpirun(args.np, SystemExit) if args.np else []), *benchlib.dlio_ext_module(), *command]
    env = {**os.environ, **benchlib.OMPI_ENV, "PYTHONPATH": str(benchlib.ROOT)}
    print(f"# {benchlib.command_line(argv)}", flush=True)
    print(f"# each run: {' '.join(cmd)}", flush=True)
    invalid = 0
    for i in range(1, args.runs + 1):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        valid, why, where = _verdict(p.returncode, p.stdout, p.stderr)
        invalid += not valid
        state = "valid" if valid else f"INVALID: {why}"
        print(f"run {i}/{args.runs}: {state} ({time.perf_counter() - t0:.1f} s) results: {where}", flush=True)
    print(f"tally: {args.runs - invalid} valid, {invalid} invalid of {args.runs}", flush=True)
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
