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
    ("schedules",),  # per-target layouts, schedule rules, intrinsics, tuning databases
    ("quantization",),  # schemes, calibration, the quantized artifact, QAT, sensitivity
    ("model",),  # the hand-built integer model (plan, golden, relax.frontend.nn modules)
    ("passes",),  # Relax passes, the pipeline, the verifier
    ("frontend",),  # TVM's importer + graph passes: HF dir -> float Relax -> points, ranges
    ("deploy",),  # export, runtime, verify out/, board, RPC
    ("evaluate", "fidelity", "benchmarks"),  # accuracy, fidelity and speed against other engines
    ("cli", "__main__"),  # one module per command
)

# (importing module, imported package) pairs that point upward today, and why they remain.
KNOWN_UPWARD = {
    ("ibert_tvm.quantization.calibrate", "ibert_tvm.model"): "hf_loader: calibration loads the HF checkpoint; "
    "goes when calibration runs on the imported graph (issue 12)",
    ("ibert_tvm.quantization.finetune", "ibert_tvm.model"): "hf_loader, as above",
    ("ibert_tvm.quantization.sensitivity", "ibert_tvm.model"): "hf_loader, as above",
    ("ibert_tvm.quantization.qat", "ibert_tvm.model"): "QAT runs the hand-built plan's integer forward; goes "
    "with model/plan when the imported graph is the one description (issue 12)",
}
# The tuner (schedules/tune/) builds the model to find its workloads and measures on boards through
# deploy/rpc: it is the one part of schedules/ allowed above the model, the passes and deploy,
# until the frontend hands it the graph (issue 12). Every other module of schedules/ stays below.
TUNER = "ibert_tvm.schedules.tune"
TUNER_MAY_REACH = {"ibert_tvm.model", "ibert_tvm.passes", "ibert_tvm.deploy"}


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
                key = (mod, b) if not mod.startswith(TUNER) else (TUNER, b)
                upward[key] = where
    tuner = {k for k in upward if k[0] == TUNER}
    assert {b for _, b in tuner} <= TUNER_MAY_REACH, tuner
    unknown = {k: v for k, v in upward.items() if k not in KNOWN_UPWARD and k[0] != TUNER}
    assert unknown == {}, "new upward imports (move the code down, or the shared piece to support/)"
    stale = set(KNOWN_UPWARD) - set(upward)
    assert stale == set(), "KNOWN_UPWARD lists edges that are gone: delete them"


def test_the_runtime_path_stays_light():
    """What a board imports (``deploy.run`` and ``deploy.runtime``) reaches no compiler package."""
    graph = g.imports()
    seen, todo = set(), ["ibert_tvm.deploy.run", "ibert_tvm.deploy.runtime"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, {}))
    heavy = {m for m in seen if _package(m) in {f"ibert_tvm.{p}" for p in
                                                  ("model", "passes", "quantization", "schedules", "frontend")}}
    assert heavy == set()
