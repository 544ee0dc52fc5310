"""Run dlio_benchmark's own Hydra main with dlio-ext's backends plugged in.

Phases, and why they are kept apart:
  A. compose + check (deterministic: every rank sees the same argv and config). Failures are
     agreed on across ranks, so exactly one line is printed and every rank exits 2, with no
     rank left waiting in a barrier.
  B. DLIO runs. A failure here may hit one rank only; that rank prints its line and aborts the
     MPI job, since the others would otherwise wait in DLIO's next barrier forever.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sys
import traceback
from datetime import datetime, timezone
from typing import Any

from dlio_ext.dlio import lazy, options, tally
from dlio_ext.errors import UsageError
from dlio_ext.storage import StorageError

READER = "dlio_ext.dlio.reader.BackendNPZReader"
CHECKPOINT = "dlio_ext.dlio.checkpoint.BackendCheckpointing"
REPORT = "dlio_ext.json"


class _Quiet(Exception):
    """A failure another rank has already reported: exit with `code`, print nothing."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class _Agreed(Exception):
    """Raised on the lowest failing rank of phase A, which alone reports `err`."""

    def __init__(self, err: BaseException):
        super().__init__(str(err))
        self.err = err


class _RunError(Exception):
    """A phase-B failure, carrying the exit code and one printable line."""

    def __init__(self, code: int, line: str):
        super().__init__(line)
        self.code = code


def _override_key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~") if "=" in arg else ""


def _check_argv(argv: list[str]) -> None:
    for arg in argv:
        if arg in ("-m", "--multirun") or arg.startswith("hydra.mode="):
            raise UsageError(
                f"{arg}: Hydra multirun is not supported (DLIO keeps process-wide singletons "
                "between jobs); run one `dlio-ext dlio` per configuration"
            )


def with_run_dir(argv: list[str], stamp: str) -> list[str]:
    """Pin hydra.run.dir so every output (.hydra/, dlio.log, summary.json, ...) lands in one place.

    DLIO's default (hydra_log/<model>/${now:...}) is evaluated on each rank and splits a run
    across two directories when ranks straddle a second; `stamp` comes from rank 0. Given only
    ++workload.output.folder, Hydra's own files follow it there."""
    keys = {_override_key(a) for a in argv}
    if "hydra.run.dir" in keys:
        return argv
    default = f"results/dlio-${{workload.model}}-{stamp}"
    # quoted: Hydra's override grammar takes a nested interpolation only inside a string
    return [*argv, f"hydra.run.dir='${{oc.select:workload.output.folder,{default}}}'"]


def _agree(comm: Any, err: BaseException | None) -> None:
    """All ranks learn whether any failed; the lowest failing rank raises, the others go quiet."""
    first = comm.allreduce(comm.rank if err is not None else comm.size, op=_mpi_min())
    if first == comm.size:
        return
    if comm.rank == first and err is not None:
        raise _Agreed(err)
    raise _Quiet(2)


def _mpi_min() -> Any:
    from mpi4py import MPI

    return MPI.MIN


def _as_usage(exc: BaseException) -> UsageError | None:
    """Config mistakes from Hydra/OmegaConf or DLIO (which raises bare Exception for them)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, (UsageError, StorageError)):
        return exc if isinstance(exc, UsageError) else UsageError(str(exc))
    if isinstance(exc, (HydraException, OmegaConfBaseException)):
        return UsageError(
            "; ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip()) or type(exc).__name__
        )
    return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _section(workload: Any, *names: str) -> Any:
    for name in names:
        if name in workload and workload[name] is not None:
            return workload[name]
    return None


def _plug_in(workload: Any, spec: options.AdapterSpec, fork_unsafe: bool) -> None:
    """Register our reader and checkpoint mechanism through DLIO's own class-name hooks."""
    from omegaconf import open_dict

    with open_dict(workload):
        reader = _section(workload, "data_reader", "reader")
        if reader is None:
            workload["reader"] = {}
            reader = workload["reader"]
        reader["reader_classname"] = READER
        if fork_unsafe and not reader.get("multiprocessing_context"):
            # DLIO's default is fork; options.fork_unsafe says why that cannot work here
            # (an explicit fork was refused in phase A)
            reader["multiprocessing_context"] = "spawn"
        if (
            reader.get("multiprocessing_context") in ("spawn", "forkserver")
            and "DFTRACER_ENABLE" not in os.environ
        ):
            # pydftracer 1.0.2, which DLIO switches on by default, corrupts the heap of spawned
            # DataLoader workers (aborts in malloc/free seen in its enter_event); without an
            # LD_PRELOADed dftracer it writes no trace anyway. Workers read this at import; this
            # process has imported dftracer already and keeps its setting.
            os.environ["DFTRACER_ENABLE"] = "0"
        ckpt = _section(workload, "checkpoint")
        if ckpt is None:
            workload["checkpoint"] = {}
            ckpt = workload["checkpoint"]
        if not ckpt.get("checkpoint_mechanism_classname"):
            ckpt["checkpoint_mechanism_classname"] = CHECKPOINT


