"""Imports run one way (DESIGN.md: ``dags → training | serving | monitoring → omnicart``, the edge above them all)
and no module takes part in an import cycle, counting the imports inside functions too: a lazy import that dodges
a cycle at import time still ties the two modules together."""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("omnicart", "training", "serving", "monitoring", "benchmarks", "dags", "edge", "feature_repo")

# Package → the first-party packages its modules must not import. Tests are not scanned: they may import anything.
FORBIDDEN: dict[str, frozenset[str]] = {
    # the core imports none of the folders above it
    "omnicart": frozenset({"training", "serving", "monitoring", "benchmarks", "dags", "edge", "feature_repo"}),
    # the Feast repo declares features over the core's names only
    "feature_repo": frozenset({"training", "serving", "monitoring", "benchmarks", "dags", "edge"}),
    # the three layers are siblings over the core; serving loads models through the registry, never via training
    "training": frozenset({"serving", "monitoring", "benchmarks", "dags", "edge"}),
    "serving": frozenset({"training", "monitoring", "benchmarks", "dags", "edge"}),
    "monitoring": frozenset({"training", "serving", "benchmarks", "dags", "edge"}),
    # benchmarks run the layers side by side with baselines; DAGs wire the layers; the edge is above everything
    "benchmarks": frozenset({"dags", "edge"}),
    "dags": frozenset({"benchmarks", "edge"}),
    "edge": frozenset({"dags"}),
}


def modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name → file, for every module of the packages under ``root`` (``pkg/__init__`` is ``pkg``)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _known(name: str, known: Mapping[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a known module, if any."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return None


def imports(module: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The first-party modules ``module`` imports anywhere in its file (top level, functions, TYPE_CHECKING).

    ``from pkg import name`` is ``pkg.name`` when that is a module, else ``pkg``; relative imports are resolved.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(filter(None, (_known(alias.name, known) for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                target = _known(f"{source}.{alias.name}", known) or _known(source, known)
                if target:
                    targets.add(target)
    targets.discard(module)  # ``from pkg import name`` inside pkg/__init__: an attribute, not a cycle
    return targets


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    known = modules(root, packages)
    return {module: imports(module, path, known) for module, path in known.items()}


def forbidden_imports(graph: Mapping[str, set[str]], rules: Mapping[str, frozenset[str]]) -> list[str]:
    """``importer -> imported`` for every import that crosses a forbidden package line."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if target.split(".")[0] in rules.get(module.split(".")[0], frozenset())
    )


def _components(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in graph:
                    continue
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def _shortest_cycle(graph: Mapping[str, set[str]], start: str, within: set[str]) -> list[str]:
    """The shortest path start → … → start inside one component (breadth first)."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for succ in sorted(graph[node] & within):
            if succ == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if succ not in parent:
                parent[succ] = node
                queue.append(succ)
    raise AssertionError(f"{start} is in no cycle")  # pragma: no cover - a component always holds one


def cycles(graph: Mapping[str, set[str]]) -> list[str]:
    """Every import cycle, as ``a -> b -> a``: the shortest one through each module of each cyclic component."""
    found = []
    for component in _components(graph):
        members = set(component)
        seen: set[frozenset[str]] = set()
        for start in component:
            path = _shortest_cycle(graph, start, members)
            key = frozenset(zip(path, path[1:], strict=False))
            if key not in seen:
                seen.add(key)
                found.append(" -> ".join(path))
    return found


# --- the house -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT, PACKAGES)


def test_every_first_party_package_is_scanned() -> None:
    known = modules(ROOT, PACKAGES)

    assert {m.split(".")[0] for m in known} == set(PACKAGES)
    assert "omnicart.ingest.pipeline" in known and "edge.cli" in known and "dags.shop_daily" in known


def test_imports_run_one_way(graph: dict[str, set[str]]) -> None:
    violations = forbidden_imports(graph, FORBIDDEN)

    assert not violations, "imports against the layering (importer -> imported):\n" + "\n".join(violations)


def test_nothing_imports_dags_and_only_the_edge_imports_the_edge(graph: dict[str, set[str]]) -> None:
    for package in ("dags", "edge"):  # whatever FORBIDDEN says: dags is imported by none, the edge by itself only
        importers = [m for m, ts in graph.items() if m.split(".")[0] != package and package in _tops(ts)]
        assert not importers, f"{package} is imported by {importers}"


def _tops(modules: Iterable[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    found = cycles(graph)

    assert not found, "import cycles (function-level imports included):\n" + "\n".join(found)


# --- the checker catches what it should ---------------------------------------------------------------------------


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "core/__init__.py": "",
            "core/a.py": "from core import b\n",
            "core/b.py": "def f():\n    from .c import g  # lazy, still a cycle\n",
            "core/c.py": "import core.a\n",
            "core/d.py": "from core.a import name\n",  # into the cycle, not part of it
        },
    )

    assert cycles(import_graph(root, ["core"])) == ["core.a -> core.b -> core.c -> core.a"]


def test_checker_finds_a_forbidden_import(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "core/__init__.py": "",
            "core/x.py": "def f():\n    from layer.y import thing\n",
            "core/z.py": "import layer\n",
            "layer/__init__.py": "",
            "layer/y.py": "from core import x\n",
        },
    )
    graph = import_graph(root, ["core", "layer"])
    rules = {"core": frozenset({"layer"})}

    assert forbidden_imports(graph, rules) == ["core.x -> layer.y", "core.z -> layer"]
    assert cycles(graph) == ["core.x -> layer.y -> core.x"]
