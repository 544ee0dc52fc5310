"""`dlio-ext report RUN_DIR [--out FILE] [--text]`: a run's page and terminal summary.

Writes RUN_DIR/report.html (or FILE), prints the terminal summary, then `report: <page>` last.
With --text, prints the summary only. Exit 0 when the page (or summary) was made, whatever the
run's verdict (the page and summary say it); 2 for bad input, in one line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dlio_ext.errors import UsageError
from dlio_ext.report import page, rundir, text, trials

USAGE = "usage: dlio-ext report RUN_DIR [--out FILE] [--text]"
PAGE = "report.html"


def parse(argv: Sequence[str]) -> tuple[Path, Path | None, bool]:
    """(run directory, page to write or None for the default, text only)."""
    args = list(argv)
    run_dir: Path | None = None
    out: Path | None = None
    only_text = False
    while args:
        a = args.pop(0)
        if a == "--text":
            only_text = True
        elif a == "--out" or a.startswith("--out="):
            value = a.partition("=")[2] if "=" in a else (args.pop(0) if args else "")
            if not value:
                raise UsageError(f"--out needs a file name; {USAGE}")
            out = Path(value)
        elif a.startswith("-"):
            raise UsageError(f"unknown option {a!r}; {USAGE}")
        elif run_dir is None:
            run_dir = Path(a)
        else:
            raise UsageError(f"one run directory at a time (got {str(run_dir)!r} and {a!r}); {USAGE}")
    if run_dir is None:
        raise UsageError(f"which run? {USAGE}")
    return run_dir, out, only_text


def main(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip() if __doc__ else USAGE)
        return 0
    run_dir, out, only_text = parse(argv)
    doc = trials.load(run_dir) if run_dir.is_dir() else None
    if doc is not None:
        return _trial_set(run_dir, doc, out, only_text)
    run = rundir.load(run_dir)
    if only_text:
        print("\n".join(text.summary(run)))
        return 0
    target = out or run_dir / PAGE
    _write(target, page.render(run))
    print("\n".join(text.summary(run)))
    print(f"report: {target}", flush=True)
    return 0


def _write(target: Path, doc: str) -> None:
    """The page, whole or not at all."""
    tmp = target.with_name(target.name + ".partial")
    try:
        tmp.write_text(doc, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write the page {target}: {exc.strerror or exc}; give --out FILE") from None


def _trial_set(run_dir: Path, doc: dict[str, Any], out: Path | None, only_text: bool) -> int:
    """A set of trials: each trial's own page in its directory, then the set's page linking them."""
    names = [str(d) for d in doc.get("runs", [])]
    lines = [f"{doc.get('trials')} trials of {doc.get('workload')}: valid {doc.get('valid')}"]
    for name, p in doc.get("phases", {}).items():
        g, q = p["GBps"], p["p99_us"]
        lines.append(
            f"  {name:<18} GB/s {g['median']:.3f} (spread {g['spread_pct']:.1f}%)  "
            f"p99 us {q['median']:,.0f} (spread {q['spread_pct']:.1f}%)"
        )
    if only_text:
        print("\n".join(lines))
        return 0
    target = out or run_dir / PAGE
    pages = {}
    for d in names:
        if (run_dir / d / "summary.json").is_file():
            run = rundir.load(run_dir / d)
            _write(run_dir / d / PAGE, page.render(run))
            pages[d] = os.path.relpath(run_dir / d / PAGE, target.parent)
    _write(target, trials.render(doc, pages))
    print("\n".join(lines))
    print(f"report: {target}", flush=True)
    return 0
