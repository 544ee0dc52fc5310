"""Results as one model: every phase keeps its histogram state (rank files and summary), a run is
re-analysed from its rank files and compared with another run after it ended, and every workload's
summary.json validates against the JSON Schema shipped in the package (the common part in metrics,
each workload's section beside the workload), which rejects a missing key or a wrong type; a
workload dropped in as a new module brings its section's schema with it. Runs are the real CLI:
posix, the local SeaweedFS, and the real mpirun."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import KV_SMALL, PY, ROOT, Done, run_cli

import dlio_ext.workloads as workloads_pkg
from dlio_ext.config import choices
from dlio_ext.metrics import results as res
from dlio_ext.metrics.histogram import Histogram
from dlio_ext.s3server import ServerInfo, server_env
from dlio_ext.workloads.base import known, workload_class

# --- the histogram's file form -------------------------------------------------------------------


def _lognormal(n: int, seed: int) -> Histogram:
    h = Histogram()
    h.record_many(np.random.default_rng(seed).lognormal(np.log(200e-6), 1.5, n))
    h.record(3e-7)  # the sub-microsecond bucket 0 too
    return h


def test_encode_decode_is_exact_through_json():
    h = _lognormal(50_000, 1)
    back = Histogram.decode(json.loads(json.dumps(h.encode())))
    assert back.counts == h.counts
    assert (back.n, back.total_us, back.min_us, back.max_us) == (h.n, h.total_us, h.min_us, h.max_us)
    assert back.summary() == h.summary()
    empty = Histogram.decode(json.loads(json.dumps(Histogram().encode())))
    assert empty.n == 0 and empty.summary() == Histogram().summary()


def test_encoded_state_is_compact():
    """A million samples over eight decades: a few KB, well under the plain index/count lists."""
    h = _lognormal(1_000_000, 2)
    nonempty = sum(1 for c in h.counts if c)
    enc = len(json.dumps(h.encode()))
    assert nonempty > 1000
    assert enc < 2.5 * nonempty, (enc, nonempty)
    assert enc < len(json.dumps(h.to_state())) / 3


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"sub": 64}, "64 buckets per power of two"),
        ({"n": 7}, "add up to"),
        ({"bins": "not base64!"}, "damaged histogram bins"),
        ({"bins": "eJxjbQAAAIwAhg=="}, "damaged histogram bins"),  # zlib of a varint cut short
    ],
)
def test_decode_refuses_a_damaged_state(change, words):
    enc = _lognormal(100, 3).encode() | change
    with pytest.raises(ValueError, match=words):
        Histogram.decode(enc)


# --- real runs, one a workload -------------------------------------------------------------------

CKPT_SMALL = [
    "workload=checkpoint_burst/llama3_405b",
    "storage.fsync=file",
    "workload.scale=0.0005",
    "workload.checkpoints=1",
    "workload.restores=1",
    "workload.chunk_size=1048576",
    "workload.buffer_pool_bytes=8388608",
    "workload.compute_seconds=0",
    "workload.cold_restore=fadvise",
]
MD_SMALL = [
    "workload=metadata/full",
    "workload.items_per_rank=40",
    "workload.iterations=2",
    "run.progress_interval=0",
]
SWEEP_SMALL = ["workload.objects_per_rank=8", "workload.object_size=8192"]

RUNS = {
    "storage_sweep": SWEEP_SMALL,
    "metadata": MD_SMALL,
    "checkpoint_burst": CKPT_SMALL,
    "kv_cache": [*KV_SMALL, "run.progress_interval=0"],
}


def _run(tmp: Path, *args: str, **kw) -> Path:
    d = run_cli("run", *args, f"run.results_dir={tmp}", **kw)
    assert d.code == 0, d.out + d.err
    return d.results


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> dict[str, Path]:
    """Each workload once on posix, one rank; the metadata run also under mpirun with 2 ranks."""
    out = {name: _run(tmp_path_factory.mktemp(name), "storage=posix", *args) for name, args in RUNS.items()}
    out["metadata-np2"] = _run(tmp_path_factory.mktemp("md2"), "storage=posix", *MD_SMALL, np=2)
    return out


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _section(workload: str) -> dict | None:
    """The schema of the workload's summary section, as the workload ships it."""
    return workload_class(workload).summary_schema()


