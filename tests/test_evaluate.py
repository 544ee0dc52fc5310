"""`dlio-ext evaluate`: the cost formulas, the checks before anything runs, and a whole evaluation
of three real stores (SeaweedFS, moto's S3 server, a POSIX directory) into one scorecard."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
from helpers import run_cli

from dlio_ext.evaluate import tco
from dlio_ext.evaluate.suite import load_suite
from dlio_ext.evaluate.targets import load_targets
from dlio_ext.workloads.checkpoint_burst.summary import goodput

# --- cost formulas --------------------------------------------------------------------------

PRICES = {
    "usd_per_tb_month": 20.0,
    "capacity_tb": 500.0,
    "fixed_usd_per_month": 1500.0,
    "power_w": 2400.0,
    "usd_per_kwh": 0.15,
    "rack_units": 4.0,
    "usd_per_rack_unit_month": 50.0,
    "gpus": 1024.0,
    "usd_per_gpu_hour": 2.5,
}


def test_monthly_cost_adds_the_parts_whose_prices_are_given() -> None:
    m = tco.monthly_cost(PRICES)
    assert m is not None
    power = 2400 / 1000 * 730 * 0.15
    assert m["parts"] == pytest.approx({"capacity": 10_000.0, "fixed": 1500.0, "power": power, "rack": 200.0})
    assert m["value"] == pytest.approx(10_000 + 1500 + power + 200)
    assert "usd_per_tb_month x capacity_tb" in m["formula"] and "usd_per_kwh" in m["formula"]
    # a price without its partner prices nothing
    assert tco.monthly_cost({"usd_per_tb_month": 20.0}) is None
    assert tco.monthly_cost({"power_w": 100.0, "fixed_usd_per_month": 7.0})["value"] == 7.0


def test_per_gbps_and_per_tib() -> None:
    m = tco.monthly_cost({"fixed_usd_per_month": 1000.0, "usd_per_tb_month": 10.0, "capacity_tb": 2.0})
    assert m is not None and m["value"] == 1020.0
    r = tco.per_gbps(m, 4.0, "read", "large_objects")
    assert r is not None and r["value"] == pytest.approx(255.0) and r["inputs"]["read_GBps"] == 4.0
    assert tco.per_gbps(m, 0.0, "read", "x") is None  # nothing measured: no figure, not infinity
    t = tco.per_usable_tib(m, 2.0)
    assert t["value"] == pytest.approx(1020.0 / (2.0 * 1e12 / 2**40))


def test_checkpoint_stall_cost_at_dalys_interval() -> None:
    f = tco.checkpoint_stalls(60.0, 1000.0, 2.0, None, "checkpoint")
    mtbf_h = 50_000 / 1000  # the default: MLCommons' 50,000 h per accelerator over the GPUs
    tau = goodput(60.0, 0.0, mtbf_h * 3600)["daly_interval_s"]
    stall = 60.0 / (tau + 60.0)
    assert f["inputs"]["mtbf_hours"] == mtbf_h and f["inputs"]["daly_interval_s"] == tau
    assert f["value"] == pytest.approx(stall * 1000 * 24 * 2.0, rel=1e-6)
    # Young's first-order interval is close to Daly's here: the stall is about sqrt(d / 2M)
    assert stall == pytest.approx(math.sqrt(60.0 / (2 * mtbf_h * 3600)), rel=0.1)
    given = tco.checkpoint_stalls(60.0, 1000.0, 2.0, 500.0, "checkpoint")
    assert given["inputs"]["mtbf_hours"] == 500.0 and given["value"] < f["value"]  # rarer failures


def test_no_prices_no_costs_and_missing_inputs_are_named() -> None:
    measured = {"read_GBps": (2.0, "r"), "write_GBps": (1.0, "w"), "checkpoint_s": (30.0, "c")}
    assert tco.cost_figures({}, measured) is None
    only_gpus = tco.cost_figures({"gpus": 8.0, "usd_per_gpu_hour": 3.0}, measured)
    assert only_gpus is not None
    assert set(only_gpus["figures"]) == {"checkpoint_stall_usd_per_day"}
    assert set(only_gpus["not_priced"]) == {
        "monthly_usd", "usd_per_GBps_read", "usd_per_GBps_write", "usd_per_usable_tib_month"
    }  # fmt: skip
    full = tco.cost_figures(PRICES, measured)
    assert full is not None and not full["not_priced"]
    assert full["figures"]["usd_per_GBps_write"]["value"] == pytest.approx(
        full["figures"]["monthly_usd"]["value"]
    )


# --- bad input: one line, exit 2, nothing run -----------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _targets(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "stores.yaml"
    p.write_text(body)
    return p


@pytest.mark.parametrize(
    ("body", "env", "says"),
    [
        (None, {}, "no such file"),
        ("targets:\n  - name: a\n    root: {root}\n    colour: red\n", {}, "unknown key 'colour'"),
        (
            "targets:\n  - name: a\n    root: {root}\n    prices: {{usd_per_gb: 1}}\n",
            {},
            "unknown price 'usd_per_gb'",
        ),
        ("targets:\n  - name: a\n    root: {root}\n    prices: {{gpus: -1}}\n", {}, "prices.gpus"),
        ("targets:\n  - name: a\n    root: {root}/missing\n", {}, "is not a directory"),
        (
            "targets:\n  - name: a\n    root: {root}\n  - name: a\n    root: {root}\n",
            {},
            "two targets are named 'a'",
        ),
        (
            "targets:\n  - name: s\n    endpoint: http://127.0.0.1:{port}\n    bucket: b\n"
            "    access_key_env: EV_KEY\n    secret_key_env: EV_SECRET\n",
            {"EV_KEY": "k"},
            "EV_SECRET is not set",
        ),
        (
            "targets:\n  - name: s\n    endpoint: http://127.0.0.1:{port}\n    bucket: b\n"
            "    access_key_env: EV_KEY\n    secret_key_env: EV_SECRET\n",
            {"EV_KEY": "k", "EV_SECRET": "very-secret-value"},
            "unreachable",
        ),
        (
            "targets:\n  - name: s\n    endpoint: http://127.0.0.1:{port}\n    bucket: b\n"
            "    storage: {{secret_key: x}}\n",
            {},
            "storage.secret_key is not set through storage",
        ),
    ],
)
def test_bad_targets_one_line_exit_2(
    tmp_path: Path, body: str | None, env: dict[str, str], says: str
) -> None:
    path = (
        tmp_path / "none.yaml"
        if body is None
        else _targets(tmp_path, body.format(root=tmp_path, port=_closed_port()))
    )
    out = tmp_path / "out"
    done = run_cli("evaluate", "--targets", str(path), "--out", str(out), env=env, timeout=120)
    lines = done.err.strip().splitlines()
    assert done.code == 2, done.err
    assert len(lines) == 1 and lines[0].startswith("dlio-ext: error:") and says in lines[0], done.err
    assert "very-secret-value" not in done.err + done.out
    assert not out.exists()  # nothing ran, nothing was written


@pytest.mark.parametrize(
    ("suite", "says"),
    [
        (
            "trials: 1\nruns:\n  small_objects: [workload=storage_sweep, workload.objekt_size=5]\n",
            "objekt_size",
        ),
        (
            "trials: 1\nruns:\n  checkpoint: [workload=storage_sweep]\n",
            "checkpoint must run checkpoint_burst",
        ),
        ("trials: 1\nruns:\n  warp: []\n", "unknown run 'warp'"),
        ("trials: 0\nruns:\n  metadata: [workload=metadata/easy]\n", "trials must be"),
        ("runs:\n  metadata: [workload=metadata/easy, storage.root=/tmp]\n", "sets storage.root"),
        ("runs:\n  s3_faults: {scenarios: [flood]}\n", "'flood' is not one of"),
        ("colour: red\nruns:\n  metadata: []\n", "unknown key 'colour'"),
    ],
)
def test_bad_suite_one_line_exit_2(tmp_path: Path, suite: str, says: str) -> None:
    targets = _targets(tmp_path, f"targets:\n  - name: a\n    root: {tmp_path}\n")
    s = tmp_path / "suite.yaml"
    s.write_text(suite)
    out = tmp_path / "out"
    done = run_cli("evaluate", "--targets", str(targets), "--suite", str(s), "--out", str(out), timeout=120)
    lines = done.err.strip().splitlines()
    assert done.code == 2 and len(lines) == 1 and says in lines[0], done.err
    assert not out.exists()


def test_example_files_load() -> None:
    """The shipped example and default suite are valid (their keys are the documented ones)."""
    from helpers import ROOT

    suite = load_suite(None)
    assert suite.trials == 3 and suite.ranks == 2
    assert set(suite.items()) == {"checkpoint", "kv_cache", "metadata", "small_objects", "large_objects",
                                  "s3_compat", "s3_faults"}  # fmt: skip
    targets = load_targets(str(ROOT / "workload_configs/evaluate/stores.example.yaml"))
    assert [t.kind for t in targets] == ["s3", "posix"] and targets[0].prices["gpus"] == 1024
