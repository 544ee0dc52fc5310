"""Trials (`run.trials=N`) and `dlio-ext compare`: real runs under mpirun, compared as a user would."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from helpers import run_cli

SWEEP = ["workload.objects_per_rank=100", "workload.object_size=65536", "run.progress_interval=0"]


@pytest.fixture(scope="module")
def trial_sets(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two sets of 3 trials of the same configuration, 2 ranks each."""
    out = []
    for name in ("a", "b"):
        d = tmp_path_factory.mktemp("trials") / name
        done = run_cli("run", *SWEEP, "run.trials=3", f"run.dir={d}", np=2)
        assert done.code == 0, done.err[-3000:]
        assert done.results == d
        out.append(d)
    return out


def test_trials_write_each_run_and_the_median_and_spread(trial_sets: list[Path]) -> None:
    d = trial_sets[0]
    doc = json.loads((d / "trials.json").read_text())
    assert doc["schema"] == "dlio-ext/trials/1" and doc["trials"] == 3 and doc["valid"]
    assert doc["runs"] == ["trial-01", "trial-02", "trial-03"]
    summaries = [json.loads((d / r / "summary.json").read_text()) for r in doc["runs"]]
    assert all(s["valid"] and s["ranks"] == 2 for s in summaries)
    assert not (d / "INCOMPLETE").exists() and not any((d / r / "INCOMPLETE").exists() for r in doc["runs"])
    for phase in ("write", "read_sequential", "read_random", "delete"):
        got = doc["phases"][phase]["ops_per_s"]
        values = [s["phases"][phase]["ops_per_s"] for s in summaries]
        assert got["values"] == pytest.approx(values, abs=1e-6)
        assert got["median"] == pytest.approx(statistics.median(values), abs=1e-6)
        assert got["spread_pct"] == pytest.approx(
            (max(values) - min(values)) / statistics.median(values) * 100, abs=0.01
        )
        p99 = [s["phases"][phase]["latency_us"]["p99"] for s in summaries]
        assert doc["phases"][phase]["p99_us"]["median"] == pytest.approx(statistics.median(p99), abs=1e-6)


def test_compare_two_trial_sets_says_what_is_noise(trial_sets: list[Path], tmp_path: Path) -> None:
    a, b = trial_sets
    done = run_cli(
        "compare", str(a), str(b), "--json", str(tmp_path / "c.json"), "--html", str(tmp_path / "c.html")
    )
    assert done.code == 0, done.err
    model = json.loads((tmp_path / "c.json").read_text())
    assert model["baseline"] == "a" and [r["run"] for r in model["runs"]] == ["a", "b"]
    ta = json.loads((a / "trials.json").read_text())["phases"]
    tb = json.loads((b / "trials.json").read_text())["phases"]
    for phase, rows in model["phases"].items():
        base, other = rows
        ga, gb = ta[phase]["GBps"], tb[phase]["GBps"]
        assert base["GBps"]["value"] == ga["median"] and other["GBps"]["value"] == gb["median"]
        if ga["median"]:
            assert other["GBps"]["change_pct"] == pytest.approx(
                (gb["median"] - ga["median"]) / ga["median"] * 100, abs=0.01
            )
        width = max(ga["max"] - ga["min"], gb["max"] - gb["min"])
        expect = "noise" if abs(gb["median"] - ga["median"]) <= width else "beyond noise"
        assert other["GBps"]["noise"] == expect
    assert "phase write" in done.out and "baseline: a" in done.out
    page = (tmp_path / "c.html").read_text()
    assert page.startswith("<!doctype html>") and "<h2>phase read_random</h2>" in page


def test_compare_refuses_an_invalid_run_unless_forced(trial_sets: list[Path], tmp_path: Path) -> None:
    # a real invalid run: it asked for RDMA on a machine that has none
    bad = tmp_path / "bad"
    done = run_cli("run", *SWEEP, "storage=nixl", "storage.require_rdma=true", f"run.dir={bad}", np=2)
    assert done.code == 1 and not done.summary()["valid"], done.err[-2000:]
    refused = run_cli("compare", str(trial_sets[0]), str(bad))
    lines = [ln for ln in refused.err.splitlines() if ln.strip()]
    assert refused.code == 2 and len(lines) == 1 and "is an invalid run" in lines[0] and "--force" in lines[0]
    forced = run_cli("compare", str(trial_sets[0]), str(bad), "--force", "--json", str(tmp_path / "f.json"))
    assert forced.code == 0, forced.err
    marks = {r["run"]: r["marks"] for r in json.loads((tmp_path / "f.json").read_text())["runs"]}
    assert marks["a"] == [] and marks["bad"] and marks["bad"][0].startswith("invalid: ")
    assert "[invalid: " in forced.out


def test_compare_refuses_runs_of_another_shape(trial_sets: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    done = run_cli("run", *SWEEP, "workload.phases=[write,read_random]", f"run.dir={other}")
    assert done.code == 0, done.err
    refused = run_cli("compare", str(trial_sets[0]), str(other))
    assert refused.code == 2 and "is not comparable with" in refused.err and "phases" in refused.err
    assert refused.err.count("\n") == 1
    forced = run_cli("compare", str(trial_sets[0]), str(other), "--force")
    assert forced.code == 0 and "[not comparable: phases" in forced.out


@pytest.mark.parametrize("args", [["/nonexistent/run", "/nonexistent/two"], ["--bogus"], ["only-one"]])
def test_compare_bad_input_is_one_line(args: list[str], tmp_path: Path) -> None:
    if args == ["only-one"]:
        args = [str(tmp_path)]
    done = run_cli("compare", *args)
    lines = [ln for ln in done.err.splitlines() if ln.strip()]
    assert done.code == 2 and len(lines) == 1 and lines[0].startswith("dlio-ext: error: "), done.err
    assert "Traceback" not in done.err


def test_report_of_a_trial_set_links_each_trial_page(trial_sets: list[Path]) -> None:
    d = trial_sets[1]
    done = run_cli("report", str(d))
    assert done.code == 0, done.err
    assert done.out.strip().splitlines()[-1] == f"report: {d / 'report.html'}"
    page = (d / "report.html").read_text()
    doc = json.loads((d / "trials.json").read_text())
    for r in doc["runs"]:
        assert (d / r / "report.html").is_file() and f'href="{r}/report.html"' in page
    for name, p in doc["phases"].items():
        assert f"<td>{name}</td>" in page and f'data-v="{p["GBps"]["median"]!r}"' in page
    assert "3 trials of storage_sweep" in page and "VALID" in page