def _whole():
    """A validator of the whole document, composed from every registered workload's section."""
    import jsonschema

    return jsonschema.Draft202012Validator(res.schema({n: _section(n) for n in known()}))


def _whole_errors(summary: dict) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in _whole().iter_errors(summary)]


def _check_run(run_dir: Path, workload: str, ranks: int) -> dict:
    """Valid against the schema; every phase keeps its state in the summary and each rank file;
    the phases merged again from the rank files are the summary's, key for key."""
    s = _summary(run_dir)
    assert s["workload"] == workload and s["ranks"] == ranks and s["schema"] == res.SCHEMA
    assert res.validate(s, _section(workload)) == []
    assert _whole_errors(s) == []
    assert s["phases"]
    for name, p in s["phases"].items():
        h = Histogram.decode(p["hist"])
        assert h.n == p["ops"], name
        assert {k: v for k, v in h.summary().items() if k in p["latency_us"]} == p["latency_us"], name
    per_rank = [json.loads((run_dir / f"rank-{r:05d}.json").read_text()) for r in range(ranks)]
    for r in per_rank:
        assert list(r["phases"]) == list(s["phases"])
        for name, q in r["phases"].items():
            assert Histogram.decode(q["hist"]).summary() == q["latency_us"], name
    again = json.loads(json.dumps(res.reanalyse(run_dir)))
    assert again == s["phases"]
    return s


@pytest.mark.parametrize("workload", list(RUNS))
def test_every_workload_validates_and_reanalyses(run_dirs, workload):
    s = _check_run(run_dirs[workload], workload, 1)
    # a workload that writes a section ships the schema that checked it, and only then
    assert (workload in s) == (_section(workload) is not None) == (workload != "storage_sweep")


def test_mpirun_two_ranks_validates_and_reanalyses(run_dirs):
    s = _check_run(run_dirs["metadata-np2"], "metadata", 2)
    # the merged histogram counts both ranks' ops, not rank 0's alone
    name = next(iter(s["phases"]))
    ranks = [json.loads((run_dirs["metadata-np2"] / f"rank-{r:05d}.json").read_text()) for r in (0, 1)]
    assert Histogram.decode(s["phases"][name]["hist"]).n == sum(r["phases"][name]["ops"] for r in ranks)


def test_s3_run_validates_and_reanalyses(tmp_path, s3_server: ServerInfo):
    run_dir = _run(
        tmp_path,
        "storage=s3",
        "storage.prefix=results-schema",
        *SWEEP_SMALL,
        "workload.phases=[write,read_random,stat,delete]",
        env=server_env(s3_server),
    )
    s = _check_run(run_dir, "storage_sweep", 1)
    assert s["storage"]["backend"] == "s3"


def test_an_invalid_run_validates_too(tmp_path):
    """A cold claim on a tmpfs (memory by definition) makes the run invalid: the schema's other
    branch (valid false, its reasons) and read phases with a cache_fraction of 1."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mem = tmp_path / "mem"
    mem.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mem)], check=True)
    try:
        d = run_cli(
            "run", "storage=posix", f"storage.root={mem}", *SWEEP_SMALL, "workload.cold=true",
            f"run.results_dir={tmp_path / 'r'}",
        )  # fmt: skip
    finally:
        subprocess.run(["umount", "-l", str(mem)], check=False)
    assert d.code == 1, d.out + d.err
    s = d.summary()
    assert s["valid"] is False and "tmpfs" in s["invalid_reasons"][0]
    assert s["phases"]["read_random"]["cache_fraction"] == 1.0
    assert res.validate(s) == []
    assert json.loads(json.dumps(res.reanalyse(d.results))) == s["phases"]


def test_metadata_summary_stays_small(run_dirs):
    """Each phase's histogram state costs a few hundred bytes of the summary (28 phases here)."""
    s = _summary(run_dirs["metadata"])
    assert len(s["phases"]) == 28
    per_phase = [len(json.dumps(p["hist"], indent=2)) for p in s["phases"].values()]
    assert max(per_phase) < 1024, per_phase


