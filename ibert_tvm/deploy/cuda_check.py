"""What ``compile`` records about a CUDA build, which no machine here can run.

There is no GPU (no ``libcuda``) on the build machines, so a ``cuda-t4`` build is never *run*
here. ``compile`` records instead (:func:`cuda_build_record`, into the manifest's ``cuda``
section and :data:`PTX_REPORT` next to ``model.so``) the sha256 of the CUDA source TVM
generated and the PTX check of that source (:mod:`ibert_tvm.passes.verify.ptx`); it refuses a
build whose PTX has a float instruction. ``ibert-tvm verify`` re-checks a CUDA ``out/`` in
:func:`ibert_tvm.deploy.verify_artifact.verify_cuda_compiled`.
"""

from __future__ import annotations

import hashlib

from ..errors import FloatFoundError

PTX_REPORT = "cuda_ptx_report.json"  # written next to model.so by `compile --target cuda-*`
NOT_RUN = (
    "compiled only: no GPU on the build machine, so these kernels were never executed here; "
    "their bit-exactness with the golden executor rests on the schedule-only argument in "
    "ibert_tvm/schedules/cuda_t4.py"
)


def is_cuda_target(tgt) -> bool:
    """A ``tvm.target.Target`` (or its kind name / our target name) for CUDA."""
    if isinstance(tgt, str):
        return tgt.startswith("cuda")
    return str(tgt.kind.name) == "cuda"


def cuda_build_record(ex, tgt) -> tuple[dict, dict | None]:
    """What ``compile`` records for a CUDA build: ``(manifest section, full PTX report or None)``.

    Raises :class:`~ibert_tvm.errors.FloatFoundError` if nvcc's PTX has a float instruction
    (the CUDA source scan at build time already refused float in the source).
    """
    # lazy: export imports this module for PTX_REPORT, and `import ibert_tvm.deploy.export`
    # stays free of tvm (the board stages the modules it imports)
    from ..passes.verify import DEFAULT_ARCH, cuda_ptx_report, cuda_source, find_nvcc

    arch = str(tgt.attrs.get("arch", DEFAULT_ARCH))
    src = cuda_source(ex)
    section = {
        "arch": arch,
        "cuda_source_sha256": hashlib.sha256(src.encode()).hexdigest(),
        "executed_here": False,
        "note": NOT_RUN,
        "ptx": None,
    }
    nvcc = find_nvcc()
    if nvcc is None:
        section["ptx_skipped"] = "nvcc not found (install the CUDA toolkit or set IBERT_TVM_NVCC)"
        return section, None
    report = cuda_ptx_report(src, arch, nvcc=nvcc)
    if report.float_ops:
        bad = [f"{k.name}: {dict(k.float_ops)}" for k in report.kernels if k.float_ops]
        raise FloatFoundError(f"nvcc's PTX for {arch} has float instructions:\n  " + "\n  ".join(bad[:20]))
    section["ptx"] = report.summary()
    return section, report.to_dict()
