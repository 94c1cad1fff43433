"""Run an imported float module (or a transform of it) on the host: ``tvm.compile`` for
``llvm`` with TVM's default Relax pipeline, then ``relax.VirtualMachine``.

The module's ``main`` must keep the imported signature: the token inputs (int32
``[batch, seq]``, :attr:`ImportedModel.inputs`), then the weights (:attr:`ImportedModel.params`).
"""

from __future__ import annotations

import numpy as np

from .importer import ImportedModel


class FloatVM:
    """``FloatVM(im)(enc)`` -> ``main``'s output(s) as numpy: one array, or a tuple of arrays
    (nested as ``main`` returns them). ``enc`` is the Tokenizer's dict of int32 ``[B, S]``
    arrays; only the names in ``im.inputs`` are passed."""

    def __init__(self, im: ImportedModel, mod=None, target: str = "llvm"):
        import tvm
        from tvm import relax

        ex = tvm.compile(im.mod if mod is None else mod, target=tvm.target.Target(target))
        self._vm = relax.VirtualMachine(ex, tvm.cpu())
        self._params = [tvm.runtime.tensor(p) for p in im.params]
        self._inputs = im.inputs

    def __call__(self, enc: dict[str, np.ndarray]):
        import tvm

        args = [tvm.runtime.tensor(np.ascontiguousarray(enc[n], dtype=np.int32)) for n in self._inputs]
        return _numpy(self._vm["main"](*args, *self._params))


def _numpy(out):
    if hasattr(out, "numpy"):
        return out.numpy()
    return tuple(_numpy(o) for o in out)