def _prepare(workload: Any, comm: Any) -> options.AdapterSpec | None:
    """Phase A: DLIO's own config parsing, our options, and a backend check, before DLIO starts."""
    from dlio_benchmark.utils.config import ConfigArguments, LoadConfig
    from omegaconf import OmegaConf

    from dlio_ext.dlio.storage import backend_for

    plain = OmegaConf.to_container(workload, resolve=True)
    assert isinstance(plain, dict)
    spec = options.parse(plain)
    args = ConfigArguments.get_instance()
    try:
        # a dry run of DLIO's LoadConfig: its enum lookups (storage_type, format, ...) raise
        # ValueError on a typo, which we want as one line here rather than a traceback later
        LoadConfig(args, workload)
    except (ValueError, KeyError) as exc:
        raise UsageError(f"bad DLIO workload config: {_one_line(exc)}") from None
    if spec is None:
        return None
    options.check_paths(plain, spec)
    try:
        backend_for(spec).check()
    except (UsageError, StorageError) as exc:
        raise UsageError(options.dlio_key_names(str(exc))) from None
    os.makedirs(args.output_folder, exist_ok=True)
    spec = dataclasses.replace(
        spec,
        tally_path=os.path.abspath(tally.tally_path(args.output_folder, comm.rank)),
        read_slots=max(int(args.read_threads), 1) + 1,
    )
    tally.create(spec.tally_path, spec.read_slots)
    return spec


def _report(comm: Any, spec: options.AdapterSpec | None, output_folder: str) -> None:
    """Rank 0 writes <output>/dlio_ext.json: what went through our backend, summed over ranks."""
    if spec is None:
        return
    from dlio_ext.dlio.storage import backend_for

    assert spec.tally_path is not None
    mine = tally.collect(spec.tally_path, spec.read_slots)
    ranks = comm.gather(mine, root=0)
    if comm.rank != 0:
        return
    total = {k: sum(r[k] for r in ranks) for k in tally.FIELDS}
    report = {
        "adapter": "dlio-ext",
        "storage": backend_for(spec).describe(),
        "io": total,
        "per_rank": ranks,
        "note": "reads/writes are whole files and checkpoints through the dlio-ext backend, "
        "counted in every process (DataLoader workers included); *_ns are summed call times",
    }
    with open(os.path.join(output_folder, REPORT), "w") as fh:
        json.dump(report, fh, indent=2)


