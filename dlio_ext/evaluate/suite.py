"""The suite (`--suite`, default workload_configs/evaluate/suite.default.yaml) and running it on a
target: each item is a subprocess of the real CLI (`dlio-ext run` under mpirun, `s3-compat`,
`s3-faults`), its results in a directory of its own under OUT/runs/<target>/<item>/.

Every run's arguments are composed and validated (the run's own config check) for every target
before the first one starts, so a mistyped key in the suite or a target's `storage:` is one line,
exit 2, with nothing run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlio_ext.errors import UsageError
from dlio_ext.evaluate.targets import Target, read_yaml

#: the suite's run items and the workload each must run (the scorecard reads that workload's figures)
RUN_ITEMS = {
    "checkpoint": "checkpoint_burst",
    "kv_cache": "kv_cache",
    "metadata": "metadata",
    "small_objects": "storage_sweep",
    "large_objects": "storage_sweep",
}
#: items for S3 targets only, and the keys each takes
COMPAT_KEYS = {"groups": list, "only": list}
FAULT_KEYS = {
    "scenarios": list,
    "objects": int,
    "object_size": int,
    "restart_objects": int,
    "outage": float,
    "slowdown": float,
    "reset": float,
    "latency": float,
    "retries": int,
}
SCENARIOS = ("proxy", "restart", "wrong-credentials")
#: seconds a stopped step has to end after SIGTERM before it is killed
STOP_GRACE_S = 20.0
SUITE_KEYS = ("trials", "ranks", "timeout_s", "launcher", "runs")
#: arguments the suite may not give a run: evaluate decides where a run goes and how often
_OWNED_ARGS = ("storage", "run.dir", "run.results_dir", "run.trials", "tier0")


def default_suite_path() -> Path:
    from dlio_ext.config import config_dir

    return config_dir() / "evaluate" / "suite.default.yaml"


@dataclass
class Suite:
    path: str
    trials: int = 3
    ranks: int = 2
    timeout_s: float = 3600.0
    launcher: list[str] = field(default_factory=list)
    runs: dict[str, list[str]] = field(default_factory=dict)
    s3_compat: dict[str, Any] | None = None
    s3_faults: dict[str, Any] | None = None

    def items(self) -> list[str]:
        return [*self.runs, *(["s3_compat"] if self.s3_compat is not None else []),
                *(["s3_faults"] if self.s3_faults is not None else [])]  # fmt: skip


def _int(where: str, v: Any, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise UsageError(f"{where} must be a whole number >= {low}, not {v!r}")
    return v


def _options(where: str, raw: Any, keys: Mapping[str, type]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError(f"{where} must be a mapping of {', '.join(keys)}")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in keys:
            raise UsageError(f"{where} has unknown key {k!r}; known: {', '.join(keys)}")
        want = keys[k]
        if want is list:
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise UsageError(f"{where}.{k} must be a list of names")
        elif isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or (want is int and v != int(v)):
            raise UsageError(f"{where}.{k} must be a {'whole ' if want is int else ''}number >= 0, not {v!r}")
        out[str(k)] = v
    bad = [s for s in out.get("scenarios", []) if s not in SCENARIOS] if keys is FAULT_KEYS else []
    if bad:
        raise UsageError(f"{where}.scenarios: {bad[0]!r} is not one of {', '.join(SCENARIOS)}")
    return out


def load_suite(path: str | None) -> Suite:
    where = f"--suite {path}" if path else f"the default suite {default_suite_path()}"
    doc = read_yaml(path or str(default_suite_path()), "--suite")
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: expected a mapping with {', '.join(SUITE_KEYS)}")
    unknown = sorted(set(map(str, doc)) - set(SUITE_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(SUITE_KEYS)}")
    suite = Suite(path or str(default_suite_path()))
    suite.trials = _int(f"{where}: trials", doc.get("trials", suite.trials), 1)
    suite.ranks = _int(f"{where}: ranks", doc.get("ranks", suite.ranks), 1)
    timeout = doc.get("timeout_s", suite.timeout_s)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise UsageError(f"{where}: timeout_s must be a number of seconds > 0")
    suite.timeout_s = float(timeout)
    launcher = doc.get("launcher") or []
    if not isinstance(launcher, list) or not all(isinstance(x, str) for x in launcher):
        raise UsageError(f"{where}: launcher must be a list of words, e.g. [srun, -n, '{{ranks}}']")
    suite.launcher = launcher
    runs = doc.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise UsageError(
            f"{where}: runs must name at least one of {', '.join([*RUN_ITEMS, 's3_compat', 's3_faults'])}"
        )
    for item, raw in runs.items():
        if item == "s3_compat":
            suite.s3_compat = _options(f"{where}: runs.s3_compat", raw, COMPAT_KEYS)
        elif item == "s3_faults":
            suite.s3_faults = _options(f"{where}: runs.s3_faults", raw, FAULT_KEYS)
        elif item in RUN_ITEMS:
            if not isinstance(raw, list) or not all(isinstance(a, str | int | float) for a in raw):
                raise UsageError(
                    f"{where}: runs.{item} must be a list of key=value arguments of dlio-ext run"
                )
            args = [str(a) for a in raw]
            owned = [a for a in args if a.lstrip("+~").split("=", 1)[0].split(".")[0] in ("storage", "tier0")
                     or a.lstrip("+~").split("=", 1)[0] in _OWNED_ARGS]  # fmt: skip
            if owned:
                raise UsageError(
                    f"{where}: runs.{item} sets {owned[0].split('=', 1)[0]}; evaluate chooses where runs go "
                    "(storage keys belong to a target's storage:, trials to the suite's trials:)"
                )
            suite.runs[str(item)] = args
        else:
            raise UsageError(
                f"{where}: unknown run {item!r}; known: {', '.join([*RUN_ITEMS, 's3_compat', 's3_faults'])}"
            )
    return suite


@dataclass
class Step:
    """One subprocess of the suite on one target."""

    target: Target
    item: str  # a RUN_ITEMS key, "s3_compat" or "s3_faults/<scenario>"
    argv: list[str]  # after `dlio-ext`
    out: Path  # the run directory (run items) or the --out directory
    launch: list[str] = field(default_factory=list)  # mpirun ... in front, for runs
    skipped: str = ""  # why it does not run on this target


@dataclass
class Outcome:
    target: str
    item: str
    dir: str
    exit_code: int | None
    seconds: float
    error: str = ""
    skipped: str = ""
    report: str = ""  # the page a figure of this step links to
    report_note: str = ""
    pages: list[str] = field(default_factory=list)  # every report page of the run (one a trial)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ("", None, []) or k == "exit_code"}


def _mpirun() -> str:
    here = Path(sys.executable).parent / "mpirun"
    found = str(here) if here.exists() else shutil.which("mpirun")
    if not found:
        raise UsageError("mpirun not found (the suite's ranks > 1); run scripts/setup.sh or set ranks: 1")
    return found


def launcher(suite: Suite) -> list[str]:
    """The words in front of a run: the suite's launcher, or Open MPI's mpirun with the ranks."""
    if suite.launcher:
        return [w.replace("{ranks}", str(suite.ranks)) for w in suite.launcher]
    if suite.ranks == 1:
        return []
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return [_mpirun(), "--oversubscribe", *root, "-np", str(suite.ranks)]


def plan(suite: Suite, targets: list[Target], out: Path, tag: str) -> list[Step]:
    """Every step of the suite on every target, in order; data goes under `<root or prefix>/<tag>/`."""
    steps: list[Step] = []
    launch = launcher(suite)
    for t in targets:
        base = out / "runs" / t.name
        for item, args in suite.runs.items():
            argv = ["run", *args, *t.run_args(f"{tag}/{item}"), f"run.trials={suite.trials}",
                    f"run.dir={base / item}", "run.progress_interval=0"]  # fmt: skip
            steps.append(Step(t, item, argv, base / item, launch))
        if suite.s3_compat is not None:
            steps.append(_compat_step(t, suite.s3_compat, base / "s3_compat", tag))
        if suite.s3_faults is not None:
            steps += _fault_steps(t, suite.s3_faults, base / "s3_faults", tag)
    return steps


def _compat_step(t: Target, opts: Mapping[str, Any], out: Path, tag: str) -> Step:
    if t.kind != "s3":
        return Step(t, "s3_compat", [], out, skipped="not an S3 store")
    argv = ["s3-compat", "--endpoint", t.endpoint, "--bucket", t.bucket, "--prefix", f"{t.prefix}/{tag}/compat",
            "--out", str(out)]  # fmt: skip
    argv += [w for g in opts.get("groups", []) for w in ("--group", g)]
    argv += [w for o in opts.get("only", []) for w in ("--only", o)]
    return Step(t, "s3_compat", argv, out)


def _fault_steps(t: Target, opts: Mapping[str, Any], out: Path, tag: str) -> list[Step]:
    steps = []
    flags = [w for k, v in opts.items() if k != "scenarios" for w in (f"--{k.replace('_', '-')}", str(v))]
    flags += ["--client", str(t.storage["client"])] if "client" in t.storage else []
    for scenario in opts.get("scenarios", list(SCENARIOS)):
        item, d = f"s3_faults/{scenario}", out / scenario
        why = ""
        if t.kind != "s3":
            why = "not an S3 store"
        elif scenario != "wrong-credentials" and not t.endpoint.startswith("http://"):
            why = "s3-faults puts its proxy in front of plain http endpoints only"
        elif scenario == "restart" and not t.local_dir:
            why = "the store is not a local SeaweedFS (give the target local_dir to restart it)"
        if why:
            steps.append(Step(t, item, [], d, skipped=why))
            continue
        where = ["--server-dir", t.local_dir] if scenario == "restart" else ["--endpoint", t.endpoint]
        argv = ["s3-faults", "--scenario", scenario, *where, "--bucket", t.bucket,
                "--prefix", f"{t.prefix}/{tag}/faults", "--out", str(d), *flags]  # fmt: skip
        steps.append(Step(t, item, argv, d))
    return steps


def validate(steps: list[Step], load_config: Callable[[list[str]], Any]) -> None:
    """Compose and check every run's arguments (the run's own checks) before anything starts."""
    for s in steps:
        if s.skipped or s.argv[0] != "run":
            continue
        try:
            cfg = load_config(s.argv[1:])
        except UsageError as exc:
            raise UsageError(f"target {s.target.name}, run {s.item}: {exc}") from None
        want = RUN_ITEMS[s.item]
        if cfg.workload_name != want:
            raise UsageError(
                f"target {s.target.name}, run {s.item}: runs workload {cfg.workload_name}; "
                f"{s.item} must run {want} (its figures are read from that workload's summary)"
            )


def child_env(t: Target, env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a step: this target's keys only (another target's, or the shell's own
    AWS_* settings, would change what the run is told)."""
    out = {k: v for k, v in env.items() if not k.startswith(("AWS_", "DLIO_EXT_S3_"))}
    return out | t.credentials(env)


