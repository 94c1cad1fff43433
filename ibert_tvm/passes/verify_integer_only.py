"""VerifyIntegerOnly: a module pass that proves a lowered IRModule has no floating point.

Preconditions
-------------
Any ``IRModule`` of Relax functions and TIR PrimFuncs; the pass reads it and returns it
unchanged. Functions without a body (``relax.ExternFunc``) are counted, not inspected.

Where it sits in the pipeline
-----------------------------
``passes/pipeline.py`` runs it at phase 2, on the Relax ``IRModule`` after lowering
(legalization, fusion, schedules, TVM's default Relax pipeline), just before ``relax.build``.
The built executable is checked again at phase 4 by the same package
(:func:`ibert_tvm.passes.verify.verify_integer_only`), so that nothing the TVM backend adds on
the way to machine code escapes. The checks themselves are the IR level of
:mod:`ibert_tvm.passes.verify` (:mod:`~ibert_tvm.passes.verify.relax_tir`).

Invariant
---------
When the pass returns, no Relax value, constant, cast or op and no TIR buffer, expression,
constant, cast or intrinsic of the module has a floating-point type or performs a
floating-point operation; its :class:`~ibert_tvm.passes.verify.Report` (dtype and op
histograms) is left in the pass's ``report`` attribute. Otherwise it raises
:class:`~ibert_tvm.errors.FloatFoundError` listing the findings, also from inside
``tvm.transform.Sequential``.
"""

from __future__ import annotations

import tvm
from .verify import Report, verify_integer_only

# verify_integer_only is also importable from here for tests/schedules (outside this module's
# owners); new code imports it from ibert_tvm.passes.verify
__all__ = ["VerifyIntegerOnly", "verify_integer_only"]

@tvm.transform.module_pass(opt_level=0, name="VerifyIntegerOnly")
class VerifyIntegerOnly:
    """Module pass: raise FloatFoundError if the IRModule has any float; else return it as is.

    ``what`` names the module in the report and the error. After a run, ``report`` holds the
    :class:`~ibert_tvm.passes.verify.Report` of the last module checked.
    """

    def __init__(self, what: str = "module"):
        self.what = what
        self.report: Report | None = None

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        self.report = verify_integer_only(mod, what=self.what)
        return mod
