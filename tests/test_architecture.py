"""The layers of raysweep (issue 22, docs/architecture.md): the import-linter contracts of
pyproject.toml hold, they cover every top-level unit of ``raysweep/``, the document states the same
order, no two units import each other even through imports inside functions, and a module over
~400 lines says at its top why it is one module."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raysweep"
LONG_MODULE_LINES = 400


def pyproject_layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    return [[m.strip() for m in re.split(r"[|:]", layer)] for layer in layers]


def units(package: Path) -> set[str]:
    """The top-level units of a package: its modules and subpackages."""
    return {p.stem for p in package.glob("*.py") if p.stem != "__init__"} | \
        {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}


def unit_imports(package: Path) -> dict[str, dict[str, list[str]]]:
    """{unit: {imported unit: [file:line, ...]}} for every import statement anywhere in the
    package's modules (inside functions, classes and ``if TYPE_CHECKING:`` blocks too)."""
    name, known = package.name, units(package)
    graph: dict[str, dict[str, list[str]]] = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        module = parts[:-1] if parts[-1] == "__init__" else parts
        here_pkg = module if path.name == "__init__.py" else module[:-1]
        unit = module[1] if len(module) > 1 else None
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*here_pkg[: len(here_pkg) - node.level + 1], *([base] if base else [])])
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                bits = target.split(".")
                if bits[0] == name and len(bits) > 1 and bits[1] in known and bits[1] != unit and unit:
                    where = f"{path.relative_to(package.parent)}:{node.lineno}"
                    graph.setdefault(unit, {}).setdefault(bits[1], [])
                    if where not in graph[unit][bits[1]]:
                        graph[unit][bits[1]].append(where)
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


def describe(graph, component: list[str]) -> str:
    return "; ".join(f"{a} -> {b} ({', '.join(graph[a][b][:3])})"
                     for a in component for b in component if b in graph.get(a, {}))


def test_no_import_cycle_between_raysweeps_units_function_local_imports_included():
    graph = unit_imports(PACKAGE)
    found = cycles(graph)
    assert not found, "import cycles: " + " | ".join(describe(graph, c) for c in found)


def test_the_cycle_check_sees_an_import_hidden_inside_a_function(tmp_path):
    pkg = tmp_path / "knot"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("def f():\n    from knot.high import g\n    return g\n")
    (pkg / "high.py").write_text("from .low import f\n\ndef g():\n    return f\n")
    graph = unit_imports(pkg)
    assert graph == {"low": {"high": ["knot/low/__init__.py:2"]}, "high": {"low": ["knot/high.py:1"]}}
    assert cycles(graph) == [["high", "low"]]


def test_import_linter_contracts_hold():
    """``lint-imports`` (import-linter) with the contracts in pyproject.toml; imports inside
    functions count there too."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_import_linter_breaks_on_an_upward_import(tmp_path):
    """The same contracts on a copy of raysweep where the bottom layer imports the sweep: broken."""
    import shutil

    copy = tmp_path / "raysweep"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "horizons.py", "a") as f:
        f.write("\n\ndef _upward():\n    from raysweep.sweep import tracking\n    return tracking\n")
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0
    assert "raysweep.horizons is not allowed to import raysweep.sweep" in done.stdout


def test_the_layers_contract_covers_every_unit_once():
    named = [m for layer in pyproject_layers() for m in layer]
    assert sorted(named) == sorted(f"raysweep.{u}" for u in units(PACKAGE)), \
        "every top-level module and package of raysweep/ belongs to exactly one layer"


def test_docs_architecture_lists_the_same_layers_in_the_same_order():
    text = (ROOT / "docs" / "architecture.md").read_text()
    listed = [re.findall(r"`(raysweep\.\w+)`", line.split("**")[1])
              for line in text.splitlines() if re.match(r"^\d+\. \*\*", line)]
    assert listed == pyproject_layers()


def test_a_long_module_says_why_at_its_top():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if lines > LONG_MODULE_LINES and "Why one module" not in doc:
            long.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not long, f"over {LONG_MODULE_LINES} lines with no 'Why one module' paragraph in the docstring: {long}"
