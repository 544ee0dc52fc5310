"""`dlio-ext mlperf`: a finished run in MLPerf Storage v3's results layout, with its rule check.

dlio-ext mlperf RUN_DIR --results DIR --org ORG --system NAME [--division closed|open]

RUN_DIR is a finished checkpoint_burst or kv_cache run. Every v3 rule of its workload is checked
(`rules`), one line each, met or not and why; the run is then written (`export`) under
`<DIR>/<division>/<ORG>/results/<NAME>/...` with the files mlpstorage's checker and reportgen
read. Without --division a run that meets every rule goes under closed and any other under open;
--division closed refuses a run that breaks a rule (exit 1, naming each), --division open
always writes it under open. systems/<NAME>.yaml and .pdf (the system description) are the
submitter's: docs/mlperf-system.yaml is a template of the v3 schema.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from dlio_ext.errors import UsageError
from dlio_ext.mlperf import export, rules

DIVISIONS = ("closed", "open")
#: org and system become directory names (Rules.md 2.1.1: a POSIX file name, no slash)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, as every bad input
        raise UsageError(f"mlperf: {message}")


def _name(flag: str, value: str) -> str:
    if not NAME.fullmatch(value):
        raise UsageError(
            f"{flag} {value!r}: letters, digits, '.', '_', '+' or '-' only (it names a directory)"
        )
    return value


def main(argv: Sequence[str]) -> int:
    p = _Parser(prog="dlio-ext mlperf", description="Write a run into MLPerf Storage v3's results layout.")
    p.add_argument("run_dir", help="a finished checkpoint_burst or kv_cache run directory")
    p.add_argument("--results", required=True, help="the submission's results directory")
    p.add_argument("--org", required=True, help="the submitting organisation")
    p.add_argument("--system", required=True, help="the system under test's name")
    p.add_argument("--division", choices=DIVISIONS, help="default: closed when every rule is met, else open")
    args = p.parse_args(list(argv))
    org, system = _name("--org", args.org), _name("--system", args.system)
    run = rules.load(Path(args.run_dir).resolve())
    results = Path(args.results).resolve()
    if results == run.dir or run.dir in results.parents:
        raise UsageError(f"--results {results}: inside the run directory; give another directory")
    checked = rules.check(run, results)
    broken = [r for r in checked if not r.met]
    division = args.division or ("open" if broken else "closed")
    if division == "closed" and broken:
        print(
            f"dlio-ext: refusing --division closed: {run.dir} breaks {len(broken)} MLPerf Storage v3 rule(s):",
            file=sys.stderr,
        )
        for r in broken:
            print(f"  {r.line()}", file=sys.stderr)
        return 1
    try:
        export.refuse_second(export.leaf(run, results, division, org, system))
    except OSError as exc:
        raise UsageError(
            f"--results {results}: cannot read it ({exc.strerror or type(exc).__name__})"
        ) from None
    kind, model = export.benchmark(run)
    ranks, hosts = run.summary.get("ranks"), run.summary.get("hosts")
    print(f"MLPerf Storage v3 rules, {kind} {model} ({ranks} rank(s) on {hosts} host(s)):")
    for r in checked:
        print(f"  {r.line()}")
    try:
        path = export.write(run, checked, results, division, org, system)
    except OSError as exc:
        raise UsageError(
            f"--results {results}: cannot write there ({exc.strerror or type(exc).__name__})"
        ) from None
    if broken:
        print(f"{len(broken)} rule(s) broken: written under open, never closed")
    systems = results / division / org / "systems"
    if not (systems / f"{system}.yaml").is_file():
        print(f"{systems}/{system}.yaml and .pdf: not there yet; start from docs/mlperf-system.yaml")
    print(f"{division.upper()}: {path}")
    return 0


__all__ = ["main"]
