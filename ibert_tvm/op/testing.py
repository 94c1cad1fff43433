"""Compile and run a single TE op on the host CPU: used by tests and by ``verify`` examples."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def build_te(fn: Callable, arrays: Sequence[np.ndarray], *, name: str = "kernel"):
    """Build ``fn(*placeholders)`` for the shapes/dtypes of ``arrays``.

    Returns ``(run, prim_func)``: ``run(*arrays) -> np.ndarray`` executes the compiled kernel.
    """
    import tvm
    from tvm import te

    ph = [te.placeholder(a.shape, dtype=a.dtype.name, name=f"in{i}") for i, a in enumerate(arrays)]
    out = fn(*ph)
    func = te.create_prim_func([*ph, out]).with_attr("global_symbol", name)
    lib = tvm.compile(func, target=tvm.target.Target({"kind": "llvm", "num-cores": 2}))
    out_shape = tuple(int(d) for d in out.shape)
    out_dtype = str(out.dtype)

    def run(*xs: np.ndarray) -> np.ndarray:
        res = tvm.runtime.tensor(np.zeros(out_shape, dtype=out_dtype))
        lib[name](*[tvm.runtime.tensor(np.ascontiguousarray(x)) for x in xs], res)
        return res.numpy()

    return run, func


def run_te(fn: Callable, *arrays: np.ndarray) -> np.ndarray:
    run, _ = build_te(fn, arrays)
    return run(*arrays)
