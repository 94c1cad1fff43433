"""The import graph of ``ibert_tvm``, read from the source with :mod:`ast` (nothing is imported).

Every ``import``/``from ... import`` counts, at module level or inside a function: a lazy import
still ties the two modules together. ``from pkg import name`` is an edge to ``pkg.name`` when that
is a module, else to ``pkg``. Parent packages' ``__init__`` files also run on import, but they are
not edges here (they would make every package a cycle with its own modules).

    python tests/import_graph.py ibert_tvm.passes ibert_tvm.deploy    # cycles among those modules
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ibert_tvm"


def modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` below ``root/package``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, level: int, here: str, is_package: bool) -> str:
    if not level:
        return name
    base = here.split(".") if is_package else here.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports(root: Path = ROOT, package: str = PACKAGE) -> dict[str, dict[str, str]]:
    """Module -> {imported module of the package: ``module:line`` of the first such import}."""
    mods = modules(root, package)
    graph: dict[str, dict[str, str]] = {m: {} for m in mods}
    for mod, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node.module or "", node.level, mod, is_package)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:  # `import a.b.c` of a non-module attribute path
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].setdefault(t, f"{mod}:{node.lineno}")
    return graph


def restrict(graph: dict[str, dict[str, str]], prefixes: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """The subgraph of the modules under any of ``prefixes``."""
    def keep(m: str) -> bool:
        return any(m == p or m.startswith(p + ".") for p in prefixes)

    return {m: {t: ln for t, ln in ts.items() if keep(t)} for m, ts in graph.items() if keep(m)}


def collapse(graph: dict[str, dict[str, str]], depth: int) -> dict[str, dict[str, str]]:
    """The same graph with each module replaced by its first ``depth`` name parts (packages)."""
    out: dict[str, dict[str, str]] = {}
    for m, ts in graph.items():
        a = ".".join(m.split(".")[:depth])
        out.setdefault(a, {})
        for t, ln in ts.items():
            b = ".".join(t.split(".")[:depth])
            if a != b:
                out[a].setdefault(b, ln)
    return out


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one node, each sorted (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def main(argv: list[str]) -> None:
    prefixes = tuple(argv) or (PACKAGE,)
    graph = restrict(imports(), prefixes)
    for label, g in (("modules", graph), ("packages", collapse(graph, 2))):
        found = cycles(g)
        print(f"{label}: {len(found)} cycle(s)")
        for comp in found:
            print("  " + " <-> ".join(comp))
            for m in comp:
                for t, where in sorted(g[m].items()):
                    if t in comp:
                        print(f"      {m} -> {t}  ({where})")


if __name__ == "__main__":
    main(sys.argv[1:])