def test_two_runs_merge_and_compare_after_the_run(run_dirs, tmp_path):
    """A second sweep with 4x larger objects: its histograms merge with the first run's and the
    comparison gives each percentile of both, from the summaries alone."""
    other = _run(tmp_path, "storage=posix", "workload.objects_per_rank=8", "workload.object_size=32768")
    a, b = res.histograms(_summary(run_dirs["storage_sweep"])), res.histograms(_summary(other))
    both = Histogram.merged([a["write"], b["write"]])
    assert both.n == a["write"].n + b["write"].n == 16
    assert both.max_us == max(a["write"].max_us, b["write"].max_us)
    cmp = res.compare(a, b)
    assert list(cmp) == list(a)  # same phases, in the run's order
    w = cmp["write"]
    assert w["a"]["p50"] == _summary(run_dirs["storage_sweep"])["phases"]["write"]["latency_us"]["p50"]
    assert w["b_over_a"]["p50"] == pytest.approx(w["b"]["p50"] / w["a"]["p50"], rel=1e-3)


def test_reanalyse_needs_the_rank_files(tmp_path, run_dirs):
    with pytest.raises(ValueError, match="no rank-NNNNN.json"):
        res.reanalyse(tmp_path)
    old = tmp_path / "old"
    old.mkdir()
    r = json.loads((run_dirs["storage_sweep"] / "rank-00000.json").read_text())
    del r["phases"]["write"]["hist"]  # a rank file of dlio-ext/summary/1
    (old / "rank-00000.json").write_text(json.dumps(r))
    with pytest.raises(ValueError, match="phase write has no histogram state"):
        res.reanalyse(old)


# --- the schema is strict --------------------------------------------------------------------------


def test_whole_schema_is_draft_2020_12_and_names_every_workload():
    import jsonschema

    sections = {n: _section(n) for n in known()}
    doc = res.schema(sections)
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["properties"]["schema"] == {"const": res.SCHEMA}
    assert doc["properties"]["workload"]["enum"] == known()
    # every registered workload has presets, and each section sits in the document under its name
    assert {c.split("/")[0] for c in choices("workload")} == set(known())
    assert {n for n, s in sections.items() if s is not None} == {
        "metadata",
        "checkpoint_burst",
        "kv_cache",
        "transfer_sweep",
    }
    for name, section in sections.items():
        if section is not None:
            assert doc["properties"][name] == {"$ref": f"#/$defs/{name}"}
            assert doc["$defs"][name]["required"] == section["required"]
    # the common part alone names no workload: adding one edits nothing in metrics
    common = res.SCHEMA_FILE.read_text()
    assert not any(f'"{n}"' in common for n in known()), "the common schema names a workload"


def test_a_section_ref_must_name_its_own_or_the_common_defs():
    ok = {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}, "b": {"$ref": "#/$defs/hist"}}}
    doc = res.schema({"w": ok | {"$defs": {"x": {"type": "integer"}}}})
    assert doc["$defs"]["w"]["properties"] == {"a": {"$ref": "#/$defs/w.x"}, "b": {"$ref": "#/$defs/hist"}}
    assert doc["$defs"]["w.x"] == {"type": "integer"}
    with pytest.raises(ValueError, match="'#/\\$defs/x' names neither one of its own"):
        res.schema({"w": ok})
    with pytest.raises(ValueError, match="names neither"):
        res.schema({"w": {"$ref": "other.json#/a"}})
    with pytest.raises(ValueError, match="named as a key of the summary's common part"):
        res.schema({"phases": ok | {"$defs": {"x": {}}}})


def _drop(path: list):
    def f(s: dict) -> None:
        *parent, key = path
        node = s
        for k in parent:
            node = node[k]
        del node[key]

    return f


def _put(path: list, value):
    def f(s: dict) -> None:
        *parent, key = path
        node = s
        for k in parent:
            node = node[k]
        node[key] = value

    return f


