"""The package layers of ``ibert_tvm``: no module imports in a cycle, and no package imports a
package above it, except the few edges listed in ``KNOWN_UPWARD`` (each says when it goes).

Every import counts, at module level or inside a function (``tests/import_graph.py``): a lazy
import ties two modules together as much as a top-level one. The order is the README's
architecture section, bottom first.
"""

from __future__ import annotations

import import_graph as g

LAYERS = (
    ("errors", "support"),  # shared helpers: atomic outputs, hashes, the tokenizer, ELF headers
    ("targets", "datasets", "tasks", "probe", "op"),  # target names, offline data, one integer op per file
    ("schedules",),  # per-target layouts, schedule rules, intrinsics, the tuning databases compile applies
    ("model",),  # HF checkpoints (hf_loader), the integer op plans of a quantized model, golden
    ("passes",),  # Relax passes, the pipeline, the verifier
    ("frontend",),  # TVM's importer + graph passes: HF dir -> float Relax -> points, ranges, integer module
    ("quantization",),  # schemes, calibration on the frontend's points, the quantized artifact, QAT
    ("deploy",),  # export, runtime, verify out/, board, RPC, API, server, bundle
    ("evaluate", "fidelity", "token_tasks", "benchmarks", "tuning"),  # accuracy (token_tasks: the NER/QA heads on real text), speed, and the tuner (it runs compile's pipeline
    # and measures through deploy/rpc on boards, so it sits above both)
    ("cli", "__main__"),  # one module per command
)

# (importing module, imported package) pairs that point upward, and why they remain: none today.
# Add one only with its reason and the issue that removes it.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def _layer_of() -> dict[str, int]:
    return {f"{g.PACKAGE}.{name}": i for i, names in enumerate(LAYERS) for name in names}


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_every_package_has_a_layer():
    layer = _layer_of()
    packages = {_package(m) for m in g.modules()} - {g.PACKAGE}
    assert sorted(packages - set(layer)) == []


def test_no_module_cycle():
    assert g.cycles(g.imports()) == []


def test_no_upward_import_but_the_known_ones():
    layer = _layer_of()
    upward = {}
    for mod, targets in g.imports().items():
        a = _package(mod)
        for target, where in targets.items():
            b = _package(target)
            if a in layer and b in layer and layer[b] > layer[a]:
                upward[(mod, b)] = where
    unknown = {k: v for k, v in upward.items() if k not in KNOWN_UPWARD}
    assert unknown == {}, "new upward imports (move the code down, or the shared piece to support/)"
    stale = set(KNOWN_UPWARD) - set(upward)
    assert stale == set(), "KNOWN_UPWARD lists edges that are gone: delete them"


def test_the_runtime_path_stays_light():
    """What a board imports (``deploy.run``, ``deploy.runtime``, ``ibert_tvm.load``'s ``deploy.api``
    and the server) reaches no compiler package."""
    graph = g.imports()
    seen, todo = set(), ["ibert_tvm.deploy.run", "ibert_tvm.deploy.runtime", "ibert_tvm.deploy.api",
                         "ibert_tvm.deploy.server", "ibert_tvm.cli.serve", "ibert_tvm"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, {}))
    heavy = {m for m in seen if _package(m) in {f"ibert_tvm.{p}" for p in
                                                  ("model", "passes", "quantization", "schedules", "frontend", "tuning")}}
    assert heavy == set()


def test_no_package_cycle():
    """Packages (``ibert_tvm.<name>``) import each other without a cycle, same-layer ones included."""
    packages: dict[str, dict[str, str]] = {}
    for mod, targets in g.imports().items():
        a = _package(mod)
        for target, where in targets.items():
            b = _package(target)
            if a != b and a != g.PACKAGE and b != g.PACKAGE:
                packages.setdefault(a, {})[b] = where
    assert g.cycles(packages) == []
