"""Run a compiled ``model.so`` with ``tvm_ffi`` and ``libtvm_runtime.so`` alone: no ``import tvm``.

What the apache-tvm 0.27 wheel allows: it ships the runtime as its own library,
``tvm/lib/libtvm_runtime.so`` (3.4 MB: the Relax VM, its builtins, the thread pool, the
``VMExecutable`` loader), beside ``libtvm_compiler.so`` (259 MB). ``import tvm`` always loads the
runtime and, unless ``TVM_USE_RUNTIME_LIB=1``, the compiler; even in runtime-only mode it imports
~200 Python modules (~900 with the compiler: ``tvm.ir``, ``tvm.script``, ``tvm.tirx``, ``tvm.te``,
``tvm.target``...). None of that is needed to run: ``tvm.runtime.load_module`` *is*
``tvm_ffi.load_module``, and ``tvm.runtime.vm.VirtualMachine`` is a thin wrapper over three packed
functions of the module (``vm_load_executable``, ``vm_initialization``, then the model's
functions). So this module does what ``tvm/base.py`` does first (``dlopen`` the runtime library
``RTLD_GLOBAL``, so that model.so finds ``TVMBackend*`` and the ``VMExecutable`` loader), then what
``VirtualMachine`` does, and makes tensors with the runtime's own allocator
(``runtime.TVMTensorAllocWithScope``: aligned as the kernels expect) and copies
(``runtime.TVMTensorCopy{From,To}Bytes``), as ``tvm.runtime.tensor`` and ``Tensor.numpy`` do. The
same calls with the same bytes: outputs are bit-identical.

It works whether or not ``tvm`` is imported in the process (then the library is already loaded;
``dlopen`` of the same file is a no-op), on the aarch64 board too. Not covered: devices other
than the CPU (a CUDA build needs ``libtvm_runtime_cuda.so``, which ``tvm.backend`` loads):
:class:`~ibert_tvm.deploy.runtime.CompiledModel` falls back to ``import tvm`` for those.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import threading
from pathlib import Path

import numpy as np

RUNTIME_LIB = "libtvm_runtime.so"
# the packed functions this module calls, all registered by libtvm_runtime.so
_NEEDED = ("runtime.TVMTensorAllocWithScope", "runtime.TVMTensorCopyFromBytes", "runtime.TVMTensorCopyToBytes",
           "ffi.Module.load_from_bytes.relax.VMExecutable")
KDL_CPU = 1
POOLED_ALLOCATOR = 2  # tvm.runtime.vm.VirtualMachine.POOLED_ALLOCATOR, its default

_lock = threading.Lock()
_loaded: dict = {}  # "path": the runtime library loaded, "funcs": the packed functions above


class Unavailable(RuntimeError):
    """The light path cannot run here (no ``tvm_ffi``, no ``libtvm_runtime.so``): use ``import tvm``."""


def import_runtime_tvm():
    """Import ``tvm`` for running only, and return it (the fallback when the light path is
    :class:`Unavailable`, and what a non-CPU device needs).

    If no one has imported ``tvm`` yet and ``TVM_USE_RUNTIME_LIB`` is unset, the import loads
    only ``libtvm_runtime`` (not the ~240 MB compiler library) and keeps ``tvm_ffi`` from
    importing PyTorch (it does so whenever torch is installed, only to exchange tensors with it).
    PyTorch stays importable afterwards. The cost: this process then cannot compile (``from tvm
    import relax`` fails); a process that loads *and* compiles should import ``tvm`` first, or set
    ``TVM_USE_RUNTIME_LIB=0``. If ``tvm`` is already imported this is a plain import.
    """
    if "tvm" in sys.modules or "TVM_USE_RUNTIME_LIB" in os.environ:
        import tvm

        return tvm
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    block_torch = "torch" not in sys.modules
    if block_torch:
        sys.modules["torch"] = None  # `import torch` raises ImportError while tvm_ffi loads
    try:
        import tvm
    finally:
        del os.environ["TVM_USE_RUNTIME_LIB"]
        if block_torch and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tvm


def import_tvm_ffi():
    """Import ``tvm_ffi`` without PyTorch: its ``__init__`` imports torch whenever it is installed
    (only to exchange tensors with it). PyTorch stays importable afterwards."""
    if "tvm_ffi" in sys.modules:
        import tvm_ffi

        return tvm_ffi
    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None  # `import torch` raises ImportError while tvm_ffi loads
    try:
        import tvm_ffi
    finally:
        if block and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tvm_ffi


def library_dirs() -> list[Path]:
    """Where ``tvm`` keeps its libraries, found without importing it (``tvm.libinfo.package_lib_paths``:
    ``$TVM_LIBRARY_PATH`` first, then the wheel's ``tvm/lib``)."""
    dirs = [Path(os.environ["TVM_LIBRARY_PATH"])] if os.environ.get("TVM_LIBRARY_PATH") else []
    try:
        spec = importlib.util.find_spec("tvm")  # a top-level package: its __init__ does not run
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        dirs.append(Path(loc) / "lib")
    return dirs


def load_runtime() -> str:
    """Load ``libtvm_runtime.so`` once (``RTLD_GLOBAL``, as ``tvm/base.py`` does) and return its
    path. Raises :class:`Unavailable` if ``tvm_ffi`` or the library is missing."""
    with _lock:
        if "path" in _loaded:
            return _loaded["path"]
        try:
            tvm_ffi = import_tvm_ffi()
        except ImportError as e:
            raise Unavailable(f"tvm_ffi cannot be imported: {e}") from None
        lib = None
        base = sys.modules.get("tvm.base")
        handle = getattr(base, "_LOADED_LIBS", {}).get("tvm_runtime") if base is not None else None
        if handle is not None:  # `import tvm` loaded it already
            lib = handle._name
        else:
            for d in library_dirs():
                if (d / RUNTIME_LIB).is_file():
                    lib = str((d / RUNTIME_LIB).resolve())
                    try:
                        ctypes.CDLL(lib, ctypes.RTLD_GLOBAL)
                    except OSError as e:
                        raise Unavailable(f"cannot load {lib}: {e}") from None
                    break
        if lib is None:
            raise Unavailable(f"{RUNTIME_LIB} not found in {[str(d) for d in library_dirs()]}")
        funcs = {name: tvm_ffi.get_global_func(name, allow_missing=True) for name in _NEEDED}
        missing = [n for n, f in funcs.items() if f is None]
        if missing:
            raise Unavailable(f"{lib} does not register {', '.join(missing)}")
        _loaded.update(path=lib, funcs=funcs)
        return lib


def _func(name: str):
    load_runtime()
    return _loaded["funcs"][name]


def cpu():
    """The CPU device (``tvm.cpu()``)."""
    return import_tvm_ffi().device(KDL_CPU, 0)


def empty(shape, dtype: str, device=None):
    """An uninitialised runtime tensor (``tvm.runtime.empty``): the runtime's allocator, aligned
    as the compiled kernels expect."""
    tvm_ffi = import_tvm_ffi()
    return _func("runtime.TVMTensorAllocWithScope")(tvm_ffi.Shape([int(x) for x in shape]), tvm_ffi.dtype(dtype),
                                                      device if device is not None else cpu(), None)


def tensor(a: np.ndarray, device=None):
    """A runtime tensor holding a copy of ``a`` (``tvm.runtime.tensor(a, device)``)."""
    a = np.ascontiguousarray(a)
    t = empty(a.shape, a.dtype.name, device)
    _func("runtime.TVMTensorCopyFromBytes")(t, a.ctypes.data_as(ctypes.c_void_p), a.nbytes)
    return t


def numpy(t) -> np.ndarray:
    """A numpy copy of a runtime tensor (``Tensor.numpy()``, for the whole-byte dtypes a model returns)."""
    out = np.empty(tuple(int(d) for d in t.shape), dtype=str(t.dtype))
    _func("runtime.TVMTensorCopyToBytes")(t, out.ctypes.data_as(ctypes.c_void_p), out.nbytes)
    return out


def load_module(path: os.PathLike | str):
    """Load a compiled library (``tvm.runtime.load_module`` *is* ``tvm_ffi.load_module`` for a .so)."""
    load_runtime()
    return import_tvm_ffi().load_module(os.path.realpath(path))


class VirtualMachine:
    """The Relax VM of a loaded library's executable on the CPU: what
    ``tvm.runtime.vm.VirtualMachine(lib, tvm.cpu())`` does (pooled allocator), through the
    module's packed functions."""

    def __init__(self, lib):
        self.module = lib["vm_load_executable"]()
        self.module["vm_initialization"](KDL_CPU, 0, POOLED_ALLOCATOR)
        self.device = cpu()

    def __getitem__(self, name: str):
        return self.module[name]

    def set_instrument(self, instrument) -> None:
        """As ``tvm.runtime.vm.VirtualMachine.set_instrument``."""
        self.module["set_instrument"](instrument)