MUTATIONS = {
    "storage_sweep": [
        (_drop(["valid"]), "'valid' is a required property"),
        (_drop(["phases", "write", "ops"]), "'ops' is a required property"),
        (_put(["phases", "write", "ops"], "8"), "'8' is not of type 'integer'"),
        (_drop(["phases", "read_random", "hist"]), "'hist' is a required property"),
        (_put(["phases", "write", "hist", "bins"], "a b"), "does not match"),
        (_put(["phases", "write", "latency_us", "p99"], -1), "less than the minimum"),
        (_put(["counters", "retries"], 1.5), "not of type 'integer'"),
        (_put(["storage", "secret_key"], "x"), "should not be valid"),
        (_put(["valdi"], True), "Unevaluated properties are not allowed"),
        (_put(["invalid_reasons"], ["a reason"]), "expected to be empty"),  # valid with a reason
        (_put(["schema"], "dlio-ext/summary/1"), "was expected"),
        (_put(["storage_sweep"], {}), "Unevaluated properties are not allowed"),  # it writes none
    ],
    "metadata": [
        (_drop(["metadata"]), "is not valid under any of the given schemas"),
        (_drop(["metadata", "geomean"]), "'geomean' is a required property"),
        (_put(["metadata", "phases", "file_stat@1", "rate"], "fast"), "'fast' is not of type 'number'"),
        (_drop(["metadata", "over_iterations"]), "'over_iterations' is a required property"),
    ],
    "checkpoint_burst": [
        (_drop(["checkpoint_burst", "goodput"]), "'goodput' is a required property"),
        (_put(["checkpoint_burst", "write", "per_checkpoint", 0, "bytes"], None), "None is not of type"),
        (_put(["checkpoint_burst", "mode"], "async"), "'stall' is a required property"),
    ],
    "kv_cache": [
        (_drop(["kv_cache", "read", "max_rank_p95_ms"]), "'max_rank_p95_ms' is a required property"),
        (_put(["kv_cache", "hit_rate", "tokens", "total"], 1.5), "greater than the maximum"),
        (_put(["kv_cache", "requests", "latency_ms", "count"], "16"), "'16' is not of type 'integer'"),
    ],
}


@pytest.mark.parametrize("workload", list(MUTATIONS))
def test_schema_rejects_a_mutated_summary(run_dirs, workload):
    """Each mutation fails the summary's own schema (common part and its section) and the whole
    document alike, with the same words."""
    s = _summary(run_dirs[workload])
    assert res.validate(s, _section(workload)) == [] == _whole_errors(s)
    for mutate, words in MUTATIONS[workload]:
        bad = copy.deepcopy(s)
        mutate(bad)
        for errors in (res.validate(bad, _section(workload)), _whole_errors(bad)):
            assert any(words in e for e in errors), (words, errors)


@pytest.mark.parametrize("workload", list(RUNS))
def test_another_workloads_section_is_refused(run_dirs, workload):
    """A real section of another workload added to a real summary: an unknown key to the
    summary's own schema, and a section the whole document refuses for this workload."""
    s = _summary(run_dirs[workload])
    for other in ("metadata", "checkpoint_burst", "kv_cache"):
        if other == workload:
            continue
        bad = copy.deepcopy(s) | {other: _summary(run_dirs[other])[other]}
        errors = res.validate(bad, _section(workload))
        assert any(f"Unevaluated properties are not allowed ('{other}' was unexpected)" in e for e in errors)
        assert any("should not be valid" in e for e in _whole_errors(bad)), other
    if workload != "storage_sweep":
        # its section with no schema handed in is an unknown key; with another's, it fails that one
        assert any(f"'{workload}' was unexpected" in e for e in res.validate(s))
        wrong = next(o for o in ("metadata", "kv_cache") if o != workload)
        errors = res.validate(s, _section(wrong))
        assert errors and all(e.startswith(f"$.{workload}") for e in errors), errors


# --- a workload dropped in as one module brings its section's schema ------------------------------

