"""The verifier's entry points: pick the level by what is checked, then report or raise.

* an ``IRModule``, ``relax.Function`` or ``tirx.PrimFunc``: the IR level (:mod:`.relax_tir`);
* what ``tvm.compile`` returned, or a ``tvm.runtime.Module``: every module of its tree
  (:mod:`.runtime_modules`) by kind: the VM constant pool (:mod:`.vm_constants`), the LLVM IR of
  ``llvm`` modules (:mod:`.llvm_ir`), the source of ``cuda`` modules (:mod:`.cuda_source`).
  Constant tables (``const_loader``, ``metadata``) hold data whose dtypes reach the kernels
  checked above. Any other kind, e.g. a loaded ``.so`` whose code cannot be inspected here, is an
  ``opaque`` finding: the verifier fails closed rather than assume it is clean (a shipped
  ``model.so`` is read by :mod:`.machine_code` instead).

:func:`report_for` never raises on float; :func:`verify_integer_only` raises
:class:`~ibert_tvm.errors.FloatFoundError` listing the first :data:`~.report.MAX_LISTED`
findings and the total.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import tvm

from ...errors import FloatFoundError
from .cuda_source import find_float_in_cuda_source
from .llvm_ir import find_float_in_llvm_ir
from .relax_tir import scan_ir
from .report import MAX_LISTED, Finding, Report
from .runtime_modules import is_executable, root_module, runtime_modules
from .vm_constants import find_float_in_vm_stats

# module kind -> (inspect_source format, what it is called, its scanner)
_SOURCE_LEVELS = {
    "llvm": ("ll", "LLVM IR", find_float_in_llvm_ir),
    "cuda": ("cuda", "CUDA source", find_float_in_cuda_source),
}
_DATA_ONLY = ("const_loader", "metadata")  # constant tables; their dtypes reach kernels


def _scan_executable(ex: Any) -> tuple[list[Finding], Counter, Counter]:
    dtypes: Counter = Counter()
    ops: Counter = Counter()
    findings: list[Finding] = []
    root = root_module(ex)
    if not isinstance(root, tvm.runtime.Module):
        raise TypeError(
            "expected what tvm.compile returned (a VMExecutable) or a tvm.runtime.Module, "
            f"got {type(ex).__module__}.{type(ex).__name__}"
        )
    for m in runtime_modules(root):
        kind = str(m.kind)
        ops[f"module:{kind}"] += 1
        if kind == "relax.VMExecutable":
            try:
                text = m.get_function("stats")() if m.implements_function("stats") else ""
            except Exception:
                text = ""
            findings.extend(find_float_in_vm_stats(str(text), dtypes))
        elif kind in _SOURCE_LEVELS:
            fmt, called, scan = _SOURCE_LEVELS[kind]
            try:
                src = m.inspect_source(fmt)
            except Exception as e:  # pragma: no cover - defensive
                findings.append(Finding(kind, "opaque", f"no {called} available: {e}"))
                continue
            f, st = scan(src)
            findings.extend(f)
            ops.update(st)
        elif kind not in _DATA_ONLY:
            findings.append(
                Finding(
                    f"module:{kind}",
                    "opaque",
                    f"cannot inspect a '{kind}' module for float (no source/IR scanner)",
                )
            )
    return findings, dtypes, ops


def find_float_in_executable(ex: Any) -> list[Finding]:
    """Findings in what ``tvm.compile`` returned (VMExecutable) or in a runtime module."""
    return _scan_executable(ex)[0]


def find_float(mod: Any) -> list[Finding]:
    """All float findings in an IRModule (Relax functions and PrimFuncs), a single
    relax.Function / tirx.PrimFunc, or (delegating) a compiled executable."""
    if is_executable(mod):
        return find_float_in_executable(mod)
    return scan_ir(mod)[0]


def report_for(mod_or_executable: Any, *, what: str = "module") -> Report:
    """The full report (histograms and findings). Never raises on float."""
    if is_executable(mod_or_executable):
        findings, dtypes, ops = _scan_executable(mod_or_executable)
    else:
        findings, dtypes, ops = scan_ir(mod_or_executable)
    return Report(
        what=what,
        dtypes=dict(dtypes),
        ops=dict(ops),
        findings=list(findings),
        float_ops=len(findings),
    )


def verify_integer_only(mod_or_executable: Any, *, what: str = "module") -> Report:
    """Return the report if the object is float-free; raise FloatFoundError otherwise."""
    rep = report_for(mod_or_executable, what=what)
    if rep.findings:
        shown = "\n".join(f"  {f}" for f in rep.findings[:MAX_LISTED])
        more = len(rep.findings) - MAX_LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise FloatFoundError(
            f"{what} is not integer-only: {len(rep.findings)} float finding(s)\n{shown}{tail}"
        )
    return rep
