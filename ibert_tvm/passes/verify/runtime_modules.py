"""The one walker over a compiled module tree, and what counts as a compiled executable.

``tvm.compile`` returns a ``VMExecutable`` whose ``.mod`` is a ``tvm.runtime.Module``; device
code, kernels and constant tables hang below it as imported modules. :func:`runtime_modules`
lists the whole tree once (each module once, the root first); :mod:`.check` scans every module
it yields and :mod:`.cuda_source` collects the CUDA source from it.
"""

from __future__ import annotations

from typing import Any

import tvm

try:
    from tvm.relax.vm_build import VMExecutable as _VMExecutable
except Exception:  # pragma: no cover
    _VMExecutable = None
try:
    from tvm.runtime.executable import Executable as _RuntimeExecutable
except Exception:  # pragma: no cover
    _RuntimeExecutable = None


def root_module(obj: Any) -> Any:
    """The root ``tvm.runtime.Module`` of what ``tvm.compile`` returned (``obj.mod``), or ``obj``."""
    return obj.mod if hasattr(obj, "mod") and not isinstance(obj, tvm.runtime.Module) else obj


def runtime_modules(root: Any) -> list[Any]:
    """``root`` and every module it imports, transitively, each once (depth first, in order)."""
    out, stack, seen = [], [root], set()
    while stack:
        m = stack.pop()
        key = m.id_ if hasattr(m, "id_") else id(m)
        if key in seen:
            continue
        seen.add(key)
        out.append(m)
        try:
            imps = list(m.imports)
        except Exception:
            imps = []
        stack.extend(reversed(imps))
    return out


def is_executable(obj: Any) -> bool:
    """True for what ``tvm.compile`` returns and for a ``tvm.runtime.Module``."""
    if isinstance(obj, tvm.runtime.Module):
        return True
    if _VMExecutable is not None and isinstance(obj, _VMExecutable):
        return True
    if _RuntimeExecutable is not None and isinstance(obj, _RuntimeExecutable):
        return True  # what tvm.compile returns for a TIR-only module
    return type(obj).__name__ in ("VMExecutable", "Executable") and hasattr(obj, "mod")

