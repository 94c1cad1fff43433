"""The verifier package sits below everything that uses it: no cycle, no upward import.

``ibert_tvm.passes.verify`` may import only itself, ``ibert_tvm.errors`` and ``ibert_tvm.support``
(module-level or inside a function alike); the pipeline, ``compile`` and ``verify`` use it from
above. The import graph is read from the source by ``tests/import_graph.py``.
"""

from __future__ import annotations

import import_graph

VERIFY = "ibert_tvm.passes.verify"
ALLOWED = (VERIFY, "ibert_tvm.errors", "ibert_tvm.support")


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_verifier_package_imports_only_itself_errors_and_support():
    graph = import_graph.imports()
    upward = sorted(
        f"{m} -> {t} ({where})"
        for m, ts in graph.items()
        if _under(m, (VERIFY,))
        for t, where in ts.items()
        if not _under(t, ALLOWED) and t != "ibert_tvm"
    )
    assert upward == []


def test_the_verifier_package_has_no_import_cycle():
    assert import_graph.cycles(import_graph.restrict(import_graph.imports(), (VERIFY,))) == []


def test_the_verifier_and_its_deploy_users_have_no_cycle():
    graph = import_graph.restrict(import_graph.imports(), (VERIFY, "ibert_tvm.deploy"))
    assert import_graph.cycles(graph) == []


def test_import_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import x\n")
    (pkg / "sub" / "a.py").write_text("x = 1\n\ndef f():\n    from ..b import y\n    return y\n")
    (pkg / "b.py").write_text("from pkg.sub import a\ny = 2\n")
    graph = import_graph.imports(tmp_path, "pkg")
    assert graph["pkg.sub.a"] == {"pkg.b": "pkg.sub.a:4"}
    assert graph["pkg.b"] == {"pkg.sub.a": "pkg.b:1"}
    assert import_graph.cycles(graph) == [["pkg.b", "pkg.sub.a"]]
    assert import_graph.cycles(import_graph.collapse(graph, 1)) == []
