"""The layout's import rules (DESIGN.md, docs/pipeline.md), checked by an AST scan of every module.

- capture.decode is pure: it imports nothing of capture.live (the pcap importer shares it);
  capture.k8s and capture.importers do not either;
- analyze.reports computes and never imports analyze.render;
- capture and analyze never import each other;
- the core (flowtape/*) imports neither, except the two modules that wire both halves:
  flowtape/cli.py (the commands) and flowtape/__init__.py (`flowtape.open` and the analysis hook);
- no module imports another's private (`_name`) objects; compiled extension modules aside;
- capture/ holds only folders; analyze/ keeps only the naming core and the CLI entry at its top.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WIRING = {"flowtape", "flowtape.cli"}  # the modules allowed to join the halves
# compiled modules (pyproject ext-modules): private by name only
EXTENSIONS = {m["name"].rsplit(".", 1)[1]
              for m in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["ext-modules"]}
ANALYZE_TOP = {"__init__.py", "analysis.py", "api.py", "enrich.py", "sums.py", "sketch.py", "report_cli.py"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported from (absolute)
    name: str | None  # the object imported from it (from-imports), or None
    line: int


def package_dirs(root: Path) -> dict[str, Path]:
    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    return {pkg: root / d for pkg, d in cfg["tool"]["setuptools"]["package-dir"].items()}


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for pkg, d in package_dirs(root).items():
        for f in d.rglob("*.py"):
            rel = f.relative_to(d).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join((pkg, *rel))] = f
    return out


def imports(name: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(name, a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found += [Import(name, target, a.name, node.lineno) for a in node.names]
    return found


def _within(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")


def violations(root: Path) -> list[str]:
    mods = modules(root)
    out = []
    for name, path in sorted(mods.items()):
        for imp in imports(name, path):
            targets = [imp.target] + ([f"{imp.target}.{imp.name}"] if imp.name else [])
            t = next((x for x in reversed(targets) if x in mods), imp.target)  # `from pkg import module` names the module
            where = f"{path.relative_to(root)}:{imp.line}"

            def rule(cond: bool, text: str) -> None:
                if cond:
                    out.append(f"{where}: {name} imports {t}: {text}")

            for pure in ("flowtape.capture.decode", "flowtape.capture.k8s", "flowtape.capture.importers"):
                rule(_within(name, pure) and _within(t, "flowtape.capture.live"), f"{pure} never imports capture.live")
            rule(_within(name, "flowtape.analyze.reports") and _within(t, "flowtape.analyze.render"), "reports never import render")
            rule(_within(name, "flowtape.capture") and _within(t, "flowtape.analyze"), "capture never imports analyze")
            rule(_within(name, "flowtape.analyze") and _within(t, "flowtape.capture"), "analyze never imports capture")
            core = not any(_within(name, p) for p in ("flowtape.capture", "flowtape.analyze", "flowtape.bpf")) and name not in WIRING
            rule(core and (_within(t, "flowtape.capture") or _within(t, "flowtape.analyze")), "the core imports neither half")
            private = imp.name is not None and imp.name.startswith("_") and not imp.name.startswith("__")
            rule(private and imp.name not in EXTENSIONS and t.startswith("flowtape") and f"{imp.target}.{imp.name}" not in mods,
                 f"imports the private name {imp.name}")
    return out


def test_import_rules_hold():
    assert violations(ROOT) == []


def test_folders_are_stages():
    assert sorted(p.name for p in (ROOT / "capture").iterdir() if p.is_file() and p.suffix in (".py", ".c")) == ["__init__.py"]
    assert {p.name for p in (ROOT / "analyze").iterdir() if p.is_file() and p.suffix == ".py"} <= ANALYZE_TOP
    for d in [*(ROOT / "capture").iterdir(), *(ROOT / "analyze").iterdir()]:
        if d.is_dir() and d.name != "__pycache__":
            doc = ast.get_docstring(ast.parse((d / "__init__.py").read_text())) or ""
            assert "import" in doc, f"{d.relative_to(ROOT)}/__init__.py: the docstring says what the folder may import"


@pytest.mark.parametrize("module, body, broken", [
    ("capture/decode/bad.py", "from ..live import ebpf\n", "capture.decode never imports capture.live"),
    ("analyze/reports/bad.py", "from ..render.formats import render_frame\n", "reports never import render"),
    ("capture/decode/bad.py", "def f():\n    from flowtape.analyze import enrich\n", "capture never imports analyze"),
    ("flowtape/bad.py", "from .analyze.api import Reports\n", "the core imports neither half"),
    ("analyze/ci/bad.py", "from .diff import _canon\n", "private name _canon"),
])
def test_a_broken_rule_is_reported(tmp_path, module, body, broken):
    """The scan fails on a deliberate violation of each rule (in a copy of the tree)."""
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    for d in package_dirs(ROOT).values():
        for f in d.rglob("*.py"):
            dst = tmp_path / f.relative_to(ROOT)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(f.read_text())
    (tmp_path / module).write_text(body)
    found = violations(tmp_path)
    assert len(found) == 1 and broken in found[0], found
