"""`dlio-ext evaluate`: run one suite on several stores and write one scorecard.

dlio-ext evaluate --targets stores.yaml [--suite suite.yaml] [--out DIR]

`targets.py` reads and checks the stores, `suite.py` the suite and its steps (subprocesses of the
real CLI), `tco.py` the cost formulas, `scorecard.py` the JSON and HTML. Everything that can be
checked is checked before the first step starts (files, keys, credential variables, endpoints,
every run's arguments): bad input is one line and exit 2, with nothing run. Docs: docs/evaluate.md.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from dlio_ext.errors import OneLineParser, UsageError
from dlio_ext.evaluate import scorecard
from dlio_ext.evaluate.suite import RUN_ITEMS, Outcome, execute, load_suite, plan, validate
from dlio_ext.evaluate.targets import check_target, load_targets

REPORT_TIMEOUT_S = 600.0


def report_command_exists() -> bool:
    """Whether this dlio-ext has `dlio-ext report RUN_DIR` (asked of the CLI itself)."""
    done = subprocess.run(
        [sys.executable, "-m", "dlio_ext.cli", "--help"], capture_output=True, text=True, timeout=120
    )
    return any(ln.strip().startswith("dlio-ext report") for ln in done.stdout.splitlines())


def _first(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def _report(run_dir: Path) -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "dlio_ext.cli", "report", str(run_dir)],
        capture_output=True, text=True, timeout=REPORT_TIMEOUT_S,
    )  # fmt: skip
    return done.returncode == 0 and (run_dir / "report.html").is_file()


def link_reports(outcomes: list[Outcome], out: Path, with_report: bool) -> None:
    """Give every step the page its figures link to (relative to `out`): a run's report.html,
    rendered by `dlio-ext report` (a set of trials: the set's page, else each trial's, linked to
    the first), else its summary.json (or trials.json); s3-compat's and s3-faults' own reports."""
    for o in outcomes:
        if o.skipped or not o.dir or not Path(o.dir).is_dir():
            continue
        d = Path(o.dir)
        if o.item in RUN_ITEMS:
            trials = sorted(p for p in d.glob("trial-*") if p.is_dir())
            pages = [d / "report.html"] if with_report and _report(d) else []
            if with_report and not pages:
                pages = [t / "report.html" for t in trials if _report(t)]
            page = pages[0] if pages else _first(d / "trials.json", d / "summary.json")
            o.pages = [str(p.relative_to(out)) for p in pages]
            if not pages:
                o.report_note = (
                    "dlio-ext report did not write a page: linked to the run's results"
                    if with_report
                    else "no `dlio-ext report` in this version: linked to the run's results"
                )
        else:
            page = _first(d / "s3-compat.md", d / "s3-faults.md", d / "s3-compat.json", d / "s3-faults.json")
            for sweep in sorted((d / "sweep").glob("*/summary.json")) if with_report else []:
                _report(sweep.parent)  # the page of the sweep that ran through the faults
        if page is not None:
            o.report = str(page.relative_to(out))


def _out_dir(given: str | None) -> Path:
    if given is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return Path("results") / f"evaluate-{stamp}-{secrets.token_hex(3)}"
    out = Path(given)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {given} exists and is not an empty directory; give a new one")
    return out


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    parser = OneLineParser(
        prog="dlio-ext evaluate",
        description="Run a suite (checkpoint burst and restore, KV cache, metadata and LIST storm, small and "
        "large objects, s3-compat, s3-faults) on several stores; write scorecard.json and scorecard.html.",
    )
    parser.add_argument("--targets", required=True, help="YAML file of the stores (docs/evaluate.md)")
    parser.add_argument(
        "--suite", help="YAML file of the suite (default workload_configs/evaluate/suite.default.yaml)"
    )
    parser.add_argument(
        "--out", help="a new directory for the scorecard and every run (default results/evaluate-<time>)"
    )
    args = parser.parse_args(list(argv))
    targets = load_targets(args.targets)
    suite = load_suite(args.suite)
    out = _out_dir(args.out).resolve()
    for t in targets:
        check_target(t, env)
    tag = f"evaluate-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"
    steps = plan(suite, targets, out, tag)
    from dlio_ext.run.harness import load_config

    validate(steps, load_config)
    # from here on, things run: nothing above wrote anything
    out.mkdir(parents=True, exist_ok=True)
    log = out / "evaluate.log"
    outcomes: list[Outcome] = []
    for n, step in enumerate(steps, 1):
        o = execute(step, env, suite.timeout_s, log)
        outcomes.append(o)
        verdict = f"skipped: {o.skipped}" if o.skipped else f"exit {o.exit_code} in {o.seconds:.1f} s"
        print(f"[{n}/{len(steps)}] {o.target} {o.item}: {verdict}" + (f": {o.error}" if o.error else ""),
              file=sys.stderr, flush=True)  # fmt: skip
    for t in targets:  # the data directories evaluate made under a POSIX root are its own
        if t.kind == "posix":
            shutil.rmtree(Path(t.root) / tag, ignore_errors=True)
    with_report = report_command_exists()
    link_reports(outcomes, out, with_report)
    note = "each run's report.html (dlio-ext report)" if with_report else (
        "each run's summary.json or trials.json (this dlio-ext has no `report` command)"
    )  # fmt: skip
    card = scorecard.build(suite, targets, outcomes, out, note)
    json_path, html_path = scorecard.write(card, out)
    failed = [o for o in outcomes if o.error]
    print(f"scorecard: {html_path} ({json_path.name} beside it); log {log}")
    if failed:
        print(f"dlio-ext evaluate: {len(failed)} step(s) failed; see {log}", file=sys.stderr)
    return 1 if failed else 0
