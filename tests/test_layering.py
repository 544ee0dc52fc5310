"""The arrows between dlio-ext's packages run one way (issue #11):

    cli -> (config, run, report, compat, dlio, mlperf, evaluate); run -> workloads -> (storage, metrics);
    report -> metrics; dlio -> (storage, workloads); compat -> (storage, workloads);
    mlperf -> metrics; evaluate -> (run, compat, report)

A package may import what it reaches by those arrows, and the leaf modules anyone may use
(errors, world, the package's version, the validators, the registry of plug-ins found by name,
the local S3 server launcher). Every import in the package's source is read, including those
inside functions: a lazy import is an arrow all the same."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from helpers import ROOT

PKG = ROOT / "dlio_ext"

ARROWS: dict[str, set[str]] = {
    "cli": {"config", "run", "report", "compat", "dlio", "mlperf", "evaluate"},
    # evaluate runs the suite as subprocesses of the CLI; in-process it checks runs' arguments
    # (run's config check), reaches stores (compat's client), reads results (metrics, the
    # checkpoint goodput formula of workloads) and builds its page with the report's markup
    "evaluate": {"run", "compat", "report"},
    "run": {"config", "workloads"},
    "workloads": {"storage", "metrics"},
    "report": {"metrics"},
    "dlio": {"storage", "workloads"},
    "compat": {"storage", "workloads"},
    "mlperf": {"metrics"},
    "config": set(),
    "storage": set(),
    "metrics": set(),
}
LEAVES = {"errors", "world", "validate", "registry", "s3server", "__init__"}


@cache
def reach(unit: str) -> frozenset[str]:
    out = set(ARROWS.get(unit, set()))
    for u in ARROWS.get(unit, set()):
        out |= reach(u)
    return frozenset(out)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_module(name: str) -> bool:
    return (PKG / f"{name}.py").exists() or (PKG / name / "__init__.py").exists()


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported dlio_ext module) for every import in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "dlio_ext":  # a submodule, or a name of the package itself
                out += [
                    (node.lineno, f"dlio_ext.{a.name}" if _is_module(a.name) else "dlio_ext")
                    for a in node.names
                ]
            elif node.module.startswith("dlio_ext."):
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("dlio_ext.")]
    return out


def test_every_package_is_in_the_table():
    units = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    units |= {p.stem for p in PKG.glob("*.py")}
    assert units - set(ARROWS) - LEAVES == set(), "a new package needs its arrows in ARROWS"


def test_imports_follow_the_arrows():
    wrong = []
    for path in sorted(PKG.rglob("*.py")):
        src = unit_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if src in LEAVES and src != "__init__":
            allowed = {"errors"}  # a leaf stands alone
        else:
            allowed = reach(src) | LEAVES
        for line, mod in imports(path):
            dst = unit_of(mod)
            if dst != src and dst not in allowed:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {src} -> {dst} ({mod})")
    assert not wrong, "imports against the arrows:\n" + "\n".join(wrong)


def test_the_rule_can_fail(tmp_path):
    """The checker sees a lazy import inside a function (the test above would catch it)."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from dlio_ext.report import figures\n    return figures\n")
    assert imports(f) == [(2, "dlio_ext.report")]
    assert "report" not in reach("workloads") and "storage" in reach("run")
