"""`dlio-ext report RUN_DIR`: a run's self-contained page and terminal summary, drawn from real
runs (a storage sweep, a 2-rank checkpoint burst through a posix tier-0 under the real mpirun, an
invalid 2-rank run that fills a nixl memory tier, a run that did not start), re-drawn later from the directory alone, with
nothing from the run able to become markup, and opened in a real headless Chromium."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from helpers import KV_SMALL, Done, run_cli

from dlio_ext.metrics.histogram import Histogram

SWEEP = ["run", "storage=posix", "workload.objects_per_rank=8", "workload.object_size=8192"]
#: 4 MiB a rank through a posix tier-0 that keeps one checkpoint: restore_0 comes from storage,
#: restore_1 from the tier-0
CKPT = [
    "run", "storage=posix", "workload=checkpoint_burst/custom", "workload.bytes_per_rank=4194304",
    "workload.chunk_size=1048576", "workload.buffer_pool_bytes=4194304", "workload.compute_seconds=0.1",
    "workload.checkpoints=2", "workload.restores=2", "workload.tier0_keep=1", "storage.fsync=file", "tier0=posix",
]  # fmt: skip
HOSTILE = "<img src=x onerror=alert(1)>\"'&"
SCRIPT = "</td><script>alert(2)</script>"


class Tables(HTMLParser):
    """Every table with an id: rows of (text, data-v) cells; every <img>; the status badge."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str | None]]]] = {}
        self.heads: dict[str, list[str]] = {}
        self.images: list[str] = []
        self.alts: list[str] = []
        self.status = ""
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._v: str | None = None
        self._in_head = False
        self._in_status = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table], self.heads[self._table] = [], []
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr" and self._table and not self._in_head:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell, self._v = [], a.get("data-v")
        elif tag == "img":
            self.images.append(a.get("src") or "")
            self.alts.append(a.get("alt") or "")
        elif tag == "span" and a.get("id") == "status":
            self._in_status = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None
        elif tag == "thead":
            self._in_head = False
        elif tag in ("td", "th") and self._table and self._cell is not None:
            text = "".join(self._cell)
            if self._in_head:
                self.heads[self._table].append(text)
            else:
                self.tables[self._table][-1].append((text, self._v))
            self._cell = None
        elif tag == "span":
            self._in_status = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_status:
            self.status += data

    def rows(self, table: str) -> dict[str, dict[str, tuple[str, str | None]]]:
        """A table's rows by their first cell's text, each {column head: (text, data-v)}."""
        return {r[0][0]: dict(zip(self.heads[table], r, strict=True)) for r in self.tables[table]}


def parse(page: Path) -> Tables:
    t = Tables()
    t.feed(page.read_text())
    return t


def report(run_dir: Path, *args: str) -> Done:
    return run_cli("report", str(run_dir), *args, timeout=120)


def page_of(d: Done) -> Path:
    assert d.code == 0, d.out + d.err
    last = d.out.strip().splitlines()[-1]
    assert last.startswith("report: "), d.out
    return Path(last.removeprefix("report: "))


