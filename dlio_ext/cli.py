"""`dlio-ext`: thin subcommands over the package.

dlio-ext run workload=<name>[/<preset>] storage=<backend> [key=value | ++key=value ...]
dlio-ext dlio [dlio_benchmark's own Hydra arguments]
dlio-ext s3-server start|stop|status [--dir D]
dlio-ext s3-compat [--endpoint URL]... [--bucket B] [--prefix P] [--targets F] [--out DIR] [--list]
dlio-ext s3-faults [--endpoint URL] [--slowdown F] [--reset F] [--latency F] [--out DIR]
dlio-ext compare RUN RUN [...] [--json FILE] [--html FILE] [--force]
dlio-ext mlperf RUN_DIR --results DIR --org ORG --system NAME [--division closed|open]
dlio-ext report RUN_DIR [--out FILE] [--text]
dlio-ext evaluate --targets stores.yaml [--suite suite.yaml] [--out DIR]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from dlio_ext.errors import UsageError
from dlio_ext.storage.base import StorageError
from dlio_ext.world import env_rank

USAGE = __doc__ or ""


def _run(argv: Sequence[str]) -> int:
    # before numpy loads: its OpenBLAS starts a thread a core in every rank at import (16 ranks
    # on a node: 16 x cores threads, ~50 ms of CPU a rank), and a run does no linear algebra
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from dlio_ext.run.lifecycle import take_signals

    take_signals()  # first: every thread started from here on (OpenBLAS's, MPI's) leaves them alone
    from dlio_ext.report import figures
    from dlio_ext.run.harness import run

    return run(list(argv), figures=figures)


def _dlio(argv: Sequence[str]) -> int:
    from dlio_ext.dlio import main as dlio_main

    return dlio_main(list(argv))


def _s3_server(argv: Sequence[str]) -> int:
    from dlio_ext.s3server import main as server_main

    return server_main(list(argv))


def _s3_compat(argv: Sequence[str]) -> int:
    from dlio_ext.compat import main as compat_main

    return compat_main(list(argv))


def _s3_faults(argv: Sequence[str]) -> int:
    from dlio_ext.compat.faults import main as faults_main

    return faults_main(list(argv))


def _compare(argv: Sequence[str]) -> int:
    from dlio_ext.report.compare import main as compare_main

    return compare_main(list(argv))


def _mlperf(argv: Sequence[str]) -> int:
    from dlio_ext.mlperf import main as mlperf_main

    return mlperf_main(list(argv))


def _report(argv: Sequence[str]) -> int:
    from dlio_ext.report.command import main as report_main

    return report_main(list(argv))


def _evaluate(argv: Sequence[str]) -> int:
    from dlio_ext.evaluate import main as evaluate_main

    return evaluate_main(list(argv))


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "run": _run,
    "dlio": _dlio,
    "s3-server": _s3_server,
    "s3-compat": _s3_compat,
    "s3-faults": _s3_faults,
    "compare": _compare,
    "mlperf": _mlperf,
    "report": _report,
    "evaluate": _evaluate,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE.strip())
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd not in COMMANDS:
        print(f"dlio-ext: error: unknown command {cmd!r}; use one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[cmd](rest)
    except (UsageError, StorageError) as exc:
        # every rank reaches the same verdict; one line from rank 0 is enough
        if env_rank() == 0:
            print(f"dlio-ext: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("dlio-ext: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