def _hide(text: str, hidden: list[str]) -> str:
    for secret in hidden:
        text = text.replace(secret, "<redacted>")
    return text


def _last_line(text: str, hidden: list[str]) -> str:
    from dlio_ext.compat.runner import scrub

    lines = [ln for ln in text.splitlines() if ln.strip()]
    return scrub(lines[-1], hidden) if lines else ""


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM the step's process group (mpirun passes it on to the ranks), then SIGKILL what is
    left after STOP_GRACE_S; what it printed."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            out, err = proc.communicate(timeout=STOP_GRACE_S)
            return out or "", err or ""
        except subprocess.TimeoutExpired:
            continue
    return "", ""


def execute(step: Step, env: Mapping[str, str], timeout_s: float, log: Path) -> Outcome:
    """Run one step to its end; its output goes to `log`, its one-line verdict to the outcome."""
    if step.skipped:
        return Outcome(step.target.name, step.item, "", None, 0.0, skipped=step.skipped)
    step.out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*step.launch, sys.executable, "-m", "dlio_ext.cli", *step.argv]
    run_env = child_env(step.target, env)
    tmp = ""
    if step.launch:  # Open MPI keeps its session files under TMPDIR: one of its own per launch
        tmp = tempfile.mkdtemp(prefix="mpi", dir="/tmp")
        run_env["TMPDIR"] = tmp
    t0 = time.monotonic()
    code: int | None
    # its own session, so that a step stopped (its timeout, or evaluate interrupted) is stopped
    # whole: mpirun and every rank, not mpirun alone
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        out = _stop(proc)[0]
        code, err = None, f"stopped after {timeout_s:g} s (the suite's timeout_s)"
    except BaseException:
        _stop(proc)
        raise
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.monotonic() - t0
    hidden = step.target.secrets(env)
    with open(log, "a") as fh:
        fh.write(
            f"$ dlio-ext {' '.join(step.argv)}\n{_hide(out, hidden)}\n{_hide(err, hidden)}\nexit {code}\n\n"
        )
    # a run that ended invalid (1) or an s3-faults that lost data (1) has results: those are figures
    error = "" if code in (0, 1) else (_last_line(err, hidden) or f"exit {code}")
    return Outcome(step.target.name, step.item, str(step.out), code, round(seconds, 3), error=error)
