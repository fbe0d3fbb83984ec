"""The import graph of ``edge/`` and ``firmware_sim/`` keeps its arrows pointing down.

The graph is read with `ast` (no module is imported): every ``import`` and ``from ... import``
statement counts, at module level, inside functions and under ``if TYPE_CHECKING`` alike, since a
lazy import is still a dependency. ``from package import name`` counts as an import of the
submodule ``package.name`` when one exists, else of the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """``{module: modules of ``packages`` it imports}`` for every ``.py`` file under ``root/<package>``."""
    files = {_module_name(root, p): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}

    def known(name: str) -> str | None:  # the longest prefix that is a module of ours
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[module] = {t for t in (known(name) for name in targets) if t and t != module}
        graph[module] |= {name for name in targets if name.split(".")[0] in ("host", "firmware_sim", "tensorflow")
                          and known(name) is None}  # imports of packages not scanned still show
    return graph


def cycles(graph: dict[str, set[str]], within: str) -> list[list[str]]:
    """Strongly connected groups of two or more modules under ``within`` (Tarjan)."""
    nodes = sorted(m for m in graph if m == within or m.startswith(within + "."))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in graph or not (w == within or w.startswith(within + ".")):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in nodes:
        if v not in index:
            visit(v)
    return found


def arrows(graph: dict[str, set[str]], source: str, target: str) -> list[str]:
    """``a -> b`` for every module under ``source`` importing one under ``target``."""
    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    return sorted(f"{a} -> {b}" for a, deps in graph.items() if under(a, source) for b in deps if under(b, target))


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(REPO, ("edge", "firmware_sim", "host"))


def test_the_reader_sees_lazy_and_relative_imports_and_finds_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n    return b\n")
    (pkg / "sub" / "b.py").write_text("from ..c import thing\n")
    (pkg / "c.py").write_text("import pkg.a\nthing = 1\n")
    (pkg / "d.py").write_text("from pkg import c\n")
    g = import_graph(tmp_path, ("pkg",))
    assert g["pkg.a"] == {"pkg.sub", "pkg.sub.b"} and g["pkg.sub.b"] == {"pkg.c"}
    assert g["pkg.d"] == {"pkg", "pkg.c"}
    assert cycles(g, "pkg") == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    assert arrows(g, "pkg.sub", "pkg.c") == ["pkg.sub.b -> pkg.c"]


def test_no_import_cycle_in_the_simulator(graph: dict[str, set[str]]) -> None:
    assert cycles(graph, "firmware_sim.data") == []  # core50 -> sources -> generator -> core50 was one
    assert cycles(graph, "firmware_sim") == []


def test_studies_and_library_modules_never_import_the_commands(graph: dict[str, set[str]]) -> None:
    assert arrows(graph, "firmware_sim.studies", "firmware_sim.commands") == []
    upward = [a for a in arrows(graph, "firmware_sim", "firmware_sim.commands")
              if not a.startswith("firmware_sim.commands")]
    assert upward == []


def test_data_does_not_import_the_embedding_cache(graph: dict[str, set[str]]) -> None:
    assert arrows(graph, "firmware_sim.data", "firmware_sim.cache") == []
    assert graph["firmware_sim.cache_dir"] == set()  # the cache directory is a leaf both may use


def test_edge_never_imports_the_simulator_or_the_host(graph: dict[str, set[str]]) -> None:
    assert arrows(graph, "edge", "firmware_sim") == []
    assert arrows(graph, "edge", "host") == []
    assert arrows(graph, "edge", "tensorflow") == []


def test_checkpoint_storage_does_not_import_the_agent(graph: dict[str, set[str]]) -> None:
    assert arrows(graph, "edge.checkpoint", "edge.agent") == []