def v(cell: tuple[str, str | None]) -> float:
    assert cell[1] is not None, cell
    return float(cell[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("runs")
    sweep = run_cli(*SWEEP, f"run.dir={tmp / 'sweep'}")
    assert sweep.code == 0, sweep.err[-3000:]
    ckpt = run_cli(*CKPT, f"tier0.root={tmp / 'flash'}", f"run.dir={tmp / 'ckpt'}", np=2)
    assert ckpt.code == 0, ckpt.err[-3000:]
    return {"sweep": sweep.results, "ckpt": ckpt.results}


def _summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("name", ["sweep", "ckpt"])
def test_the_page_names_every_phase_with_the_summary_figures(runs: dict[str, Path], name: str) -> None:
    run_dir = runs[name]
    s = _summary(run_dir)
    d = report(run_dir)
    page = page_of(d)
    assert page == run_dir / "report.html"
    t = parse(page)
    assert t.status == "VALID"
    phases = t.rows("phases")
    assert list(phases) == list(s["phases"])
    for phase, p in s["phases"].items():
        row = phases[phase]
        for col, value in (("ops", p["ops"]), ("planned", p["planned_ops"]), ("bytes", p["bytes"]),
                           ("seconds", p["seconds"]), ("GB/s", p["GBps"]), ("ops/s", p["ops_per_s"]),
                           ("p50 us", p["latency_us"]["p50"]), ("p99 us", p["latency_us"]["p99"]),
                           ("max us", p["latency_us"]["max"]), ("straggler", p["straggler_ratio"]),
                           ("errors", p["errors"])):  # fmt: skip
            assert v(row[col]) == value, (phase, col, row[col], value)
        if p.get("cache_fraction") is not None:
            assert v(row["cache fraction"]) == p["cache_fraction"]
        # the distribution drawn is the kept histogram's: its percentiles are the summary's
        lat = t.rows("latency-table")[phase]
        assert v(lat["count"]) == Histogram.decode(p["hist"]).n == p["ops"]
        for k in ("p50", "p90", "p95", "p99", "max", "mean"):
            assert v(lat[k]) == p["latency_us"][k], (phase, k)
        assert v(lat["p99.9"]) == p["latency_us"]["p999"]
        # the stragglers, from the rank files: the summary's ratio and slowest rank's time
        st = t.rows("stragglers")[phase]
        assert v(st["slowest / median"]) == p["straggler_ratio"], (phase, st)
        assert round(v(st["its s"]), 9) == p["rank_seconds"]["max"]
    ranks = t.rows("per-rank")
    assert sorted(int(v(r["rank"])) for r in ranks.values()) == list(range(s["ranks"]))
    assert len(t.images) >= 2 and all(i.startswith("data:image/png;base64,") for i in t.images)
    text = page.read_text()
    assert (
        "http://" not in text and "https://" not in text and "<script" not in text
    )  # nothing to fetch or run
    for key in ("durability", "cache_control"):
        assert f"<td>{key}</td><td>" in text and str(s["storage"][key]) in text
    # the terminal summary: every phase and the verdict, then where the page is
    for phase in s["phases"]:
        assert re.search(rf"^{re.escape(phase)}\s", d.out, re.M), d.out
    assert "valid: yes" in d.out


def test_the_checkpoint_view_shows_bursts_tier0_and_restore_sources(runs: dict[str, Path]) -> None:
    s = _summary(runs["ckpt"])
    sec = s["checkpoint_burst"]
    t = parse(page_of(report(runs["ckpt"])))
    served = {k: c[0] for k, c in ((k, r["served from"]) for k, r in t.rows("restore-sources").items())}
    assert served == sec["tier0"]["restores"] == {"restore_0": "durable", "restore_1": "tier0"}
    restores = t.rows("bursts-restore")
    assert {k: r["served from"][0] for k, r in restores.items()} == served
    for b in sec["restore"]["per_checkpoint"]:
        assert v(restores[b["phase"]]["GB/s"]) == b["GBps"]
    tier0 = {int(v(r[0])): r for r in t.tables["tier0-bursts"]}
    for c in sec["tier0"]["per_checkpoint"]:
        row = tier0[c["checkpoint"]]
        assert (v(row[1]), row[2][0], v(row[3])) == (c["stall_s"], "yes", c["durable_s"])
    # the page's figures (distributions, ranks, bursts) and the run's own timeline
    assert [a.split(":")[0].split(" (")[0] for a in t.alts] == [
        "latency distributions", "each rank's time over its phase's median", "burst timeline", "timeline",
    ]  # fmt: skip


MD = [
    "workload=metadata/full",
    "workload.items_per_rank=20",
    "workload.iterations=1",
    "run.progress_interval=0",
]


def test_the_kv_cache_and_metadata_views_show_their_sections(tmp_path: Path) -> None:
    kv = run_cli("run", "storage=posix", *KV_SMALL, "run.progress_interval=0", f"run.dir={tmp_path / 'kv'}")
    md = run_cli("run", "storage=posix", *MD, f"run.dir={tmp_path / 'md'}")
    assert kv.code == 0 and md.code == 0, kv.err[-2000:] + md.err[-2000:]
    k = kv.summary()["kv_cache"]
    d = report(kv.results)
    t = parse(page_of(d))
    hits = t.rows("hit-rates")
    for of in ("tokens", "chunks"):
        assert {tier: v(c) for tier, c in hits[of].items() if tier != "of"} == k["hit_rate"][of]
    lat = t.rows("kv-latency")
    assert (
        v(lat["TTFT (estimated)"]["p95"]) == k["ttft_ms"]["p95"]
        and v(lat["read chunk"]["p50"]) == k["read"]["latency_ms"]["p50"]
    )
    assert v(t.rows("kv-io")["read"]["GB/s"]) == k["read"]["GBps"]
    assert "hit rate per tier" in t.alts and "timeseries (timeseries.png, drawn when the run ended)" in t.alts
    assert "hit rate (tokens):" in d.out and "TTFT ms: p50" in d.out
    m = md.summary()["metadata"]
    rows = parse(page_of(report(md.results))).rows("metadata-phases")
    assert list(rows) == list(m["phases"])
    for name, p in m["phases"].items():
        assert (rows[name]["verb"][0], v(rows[name]["rate /s"]), v(rows[name]["items"])) == (
            p["verb"],
            p["rate"],
            p["items"],
        )


def test_an_invalid_run_renders_marked_with_every_reason_and_error(tmp_path: Path) -> None:
    """2 ranks fill a 2 MiB nixl memory tier: puts fail with no_space, the run is invalid."""
    pytest.importorskip("nixl_cu12")
    d = run_cli(
        "run", "workload=storage_sweep", "storage=nixl", "storage.pool_bytes=2097152", "workload.object_size=262144",
        "workload.objects_per_rank=12", "workload.phases=[write]", "run.preflight=false", f"run.dir={tmp_path / 'r'}",
        np=2,
    )  # fmt: skip
    assert d.code == 1, d.out + d.err
    s = d.summary()
    w = s["phases"]["write"]
    assert s["invalid_reasons"] and w["error_kinds"].get("no_space", 0) > 0
    r = report(d.results)
    page = page_of(r)
    t = parse(page)
    assert t.status == "INVALID"
    listed = page.read_text().split('<li class="bad">')[1:]
    assert [html.unescape(x.split("</li>")[0]) for x in listed] == s["invalid_reasons"]
    errors = t.rows("errors")["write"]
    assert (
        v(errors["errors"]) == w["errors"]
        and errors["by kind"][0] == f"no_space {w['error_kinds']['no_space']}"
    )
    assert errors["first error"][0] == w["first_error"]
    assert v(t.rows("phases")["write"]["errors"]) == w["errors"]
    assert f"INVALID: {'; '.join(s['invalid_reasons'])}" in r.out


def test_a_run_that_did_not_start_renders_as_incomplete(tmp_path: Path) -> None:
    same = tmp_path / "same"
    d = run_cli(
        *SWEEP, f"storage.root={same}", "tier0=posix", f"tier0.root={same}", f"run.dir={tmp_path / 'r'}"
    )
    assert d.code == 2, d.err
    run_dir = tmp_path / "r"
    marker = (run_dir / "INCOMPLETE").read_text().strip()
    assert "did not start" in marker and not (run_dir / "summary.json").exists()
    r = report(run_dir)
    t = parse(page_of(r))
    assert t.status == "INCOMPLETE"
    text = (run_dir / "report.html").read_text()
    assert html.escape(marker) in text and "config.yaml" in text and "storage_sweep" in text
    assert f"INCOMPLETE: {marker}" in r.out


def _hostile_copy(src: Path, dst: Path) -> Path:
    """A real run's directory with markup where a key, a reason, an error and a host name go."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("data", "report.html"))
    s = _summary(dst)
    first = next(iter(s["phases"]))
    s["phases"] = {(HOSTILE if k == first else k): p for k, p in s["phases"].items()}
    p = s["phases"][HOSTILE]
    p["errors"], p["error_kinds"], p["first_error"] = 1, {"corrupt": 1}, SCRIPT  # kinds: [a-z_]+
    s["valid"], s["errors"] = False, 1
    s["invalid_reasons"], s["warnings"] = [SCRIPT, HOSTILE], [HOSTILE]
    s["command"] += " " + SCRIPT
    s["storage"]["root"] = HOSTILE
    s["workload_config"][HOSTILE] = SCRIPT
    (dst / "summary.json").write_text(json.dumps(s))
    for f in dst.glob("rank-*.json"):
        r = json.loads(f.read_text())
        r["host"] = SCRIPT
        r["phases"] = {(HOSTILE if k == first else k): q for k, q in r["phases"].items()}
        f.write_text(json.dumps(r))
    with (dst / "run.log").open("a") as f:
        f.write(SCRIPT + "\n")
    (dst / "config.yaml").write_text(f"x: '{SCRIPT}'\n")
    return dst


class Markup(HTMLParser):
    """Every element and attribute of a page, and its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attrs: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attrs |= {a for a, _ in attrs}

    def handle_data(self, data: str) -> None:
        self.text.append(data)


#: the elements and attributes the page's builders make, and nothing else
ELEMENTS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "h4", "span", "nav", "a",
            "section", "p", "ul", "li", "pre", "code", "details", "summary", "table", "thead", "tbody", "tr",
            "th", "td", "figure", "img", "figcaption", "div"}  # fmt: skip
ATTRIBUTES = {"lang", "charset", "class", "id", "href", "data-v", "src", "alt"}


def test_nothing_from_the_run_becomes_markup(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = _hostile_copy(runs["sweep"], tmp_path / "hostile")
    d = report(run_dir)
    page = page_of(d).read_text()
    m = Markup()
    m.feed(page)
    assert m.tags <= ELEMENTS and m.attrs <= ATTRIBUTES, (m.tags - ELEMENTS, m.attrs - ATTRIBUTES)
    assert "script" not in m.tags and not any(a.startswith("on") for a in m.attrs)
    text = "".join(m.text)
    # shown as the text it is: the reasons, the first error, the command, the host, log and config
    assert text.count(SCRIPT) >= 6 and text.count(HOSTILE) >= 4, (text.count(SCRIPT), text.count(HOSTILE))
    t = parse(run_dir / "report.html")
    assert HOSTILE in t.rows("phases") and t.rows("stragglers")[HOSTILE]["its host"][0] == SCRIPT
    assert t.status == "INVALID"
    assert all(i.startswith("data:image/png;base64,") for i in t.images)
    assert SCRIPT in d.out  # the terminal summary prints it as it is: a terminal runs no markup


def test_a_damaged_section_loses_its_view_not_the_page(runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "damaged"
    shutil.copytree(runs["ckpt"], run_dir, ignore=shutil.ignore_patterns("data", "report.html"))
    s = _summary(run_dir)
    s["checkpoint_burst"]["restore"] = {"per_checkpoint": [{"phase": 3, "GBps": "fast"}]}
    s["checkpoint_burst"]["tier0"] = {"per_checkpoint": "gone", "restores": [1], "goodput": {"x": 1}}
    (run_dir / "timeline.csv").write_text("kind,checkpoint\nwrite,0\n")  # its times cut off
    (tmp_path / "outside.png").write_bytes((run_dir / "timeline.png").read_bytes())
    s["figures"]["outside"] = "../outside.png"  # a page is drawn from the directory alone
    (run_dir / "summary.json").write_text(json.dumps(s))
    d = report(run_dir)
    t = parse(page_of(d))
    assert list(t.rows("phases")) == list(s["phases"]) and t.status == "VALID"
    assert (
        "this view could not be drawn from the checkpoint_burst section"
        in (run_dir / "report.html").read_text()
    )
    assert "checkpoint_burst section unreadable" in d.out and "valid: yes" in d.out
    assert "outside: ../outside.png is not in the run directory" in (run_dir / "report.html").read_text()


def test_the_page_is_redrawn_the_same_from_the_directory_alone(runs: dict[str, Path], tmp_path: Path) -> None:
    """Later, somewhere else, with the data gone: the same page; and drawing it writes nothing
    but the page."""
    first = tmp_path / "a" / "run"
    shutil.copytree(runs["ckpt"], first, ignore=shutil.ignore_patterns("report.html"))
    shutil.rmtree(first / "data", ignore_errors=True)
    before = sorted(p.relative_to(first) for p in first.rglob("*"))
    a = page_of(report(first)).read_bytes()
    assert sorted(p.relative_to(first) for p in first.rglob("*")) == sorted([*before, Path("report.html")])
    later = tmp_path / "b" / "run"
    later.parent.mkdir()
    first.rename(later)
    (later / "report.html").unlink()
    out = tmp_path / "elsewhere.html"
    assert page_of(report(later, "--out", str(out))) == out
    assert out.read_bytes() == a
    text = report(later, "--text")
    assert text.code == 0 and "report: " not in text.out and not (later / "report.html").exists()
    assert "stall_0" in text.out and "tier-0: stall p50" in text.out


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p / "missing", "not a directory"),
        (lambda p: (p / "file").write_text("x") or p / "file", "not a directory"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "not a dlio-ext run directory"),
        (
            lambda p: _write(p / "old", {"schema": "dlio-ext/summary/1", "phases": {}}),
            "is not 'dlio-ext/summary/2'",
        ),
        (lambda p: _write(p / "other", {"schema": "mlperf/results/1"}), "is not 'dlio-ext/summary/2'"),
        (lambda p: _write(p / "broken", "{not json"), "not readable JSON"),
        (
            lambda p: _write(p / "short", {"schema": "dlio-ext/summary/2", "workload": "storage_sweep"}),
            "breaks the",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, make: Any, words: str) -> None:
    d = report(make(tmp_path))
    assert d.code == 2, d.out + d.err
    lines = [ln for ln in d.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlio-ext: error: ") and words in lines[0], d.err
    assert d.out == ""


@pytest.mark.parametrize("args", [["--bogus"], ["--out"]])
def test_bad_arguments_are_one_line_and_exit_2(runs: dict[str, Path], args: list[str]) -> None:
    d = report(runs["sweep"], *args)
    assert d.code == 2 and len(d.err.strip().splitlines()) == 1 and "usage: dlio-ext report" in d.err, d.err


def _write(d: Path, body: Any) -> Path:
    d.mkdir()
    (d / "summary.json").write_text(body if isinstance(body, str) else json.dumps(body))
    return d


# --- a real browser ----------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it as root)"
)


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def console_lines(stderr: str) -> list[str]:
    """What the page said on the console (an error, an uncaught exception): Chromium logs each
    console message as a CONSOLE line; a page without a script says nothing."""
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


@needs_chromium
def test_a_console_error_is_seen(tmp_path: Path) -> None:
    """The check below can fail: a page that throws is caught by it."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>undefined_function()</script>")
    lines = console_lines(chromium("--dump-dom", bad.as_uri()).stderr)
    assert any("Uncaught ReferenceError" in ln for ln in lines), lines


@needs_chromium
@pytest.mark.parametrize("name", ["sweep", "ckpt", "hostile"])
def test_the_page_opens_in_chromium_with_its_tables_and_plots(
    runs: dict[str, Path], tmp_path: Path, name: str
) -> None:
    import matplotlib.image as mpimg
    import numpy as np

    run_dir = _hostile_copy(runs["sweep"], tmp_path / "hostile") if name == "hostile" else runs[name]
    page = page_of(report(run_dir))
    shot = tmp_path / "shot.png"
    done = chromium(f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    assert console_lines(done.stderr) == []
    dom = chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0 and console_lines(dom.stderr) == [], dom.stderr[-2000:]
    t = Tables()
    t.feed(dom.stdout)
    assert "phases" in t.tables and len(t.tables["phases"]) == len(_summary(run_dir)["phases"])
    assert len(t.images) == len(parse(page).images) >= 2
    assert "<script" not in dom.stdout and '<img src="x"' not in dom.stdout
    # the screenshot: a page of tables and plots, not a blank or a broken one
    assert shot.stat().st_size > 60_000, shot.stat().st_size
    px = mpimg.imread(str(shot))[..., :3]
    assert px.shape[:2] == (2000, 1280)
    colours = np.unique((px.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 200, len(colours)  # text, table rules, plot lines and fills
    assert (px.mean(axis=2) < 0.9).mean() > 0.03  # ink on a good share of the page
    # the first plot is on the screen, drawn pixel for pixel
    plot = mpimg.imread(io.BytesIO(base64.b64decode(t.images[0].split(",", 1)[1])), format="png")[..., :3]
    assert locate(px, plot) is not None


def locate(shot: Any, image: Any) -> tuple[int, int] | None:
    """Where `image` is drawn 1:1 in `shot` (its visible part matching within 2 % a pixel), or
    None: one 64-pixel piece of its busiest row is looked for everywhere, then the whole checked."""
    import numpy as np

    h, w = image.shape[:2]
    r = int(np.argmax([len(np.unique(row, axis=0)) for row in image]))
    c = int(np.argmax(np.abs(np.diff(image[r], axis=0)).sum(axis=1)[: w - 64])) if w > 64 else 0
    piece = image[r, c : c + 64]
    for x in range(shot.shape[1] - w + 1):
        err = np.abs(shot[:, x + c : x + c + 64] - piece).mean(axis=(1, 2))
        for y in np.flatnonzero(err < 0.02).tolist():
            top = y - r
            if top < 0:
                continue
            seen = shot[top : top + h, x : x + w]
            if np.abs(seen - image[: len(seen)]).mean() < 0.02:
                return top, x
    return None
