"""The "no float" verifier, one level per file: prove that what is compiled has no floating point.

Levels, from the graph down to the file that runs:

    report.py           Finding, Report: what every level returns
    floats.py           what counts as float: dtypes, float math names, the fp16 helpers
    relax_tir.py        Relax functions and TIR PrimFuncs of an IRModule
    runtime_modules.py  the one walker over a compiled module tree
    vm_constants.py     the Relax VM constant pool (the dtypes the VM allocates and checks)
    llvm_ir.py          the LLVM IR of every ``llvm`` module
    cuda_source.py      the CUDA C of every ``cuda`` module (and the one brace-body extractor)
    ptx.py              the PTX nvcc makes of that CUDA source (no GPU needed)
    machine_code.py     a shipped ``model.so``: ELF linking, every instruction, indirect calls
    check.py            the entry points: report_for / verify_integer_only pick the level

The pipeline runs the :class:`~ibert_tvm.passes.verify_integer_only.VerifyIntegerOnly` pass on
the lowered module and :func:`verify_integer_only` on the built executable; ``compile`` adds the
PTX check for CUDA builds; ``ibert-tvm verify`` runs the machine-code level (and, for CUDA, the
CUDA-source and PTX levels) on the shipped file.

**Invariant.** If :func:`verify_integer_only` returns (``Report.float_ops == 0``), no Relax
value, constant, cast or op, no TIR buffer, expression, constant, cast or intrinsic, no LLVM
function body or global (other than the two allowlisted, uncalled fp16 helpers) and no CUDA
kernel in the checked object has a floating-point type (float*/bfloat*/float8 e4m3/e5m2 ...) or
performs a floating-point operation. Scales may be floats in *Python* at compile time; none
reaches the compiled data path.

**Where the artifact check lives.** Checking a compiled ``out/`` (``verify_compiled``: the
manifest's hashes first, then these scans) is in :mod:`ibert_tvm.deploy.verify_artifact`, not
here: it reads ``out/``, whose format (manifest fields, file hashes) ``deploy`` defines. This
package takes objects (an ``IRModule``, an executable, source text, a ``.so`` path) and knows
nothing of ``out/``, so that the pipeline, ``compile`` and ``verify`` all use it from below and
it imports nothing from ``deploy``, ``schedules``, ``model`` or ``quantization``
(``tests/passes/test_verify_layering.py``).
"""

from .check import find_float, find_float_in_executable, report_for, verify_integer_only
from .cuda_source import cuda_source, cuda_source_from_library, find_float_in_cuda_source
from .floats import FP16_HELPER_SECTION, FP16_HELPERS, is_float_dtype
from .llvm_ir import find_float_in_llvm_ir
from .machine_code import IMPORTS, NEEDED, RUNTIME_SLOTS, scan_binary
from .ptx import (
    DEFAULT_ARCH,
    INT8_MATMUL_KERNEL,
    PtxKernel,
    PtxReport,
    compile_ptx,
    cuda_ptx_report,
    find_nvcc,
    ptx_kernels,
)
from .report import KINDS, MAX_LISTED, Finding, Report
from .runtime_modules import runtime_modules

__all__ = [
    "DEFAULT_ARCH",
    "FP16_HELPERS",
    "FP16_HELPER_SECTION",
    "IMPORTS",
    "INT8_MATMUL_KERNEL",
    "KINDS",
    "MAX_LISTED",
    "NEEDED",
    "RUNTIME_SLOTS",
    "Finding",
    "PtxKernel",
    "PtxReport",
    "Report",
    "compile_ptx",
    "cuda_ptx_report",
    "cuda_source",
    "cuda_source_from_library",
    "find_float",
    "find_float_in_cuda_source",
    "find_float_in_executable",
    "find_float_in_llvm_ir",
    "find_nvcc",
    "is_float_dtype",
    "ptx_kernels",
    "report_for",
    "runtime_modules",
    "scan_binary",
    "verify_integer_only",
]