def _benchmark(cfg: Any, comm: Any, state: dict[str, Any]) -> None:
    """The Hydra task: what dlio_benchmark.main.run_benchmark does, with phase A in front."""
    workload = cfg["workload"]
    err: BaseException | None = None
    spec = None
    try:
        spec = _prepare(workload, comm)
    except Exception as exc:  # anything: a rank leaving alone would strand the others
        err = exc
    state["spec"] = spec
    _agree(comm, err)

    if not lazy.needs_tensorflow(workload):
        lazy.defer_tf_profiler()
    from dlio_benchmark.main import DLIOBenchmark
    from dlio_benchmark.utils.config import ConfigArguments
    from omegaconf import OmegaConf

    args = ConfigArguments.get_instance()
    args.dlio_ext_spec = spec
    if spec is not None:
        plain = OmegaConf.to_container(workload, resolve=True)
        _plug_in(workload, spec, options.fork_unsafe(plain))  # type: ignore[arg-type]
    state["phase"] = "B-init"
    try:
        benchmark = DLIOBenchmark(workload)
        os.environ["DARSHAN_DISABLE"] = "1"
        benchmark.initialize()
        state["phase"] = "B-run"
        benchmark.run()
        benchmark.finalize()
        _report(comm, spec, args.output_folder)
    except (UsageError, StorageError) as exc:
        raise _RunError(2, _one_line(exc)) from exc
    except FileNotFoundError as exc:
        if state["phase"] != "B-init":
            raise
        # DLIO lists <data_folder>/train with os.listdir and lets a missing one escape
        raise _RunError(
            2,
            f"{exc.filename}: no such directory (no dataset yet? add ++workload.workflow.generate_data=True)",
        ) from exc
    except Exception as exc:
        if type(exc) is Exception:  # DLIO's spelling of a configuration problem
            raise _RunError(2, _one_line(exc)) from exc
        raise
    state["output_folder"] = os.path.abspath(args.output_folder)


def run(argv: list[str]) -> int:
    _check_argv(argv)
    # DLIO's singletons need MPI before anything else of DLIO is touched
    from dlio_benchmark.utils.utility import DLIOMPI

    mpi = DLIOMPI.get_instance()
    mpi.initialize()
    comm = mpi.comm()
    state: dict[str, Any] = {"phase": "A"}
    try:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
        stamp = comm.bcast(stamp, root=0)
        code = _hydra(with_run_dir(argv, stamp), comm, state)
    except BaseException:
        _drop_tally(state)
        raise
    _drop_tally(state)
    mpi.finalize()
    return code


def _drop_tally(state: dict[str, Any]) -> None:
    spec = state.get("spec")
    if spec is not None and spec.tally_path and os.path.exists(spec.tally_path):
        os.unlink(spec.tally_path)


def _hydra(argv: list[str], comm: Any, state: dict[str, Any]) -> int:
    import hydra

    from dlio_ext.dlio import patches

    patches.install()

    @hydra.main(version_base=None, config_path="pkg://dlio_benchmark.configs", config_name="config")
    def entry(cfg: Any) -> None:
        # kept inside the task: an exception escaping it makes Hydra print
        # "Error executing job with overrides: ..." before re-raising
        try:
            _benchmark(cfg, comm, state)
        except BaseException as exc:
            state["error"] = exc

    saved_argv, saved_full = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    # Hydra reads sys.argv; HYDRA_FULL_ERROR makes it re-raise instead of printing a
    # traceback and calling sys.exit(1), so we can turn errors into one line and exit 2
    sys.argv = ["dlio_benchmark", *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        entry()
        if "error" in state:
            raise state["error"]
    except SystemExit as exc:  # --help, --cfg, argparse errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except _Quiet as exc:
        return exc.code
    except _Agreed as exc:
        usage = _as_usage(exc.err)
        if usage is None:
            raise exc.err from None
        raise usage from None
    except _RunError as exc:
        return _fail(comm, exc.code, exc.__cause__ or exc, str(exc))
    except Exception as exc:
        if state["phase"] != "A":
            return _fail(comm, 1, exc, None)
        # composing the config happens before our task, identically on every rank
        usage = _as_usage(exc)
        if usage is None:
            raise
        if comm.rank != 0:  # rank 0 speaks for all
            return 2
        raise usage from None
    finally:
        sys.argv = saved_argv
        if saved_full is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_full
    out = state.get("output_folder")
    if out and comm.rank == 0:
        print(f"results: {out}", flush=True)
    return 0


def _fail(comm: Any, code: int, exc: BaseException, line: str | None) -> int:
    """A phase-B failure: one process reports it; in an MPI job it then takes the job down,
    because the other ranks may be waiting for it in a barrier."""
    if comm.size == 1:
        if line is not None:
            raise UsageError(line) from None
        raise exc
    if line is not None:
        print(f"dlio-ext: error: rank {comm.rank}: {line}", file=sys.stderr, flush=True)
    else:
        traceback.print_exception(exc)
    comm.Abort(code)
    return code
