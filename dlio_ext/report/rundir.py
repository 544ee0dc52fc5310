"""A run directory read back for a report: the summary (checked against its schema), the
INCOMPLETE marker, the resolved config, the hosts, the log's end, and a digest of every rank file
(the few figures a page shows per rank, not the files: a 1,024-rank run stays small in memory).

Reads nothing but the directory, so a page can be drawn from it at any time later; writes nothing.
Bad input is one `UsageError` line (exit 2): not a run directory, a summary that is not JSON or
is of another schema version, or one that breaks its schema's common part.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dlio_ext.errors import UsageError
from dlio_ext.metrics import results

#: the marker a run leaves while it goes, and with its reason when it did not finish (the
#: harness's lifecycle.INCOMPLETE; report does not import run)
INCOMPLETE = "INCOMPLETE"
#: the last lines of run.log a page shows
LOG_TAIL = 40


@dataclass(frozen=True)
class RankPhase:
    """One rank's part of one phase: seconds from the phase's barrier."""

    start: float
    end: float
    ops: int
    errors: int

    @property
    def seconds(self) -> float:
        return max(self.end - self.start, 0.0)


@dataclass(frozen=True)
class Rank:
    rank: int
    host: str
    wall_seconds: float
    phases: dict[str, RankPhase]


@dataclass
class Run:
    path: Path
    #: summary.json, None when the run never wrote one (INCOMPLETE)
    summary: dict[str, Any] | None
    #: the INCOMPLETE marker's text when the directory holds one
    incomplete: str | None
    config_text: str | None
    host: dict[str, Any] | None
    ranks: list[Rank]
    #: rank files that could not be read, one line each (the page says so; the rest still render)
    problems: list[str] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)

    @property
    def workload(self) -> str:
        """The summary's workload, else the one config.yaml names (a run that never finished)."""
        if self.summary is not None:
            return str(self.summary.get("workload"))
        try:
            cfg = yaml.safe_load(self.config_text or "")
            return str(cfg["workload"]["name"])
        except (yaml.YAMLError, TypeError, KeyError):
            return "unknown workload"

    def file(self, name: str) -> Path | None:
        """A data file the summary names (a figure, a CSV), when it is a file inside the run
        directory: a page is drawn from the directory alone."""
        path = (self.path / name).resolve()
        return path if path.is_file() and path.is_relative_to(self.path.resolve()) else None

    def section(self) -> dict[str, Any]:
        """The workload's own section of the summary ({} when it wrote none)."""
        s = self.summary or {}
        sec = s.get(self.workload)
        return sec if isinstance(sec, dict) else {}


def load(path: Path) -> Run:
    """The run in `path`, or UsageError saying in one line why it is not one this version reads."""
    if not path.is_dir():
        raise UsageError(f"{path}: not a directory (give the run directory `dlio-ext run` printed)")
    summary_file, marker = path / "summary.json", path / INCOMPLETE
    if not summary_file.is_file() and not marker.is_file():
        raise UsageError(f"{path}: not a dlio-ext run directory (no summary.json, no {INCOMPLETE} marker)")
    summary = _summary(summary_file) if summary_file.is_file() else None
    ranks, problems = _ranks(path)
    return Run(
        path=path,
        summary=summary,
        incomplete=_text(marker),
        config_text=_text(path / "config.yaml"),
        host=_json_or_none(path / "host.json"),
        ranks=ranks,
        problems=problems,
        log_tail=(_text(path / "run.log") or "").splitlines()[-LOG_TAIL:],
    )


def _summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: not readable JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(summary, dict):
        raise UsageError(f"{path}: not a dlio-ext summary (a JSON {type(summary).__name__}, not an object)")
    if summary.get("schema") != results.SCHEMA:
        raise UsageError(
            f"{path}: schema {summary.get('schema')!r} is not {results.SCHEMA!r}, the one this version reads"
        )
    # the common part is what every page relies on; a section is read defensively by its view
    name = summary.get("workload")
    section: dict[str, Any] | None = {"type": "object"} if isinstance(name, str) and name in summary else None
    broken = results.validate(summary, section)
    if broken:
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        raise UsageError(f"{path}: breaks the {results.SCHEMA} schema: {broken[0]}{more}")
    return summary


def _ranks(path: Path) -> tuple[list[Rank], list[str]]:
    ranks: list[Rank] = []
    problems: list[str] = []
    for f in sorted(path.glob("rank-[0-9]*.json")):
        try:
            r = json.loads(f.read_text())
            ranks.append(
                Rank(
                    rank=int(r["rank"]),
                    host=str(r.get("host", "")),
                    wall_seconds=float(r.get("wall_seconds", 0.0)),
                    phases={
                        str(name): RankPhase(
                            float(q["start"]), float(q["end"]), int(q["ops"]), int(q["errors"])
                        )
                        for name, q in r["phases"].items()
                    },
                )
            )
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(f"{f.name}: unreadable ({type(exc).__name__}: {' '.join(str(exc).split())})")
    ranks.sort(key=lambda r: r.rank)
    return ranks, problems


def _text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _json_or_none(path: Path) -> dict[str, Any] | None:
    text = _text(path)
    try:
        out = json.loads(text) if text is not None else None
    except ValueError:
        return None
    return out if isinstance(out, dict) else None
