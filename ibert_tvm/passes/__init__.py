"""Relax passes (one per file, named like the file) and the lowering pipeline.

Importing the package registers the project's errors with TVM's FFI, so an
:class:`~ibert_tvm.errors.IBertTVMError` (or ``FloatFoundError``) raised inside a Python pass
reaches the caller as itself, not as a plain ``RuntimeError`` (tvm_ffi re-raises only the error
types registered with it).
"""

import tvm_ffi

from ..errors import FloatFoundError, IBertTVMError

for _cls in (IBertTVMError, FloatFoundError):
    tvm_ffi.register_error(_cls.__name__, _cls)
