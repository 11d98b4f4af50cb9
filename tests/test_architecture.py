"""The shape of the engine package, checked on its source: layers import downward only, no cycles, nothing private
across modules, no function-local imports of the package's own modules, no Streamlit.

The rule (README, "Architecture"): ``analysis`` is made of subpackages in layers,

    core < workload < sensitivity < {diagnostics, schedule} < deploy < lab < {store, report} < cli

and a module imports only modules of its own subpackage or of a lower layer (siblings in braces do not import
each other). ``analysis/__init__.py`` (the public API) and ``analysis/__main__.py`` sit on top.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "analysis"
LAYERS = [("core",), ("workload",), ("sensitivity",), ("diagnostics", "schedule"), ("deploy",), ("lab",),
          ("store", "report"), ("cli",)]
TOP = {"analysis", "analysis.__main__"}  # the public API and the entry point: above every layer
FACES = ("streamlit", "ui", "app", "pages")
LAZY_ALLOWED = {"analysis", "analysis.cli"}  # they import a command or an API member on first use, by name


def level(module: str) -> tuple[int, str] | None:
    """(layer index, subpackage) of a module of the package; ``None`` for the top (API, entry point)."""
    if module in TOP:
        return None
    sub = module.split(".")[1]
    for i, group in enumerate(LAYERS):
        if sub in group:
            return i, sub
    raise AssertionError(f"{module} is in no layer; add its subpackage to LAYERS and to the README")


@dataclass
class Graph:
    """The package's own imports, as the checks need them."""

    edges: dict[str, set[str]] = field(default_factory=dict)
    private: list[str] = field(default_factory=list)
    local: list[str] = field(default_factory=list)
    faces: list[str] = field(default_factory=list)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_graph(files: dict[str, str]) -> Graph:
    """Imports of ``files`` ({module name: source}) among themselves, private names used across modules,
    function-local imports of the package's own modules, and imports of the dashboard's faces."""
    graph = Graph()
    modules = set(files)
    for name, source in files.items():
        tree = ast.parse(source)
        is_pkg = name in {m.rsplit(".", 1)[0] for m in modules if "." in m} or name == "analysis"
        aliases: dict[str, str] = {}
        for node, in_function in _walk(tree):
            targets = _targets(node, name, is_pkg, modules)
            for target, attr, alias in targets:
                if target.split(".")[0] in FACES:
                    graph.faces.append(f"{name} imports {target}")
                if target != "analysis" and not target.startswith("analysis."):
                    continue
                if target not in modules:
                    continue
                if in_function:
                    graph.local.append(f"{name} imports {target} inside a function")
                if target != name:
                    graph.edges.setdefault(name, set()).add(target)
                if attr and attr.startswith("_") and not attr.startswith("__") and target != name:
                    graph.private.append(f"{name} imports {target}.{attr}")
                if attr is None and alias:
                    aliases[alias] = target
        for node, _ in _walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                if node.attr.startswith("_") and not node.attr.startswith("__"):
                    graph.private.append(f"{name} reads {aliases[node.value.id]}.{node.attr}")
    return graph


def _walk(tree: ast.AST):  # noqa: ANN202 - yields (node, inside a function?)
    stack = [(tree, False)]
    while stack:
        node, inside = stack.pop()
        yield node, inside
        deeper = inside or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        stack.extend((child, deeper) for child in ast.iter_child_nodes(node))


def _targets(node: ast.AST, name: str, is_pkg: bool, modules: set[str]) -> list[tuple[str, str | None, str | None]]:
    """(module imported, name imported from it or None, the local alias of a module import)."""
    if isinstance(node, ast.Import):
        return [(a.name, None, a.asname or (a.name if "." not in a.name else None)) for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    out = []
    for a in node.names:
        sub = f"{module}.{a.name}"
        if sub in modules:
            out.append((sub, None, a.asname or a.name))
        else:
            owner = module
            while owner not in modules and "." in owner:
                owner = owner.rsplit(".", 1)[0]
            out.append((owner, a.name, None))
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Imports that go up a layer or sideways to a sibling subpackage."""
    bad = []
    for source, targets in edges.items():
        src = level(source)
        for target in targets:
            dst = level(target)
            if src is None or (dst is not None and (dst[0] < src[0] or dst[1] == src[1])):
                continue
            bad.append(f"{source} -> {target}")
    return bad


def package_files() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in PACKAGE.rglob("*.py")}


@pytest.fixture(scope="module")
def graph() -> Graph:
    return read_graph(package_files())


def test_layers_import_downward_only(graph: Graph) -> None:
    assert upward(graph.edges) == []


def test_no_import_cycles(graph: Graph) -> None:
    assert cycles(graph.edges) == []


def test_nothing_private_crosses_a_module_boundary(graph: Graph) -> None:
    assert graph.private == []


def test_the_package_imports_its_own_modules_at_the_top(graph: Graph) -> None:
    assert [line for line in graph.local if line.split(" imports ")[0] not in LAZY_ALLOWED] == []


def test_the_engine_never_imports_the_dashboard(graph: Graph) -> None:
    assert graph.faces == []


def test_every_subpackage_is_in_a_layer() -> None:
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages == {sub for group in LAYERS for sub in group}


def test_the_checks_catch_what_they_forbid() -> None:
    """A planted cycle, an upward import, a private import, a private attribute read and a function-local import
    are each reported: the tests above cannot pass by not looking."""
    files = {
        "analysis.core.a": "from analysis.core import b\nfrom analysis.sensitivity.c import run\n",
        "analysis.core.b": "from analysis.core.a import _secret\n",
        "analysis.sensitivity.c": "from analysis.core import a\n\ndef run():\n    from analysis.core import b\n"
                           "    return a._hidden\n",
        "analysis.core": "", "analysis.sensitivity": "", "analysis": "",
    }
    g = read_graph(files)
    assert cycles(g.edges) == [["analysis.core.a", "analysis.core.b"]] or ["analysis.core.a", "analysis.core.b",
                                                                           "analysis.sensitivity.c"] in cycles(g.edges)
    assert "analysis.core.a -> analysis.sensitivity.c" in upward(g.edges)
    assert "analysis.core.b imports analysis.core.a._secret" in g.private
    assert "analysis.sensitivity.c reads analysis.core.a._hidden" in g.private
    assert "analysis.sensitivity.c imports analysis.core.b inside a function" in g.local
