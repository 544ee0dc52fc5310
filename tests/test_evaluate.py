"""`dlio-ext evaluate`: the cost formulas, the checks before anything runs, and a whole evaluation
of three real stores (SeaweedFS, moto's S3 server, a POSIX directory) into one scorecard."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path
from typing import Any

import pytest
from helpers import KV_SMALL, MOTO_BUCKET, MOTO_KEY, MOTO_SECRET, Done, run_cli

from dlio_ext.evaluate import tco
from dlio_ext.evaluate.suite import load_suite
from dlio_ext.evaluate.targets import load_targets
from dlio_ext.s3server import ServerInfo
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
            "    access_key_env: EV_KEY\n    secret_key_env: EV_SECRET\n    local_dir: {root}\n",
            {"EV_KEY": "k", "EV_SECRET": "very-secret-value"},
            "no SeaweedFS runs in local_dir",
        ),
        (
            "targets:\n  - name: s\n    endpoint: http://me:very-secret-value@127.0.0.1:{port}\n    bucket: b\n",
            {},
            "endpoint holds credentials",
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


def test_missing_flag_and_used_out_dir_one_line_exit_2(tmp_path: Path) -> None:
    targets = _targets(tmp_path, f"targets:\n  - name: a\n    root: {tmp_path}\n")
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep").write_text("x")
    for args, says in (
        (["--suite", str(targets)], "the following arguments are required: --targets"),
        (["--targets", str(targets), "--out", str(used)], "is not an empty directory"),
    ):
        done = run_cli("evaluate", *args, timeout=120)
        lines = done.err.strip().splitlines()
        assert done.code == 2 and len(lines) == 1 and says in lines[0], done.err
    assert sorted(p.name for p in used.iterdir()) == ["keep"]


def test_a_step_past_its_timeout_is_stopped_whole(tmp_path: Path) -> None:
    """A run that outlasts the suite's timeout_s is stopped with mpirun and every rank, the
    scorecard still written, the step named as failed, exit 1."""
    import time

    targets = _targets(tmp_path, f"targets:\n  - name: a\n    root: {tmp_path}\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "trials: 1\nranks: 2\ntimeout_s: 10\nruns:\n  checkpoint: [workload=checkpoint_burst/llama3_8b, "
        "workload.scale=0.0002, workload.checkpoints=3, workload.restores=1, workload.compute_seconds=60]\n"
    )
    out = tmp_path / "out"
    done = run_cli(
        "evaluate", "--targets", str(targets), "--suite", str(suite), "--out", str(out), timeout=180
    )
    assert done.code == 1 and "1 step(s) failed" in done.err, done.err
    card = json.loads((out / "scorecard.json").read_text())
    assert card["steps"][0]["error"] == "stopped after 10 s (the suite's timeout_s)"
    assert "stopped after 10 s" in (out / "scorecard.html").read_text()
    # the ranks themselves were told (not mpirun alone), and the data evaluate made is gone
    assert "interrupted by SIGTERM" in (out / "runs/a/checkpoint/INCOMPLETE").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("evaluate-")]

    def ours() -> list[str]:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if str(out).encode() in cmdline.read_bytes():
                    found.append(cmdline.parent.name)
            except OSError:
                pass
        return found

    deadline = time.monotonic() + 30
    while ours() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ours() == []  # neither mpirun nor a rank outlived the step


def test_example_files_load(tmp_path: Path) -> None:
    """The shipped example and default suite are valid (their keys are the documented ones), and
    every run of the default suite passes the run's own config check on both example targets."""
    from helpers import ROOT

    from dlio_ext.evaluate.suite import plan, validate
    from dlio_ext.run.harness import load_config

    suite = load_suite(None)
    assert suite.trials == 3 and suite.ranks == 2
    assert set(suite.items()) == {"checkpoint", "kv_cache", "metadata", "small_objects", "large_objects",
                                  "s3_compat", "s3_faults"}  # fmt: skip
    targets = load_targets(str(ROOT / "workload_configs/evaluate/stores.example.yaml"))
    assert [t.kind for t in targets] == ["s3", "posix"] and targets[0].prices["gpus"] == 1024
    steps = plan(suite, targets, tmp_path, "tag")
    validate(steps, load_config)
    skipped = {(s.target.name, s.item) for s in steps if s.skipped}
    assert skipped == {
        ("nvme", "s3_compat"),
        *(("nvme", f"s3_faults/{x}") for x in ("proxy", "restart", "wrong-credentials")),
    }
    run = next(s for s in steps if s.target.name == "seaweedfs" and s.item == "checkpoint")
    assert (
        "run.trials=3" in run.argv
        and "storage.client=obstore" in run.argv
        and run.launch[-2:] == ["-np", "2"]
    )
    restart = next(s for s in steps if s.item == "s3_faults/restart")
    assert restart.argv[restart.argv.index("--server-dir") + 1] == "/tmp/s3"