TOYLOAD = '''
"""Writes a few objects, deletes them and reports how many in its own section (a test's new workload)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dlio_ext.validate import first_problem, positive
from dlio_ext.workloads.base import Workload, register
from dlio_ext.workloads.phases import PhaseResult


@dataclass
class Config:
    name: str = "toyload"
    objects: int = 4

    def validate(self) -> str | None:
        return first_problem(positive("objects", self.objects))


@register
class ToyLoad(Workload):
    name = "toyload"
    Config = Config

    def run(self) -> list[PhaseResult]:
        ctx, n = self.ctx, self.ctx.config.objects
        buf = ctx.backend.alloc(4096)
        key = lambda i: f"{ctx.run_id}/toy/r{ctx.rank}/{i}"  # noqa: E731

        def put(i: int, _state: Any) -> int:
            ctx.backend.put(key(i), buf)
            return len(buf)

        def delete(i: int, _state: Any) -> int:
            ctx.backend.delete(key(i))
            return 0

        return [ctx.runner.run("put", n, put, io="write"), ctx.runner.run("delete", n, delete)]

    def summarize(self, phases: dict[str, Any], per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        return {"toyload": {"objects": phases["put"]["ops"], "latency_us": phases["put"]["latency_us"]}}
'''
# its section: a key of its own, and the summary's common latency block by reference
TOYLOAD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["objects", "latency_us"],
    "properties": {"objects": {"$ref": "#/$defs/objects"}, "latency_us": {"$ref": "#/$defs/latency_us"}},
    "additionalProperties": False,
    "$defs": {"objects": {"type": "integer", "minimum": 1}},
}


@pytest.fixture()
def toyload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A new workload dropped in as one module (its schema beside it) on the package's path, and
    its presets in a copy of the config directory; removed from the table afterwards."""
    from dlio_ext.workloads import base

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "toyload.py").write_text(TOYLOAD)
    (plugins / "toyload.schema.json").write_text(json.dumps(TOYLOAD_SCHEMA))
    monkeypatch.setattr(workloads_pkg, "__path__", [*workloads_pkg.__path__, str(plugins)])
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "workload_configs", configs)
    (configs / "workload/toyload.yaml").write_text("name: toyload\nobjects: 6\n")
    monkeypatch.setenv("DLIO_EXT_CONFIG_DIR", str(configs))
    yield plugins
    base.WORKLOADS.classes.pop("toyload", None)
    sys.modules.pop("dlio_ext.workloads.toyload", None)


def test_a_new_workload_brings_its_section_schema(toyload: Path, tmp_path: Path):
    """The real CLI runs the new module; its summary validates against the common part and the
    schema beside the module, with nothing in metrics edited, and that schema is what checks it."""
    boot = (
        "import sys; import dlio_ext.workloads as w; w.__path__.append(sys.argv[1]); "
        "from dlio_ext.cli import main; sys.exit(main(sys.argv[2:]))"
    )
    args = ["run", "workload=toyload", "storage=posix", f"run.results_dir={tmp_path}/r"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DLIO_EXT_S3_"))}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.run(
        [PY, "-c", boot, str(toyload), *args], capture_output=True, text=True, env=env, timeout=300
    )
    d = Done(p.returncode, p.stdout, p.stderr)
    assert d.code == 0, d.err
    s = d.summary()
    assert s["workload"] == "toyload" and s["valid"] is True and s["toyload"]["objects"] == 6
    section = workload_class("toyload").summary_schema()
    assert section == TOYLOAD_SCHEMA
    assert res.validate(s, section) == []
    assert "toyload" in known() and _whole_errors(s) == []
    # its schema is what checks its section: its own key and the common latency block
    for mutate, words in (
        (_put(["toyload", "objects"], 0), "less than the minimum"),
        (_drop(["toyload", "latency_us", "p99"]), "'p99' is a required property"),
        (_put(["toyload", "extra"], 1), "Additional properties are not allowed"),
        (_drop(["toyload"]), "is not valid under any of the given schemas"),
        (_put(["metadata"], {}), "'metadata' was unexpected"),
    ):
        bad = copy.deepcopy(s)
        mutate(bad)
        errors = res.validate(bad, section)
        assert any(words in e for e in errors), (words, errors)
    assert any("'toyload' was unexpected" in e for e in res.validate(s))  # no schema: no section