# --- a whole evaluation: SeaweedFS (restartable), moto, a POSIX root --------------------------

#: prices for SeaweedFS only; moto and the POSIX root have none
SW_PRICES = {"usd_per_tb_month": 20.0, "capacity_tb": 100.0, "fixed_usd_per_month": 300.0, "power_w": 500.0,
             "usd_per_kwh": 0.2, "gpus": 64.0, "usd_per_gpu_hour": 2.0}  # fmt: skip
TINY_SUITE = {
    "trials": 1,
    "ranks": 2,
    "timeout_s": 300,
    "runs": {
        "checkpoint": ["workload=checkpoint_burst/llama3_8b", "workload.scale=0.0002", "workload.checkpoints=1",
                       "workload.restores=1", "workload.compute_seconds=0"],
        "kv_cache": KV_SMALL,
        "metadata": ["workload=metadata/storm", "workload.items_per_rank=20", "workload.storm_repeats=2"],
        "small_objects": ["workload=storage_sweep", "workload.object_size=4096", "workload.objects_per_rank=16",
                          "workload.io_depth=4"],
        "large_objects": ["workload=storage_sweep", "workload.object_size=8388608", "workload.objects_per_rank=1",
                          "workload.cold=true"],
        "s3_compat": {"groups": ["range"]},
        "s3_faults": {"objects": 8, "restart_objects": 24, "outage": 0.5},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def evaluation(
    s3_server: ServerInfo, moto_server: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Done, dict[str, Any], Path, Path]:
    """One evaluation of three real stores through the CLI; (result, scorecard, out dir, POSIX root)."""
    import yaml

    d = tmp_path_factory.mktemp("evaluate")
    root = d / "posix-root"
    root.mkdir()
    targets = {
        "targets": [
            {"name": "seaweedfs", "endpoint": s3_server.endpoint, "bucket": s3_server.bucket,
             "region": s3_server.region, "access_key_env": "EV_SW_KEY", "secret_key_env": "EV_SW_SECRET",
             "local_dir": s3_server.dir, "prices": SW_PRICES},
            {"name": "moto", "endpoint": moto_server, "bucket": MOTO_BUCKET, "access_key_env": "EV_MOTO_KEY",
             "secret_key_env": "EV_MOTO_SECRET"},
            {"name": "disk", "root": str(root)},
        ]
    }  # fmt: skip
    (d / "stores.yaml").write_text(yaml.safe_dump(targets))
    (d / "suite.yaml").write_text(yaml.safe_dump(TINY_SUITE))
    env = {"EV_SW_KEY": s3_server.access_key, "EV_SW_SECRET": s3_server.secret_key, "EV_MOTO_KEY": MOTO_KEY,
           "EV_MOTO_SECRET": MOTO_SECRET}  # fmt: skip
    out = d / "out"
    done = run_cli(
        "evaluate", "--targets", str(d / "stores.yaml"), "--suite", str(d / "suite.yaml"), "--out", str(out),
        env=env, timeout=900,
    )  # fmt: skip
    assert done.code == 0, done.err
    return done, json.loads((out / "scorecard.json").read_text()), out, root


NAMES = ("seaweedfs", "moto", "disk")


def test_scorecard_names_every_target_and_links_every_figure(
    evaluation: tuple[Done, dict[str, Any], Path, Path],
) -> None:
    done, card, out, _ = evaluation
    page = (out / "scorecard.html").read_text()
    assert list(card["targets"]) == list(NAMES)
    for name in NAMES:
        assert f"<th>{name}</th>" in page
        figs = card["targets"][name]["figures"]
        assert figs, name
        for fid, f in figs.items():
            assert f["link"] and (out / f["link"]).is_file(), (name, fid, f.get("link"))
            assert f'href="{f["link"]}"' in page
            # a run's figures link to the page `dlio-ext report` rendered in its directory
            if f["item"] in ("checkpoint", "kv_cache", "metadata", "small_objects", "large_objects"):
                assert f["link"] == f"runs/{name}/{f['item']}/report.html", (name, fid)
    for step in card["steps"]:
        assert step.get("skipped") or (out / step["report"]).is_file(), step
    assert "scorecard: " in done.out


def test_figures_are_the_runs_own(evaluation: tuple[Done, dict[str, Any], Path, Path]) -> None:
    _, card, out, _ = evaluation
    for name in NAMES:
        figs = card["targets"][name]["figures"]
        for item, phase in (("large_objects", "write"), ("large_objects", "read_sequential")):
            summary = json.loads((out / "runs" / name / item / "summary.json").read_text())
            assert figs[f"{item}.{phase}.GBps"]["value"] == pytest.approx(
                summary["phases"][phase]["GBps"], rel=1e-5
            )
        ckpt = json.loads((out / "runs" / name / "checkpoint" / "summary.json").read_text())
        assert figs["checkpoint.write_GBps"]["value"] == pytest.approx(
            ckpt["checkpoint_burst"]["write"]["overall"]["GBps"], rel=1e-5
        )
        for item in ("checkpoint", "kv_cache", "metadata", "small_objects", "large_objects"):
            assert figs[f"{item}.valid"]["value"] is True, (name, item)
            assert figs[f"{item}.retries_per_1k"]["ops"] > 0


def test_operational_figures_are_measured(evaluation: tuple[Done, dict[str, Any], Path, Path]) -> None:
    _, card, _, _ = evaluation
    sw = card["targets"]["seaweedfs"]["figures"]
    # the restart really happened on the local SeaweedFS, and the client came back
    assert sw["restart.time_to_recover_s"]["value"] > 0 and sw["restart.requests_failed"]["value"] > 0
    assert sw["restart.intact"]["value"] is True
    # throttling was injected and retried; the error rate is what the sweep counted
    assert sw["throttling.injected"]["value"] > 0 and sw["throttling.retries_per_1k"]["value"] > 0
    assert 0 <= sw["throttling.error_rate"]["value"] < 1 and sw["throttling.write_GBps"]["value"] > 0
    assert sw["wrong_credentials.failed_fast"]["value"] is True
    # throughput through the faults links to the page of the sweep that ran through them
    assert sw["throttling.write_GBps"]["link"].startswith("runs/seaweedfs/s3_faults/proxy/sweep/")
    assert sw["throttling.write_GBps"]["link"].endswith("/report.html")
    for name in ("seaweedfs", "moto"):
        figs = card["targets"][name]["figures"]
        assert sum(figs[f"compat.{k}"]["value"] for k in ("pass", "differs", "unsupported", "error")) == 5
    moto = card["targets"]["moto"]["figures"]
    assert "throttling.injected" in moto and not any(k.startswith("restart.") for k in moto)
    steps = {(s["target"], s["item"]): s for s in card["steps"]}
    assert "local_dir" in steps[("moto", "s3_faults/restart")]["skipped"]
    assert steps[("disk", "s3_compat")]["skipped"] == "not an S3 store"
    assert not any(
        k.startswith(("compat.", "throttling.", "restart.")) for k in card["targets"]["disk"]["figures"]
    )


def test_costs_match_their_formulas_and_only_where_priced(
    evaluation: tuple[Done, dict[str, Any], Path, Path],
) -> None:
    _, card, out, _ = evaluation
    page = (out / "scorecard.html").read_text()
    sw = card["targets"]["seaweedfs"]
    costs, figs, p = sw["costs"], sw["figures"], SW_PRICES
    assert costs is not None and costs["prices"] == p and not costs["not_priced"]
    c = costs["figures"]
    monthly = (
        p["usd_per_tb_month"] * p["capacity_tb"]
        + p["fixed_usd_per_month"]
        + p["power_w"] / 1000 * 730 * p["usd_per_kwh"]
    )
    assert c["monthly_usd"]["value"] == pytest.approx(monthly)
    read = figs["large_objects.read_sequential.GBps"]["value"]
    write = figs["large_objects.write.GBps"]["value"]
    assert c["usd_per_GBps_read"]["value"] == pytest.approx(monthly / read, rel=1e-5)
    assert c["usd_per_GBps_write"]["value"] == pytest.approx(monthly / write, rel=1e-5)
    assert c["usd_per_usable_tib_month"]["value"] == pytest.approx(
        monthly / (p["capacity_tb"] * 1e12 / 2**40)
    )
    ckpt_s = figs["checkpoint.full_size_s"]["value"]
    tau = goodput(ckpt_s, 0.0, 50_000 / p["gpus"] * 3600)["daly_interval_s"]
    stall_cost = ckpt_s / (tau + ckpt_s) * p["gpus"] * 24 * p["usd_per_gpu_hour"]
    assert c["checkpoint_stall_usd_per_day"]["value"] == pytest.approx(stall_cost, rel=1e-5)
    for f in c.values():  # each formula is on the page
        assert f["formula"].replace("<", "&lt;") in page
    for name in ("moto", "disk"):  # no prices: nothing priced
        assert card["targets"][name]["costs"] is None
        assert f"<b>{name}</b>: no prices given: nothing is priced." in page


def test_no_secret_written_and_no_data_left(
    evaluation: tuple[Done, dict[str, Any], Path, Path],
    s3_server: ServerInfo,
    s3_admin: Any,
    moto_server: str,
) -> None:
    done, _, out, root = evaluation
    secrets = [s3_server.secret_key, s3_server.access_key, MOTO_SECRET]
    assert not any(s in done.out + done.err for s in secrets)
    for f in out.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not any(s.encode() in data for s in secrets), f
    assert list(root.iterdir()) == []  # evaluate's data directory under the root is gone
    # every run, probe and fault sweep cleaned up after itself in both stores
    from dlio_ext.storage.s3 import S3Settings, boto3_client

    moto_cfg = {"endpoint": moto_server, "bucket": MOTO_BUCKET, "prefix": "", "access_key": MOTO_KEY,
                "secret_key": MOTO_SECRET}  # fmt: skip
    moto = boto3_client(S3Settings.from_config(moto_cfg, env={}))
    for client, bucket in ((s3_admin, s3_server.bucket), (moto, MOTO_BUCKET)):
        listed = client.list_objects_v2(Bucket=bucket, Prefix="dlio-ext-evaluate/")
        assert listed.get("KeyCount", 0) == 0, [o["Key"] for o in listed.get("Contents", [])][:10]
        assert not client.list_multipart_uploads(Bucket=bucket, Prefix="dlio-ext-evaluate/").get("Uploads")


def test_scorecard_opens_in_headless_chromium(
    evaluation: tuple[Done, dict[str, Any], Path, Path], tmp_path: Path
) -> None:
    """The page renders in a real browser: its tables are in the DOM, and a screenshot is drawn."""
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed")
    _, _, out, _ = evaluation
    url = (out / "scorecard.html").as_uri()
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<table") >= 5 and all(f"<th>{n}</th>" in dom.stdout for n in NAMES)
    png = tmp_path / "scorecard.png"
    shot = subprocess.run([*flags, "--window-size=1400,2000", f"--screenshot={png}", url], capture_output=True,
                          timeout=120)  # fmt: skip
    assert (
        shot.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    )


def test_html_escapes_every_text() -> None:
    """Names, probe answers and links come from stores and files: none may become markup."""
    from dlio_ext.evaluate.scorecard import render_html

    evil = "<script>alert('x')</script>"
    fig = {"section": "performance", "label": evil, "unit": "&", "better": "higher", "value": 1.0,
           "link": "runs/a'><b>x.html"}  # fmt: skip
    card = {
        "created_utc": evil,
        "suite": {"path": evil, "trials": 1, "ranks": 2},
        "reports": evil,
        "targets": {
            "t": {
                "target": {"kind": "s3", "endpoint": evil},
                "figures": {"f": fig},
                "costs": None,
                "compat_differences": [{"id": evil, "outcome": "differs", "observed": evil, "why": evil}],
            },
        },  # fmt: skip
        "steps": [{"target": "t", "item": evil, "exit_code": 1, "error": evil, "report": "a'b"}],
    }
    page = render_html(card)
    assert "<script" not in page and "<b>x" not in page
    assert page.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;") >= 8
    assert 'href="runs/a&#x27;&gt;&lt;b&gt;x.html"' in page
