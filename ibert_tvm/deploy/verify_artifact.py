"""Verify a compiled ``out/``: the file is the one recorded, and its machine code is float-free.

The build already refused any float in the lowered Relax/TIR and in the generated LLVM IR
(``passes/pipeline.py``); the manifest records those reports. ``verify`` re-checks the shipped
binary on its own, in this order:

1. **Identity** (:func:`check_identity`). ``model.so`` must hash to the manifest's
   ``lib_sha256`` (a manifest without it is refused), and every other file of ``out/`` to its
   entry in ``files``: only then are the recorded compile-time results printed
   (:func:`print_recorded`), since only then do they describe this file.
2. to 5. **The machine code** (:func:`ibert_tvm.passes.verify.machine_code.scan_binary`): what
   the dynamic linker does, every instruction, where control can go, the fp16 helpers. That
   module's docstring states each step and the argument for what they prove and what they trust.

A CUDA build (:func:`verify_cuda_compiled`) adds, after its host code: the CUDA source embedded
in ``model.so``, which must hash to the manifest's record and is scanned for float
(:mod:`ibert_tvm.passes.verify.cuda_source`), and nvcc's PTX of it
(:mod:`ibert_tvm.passes.verify.ptx`) when nvcc is installed.

This module reads ``out/`` (the manifest and its hashes); the scanners in
:mod:`ibert_tvm.passes.verify` know nothing of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import IBertTVMError
from ..passes.verify import (
    DEFAULT_ARCH,
    Finding,
    Report,
    cuda_ptx_report,
    cuda_source_from_library,
    find_float_in_cuda_source,
    find_nvcc,
    scan_binary,
)
from .cuda_check import NOT_RUN
from ..support.hashing import check_files, sha256_file
from .runtime import LIB, PARAMS


def check_identity(out_dir: Path) -> dict:
    """The manifest of ``out_dir``, once its ``model.so`` is shown to be the file it records."""
    mpath, so = out_dir / "manifest.json", out_dir / "model.so"
    try:
        m = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise IBertTVMError(f"{mpath} is corrupt: {e}") from None
    if not isinstance(m, dict):
        raise IBertTVMError(f"{mpath} is corrupt: a JSON object expected")
    if not isinstance(m.get("verify", {}), dict):
        raise IBertTVMError(f"{mpath}: field 'verify' is not an object")
    want = m.get("lib_sha256")
    if not isinstance(want, str) or not want:
        raise IBertTVMError(f"{mpath}: field 'lib_sha256' is missing, so what was verified cannot be told; "
                            "recompile with `ibert-tvm compile`")
    if not so.is_file():
        raise IBertTVMError(f"{so} is missing")
    if sha256_file(so) != want:
        raise IBertTVMError(f"{so} does not match {mpath} field 'lib_sha256' (sha256 differs): corrupt or replaced")
    # the rest of the artifact too: swapped params or an edited tokenizer change the answers
    check_files(out_dir, m.get("files"), mpath, (LIB, PARAMS), "ibert-tvm compile")
    if m["files"][LIB] != want:
        raise IBertTVMError(f"{mpath}: fields 'lib_sha256' and 'files.{LIB}' disagree")
    return m


def print_recorded(m: dict, log=print) -> None:
    """The compile-time reports the manifest records (call after :func:`check_identity`)."""
    for key in ("module", "code"):
        r = m.get("verify", {}).get(key)
        if r is None:
            continue
        if not isinstance(r, dict) or not isinstance(r.get("float_ops"), int):
            raise IBertTVMError(f"manifest.json: field 'verify.{key}' is not a report object")
        log(f"recorded at compile time ({key}): float ops {r['float_ops']}; dtypes {r.get('dtypes', {})}")


def verify_compiled(out_dir: Path) -> Report:
    """Check the hash, print the recorded IR check, then return the binary scan."""
    m = check_identity(out_dir)
    if str(m.get("target", "")).startswith("cuda"):  # the device code is PTX, not host assembly
        return verify_cuda_compiled(out_dir)
    print_recorded(m)
    return scan_binary(out_dir / "model.so")


def verify_cuda_compiled(out_dir: str | os.PathLike, *, log=print):
    """``ibert-tvm verify`` for a CUDA ``out/``: recorded checks, host code, CUDA source, PTX.

    Returns a :class:`~ibert_tvm.passes.verify.Report` whose ``float_ops`` counts
    float in the host machine code, in the embedded CUDA source and in nvcc's PTX.
    """
    out_dir = Path(out_dir)
    m = check_identity(out_dir)  # model.so is the file the manifest records, before its records are shown
    print_recorded(m, log)
    cuda = m.get("cuda") or {}
    ptx_rec = cuda.get("ptx")
    if ptx_rec:
        log(f"recorded at compile time (PTX {ptx_rec['arch']}, {ptx_rec.get('nvcc', 'nvcc')}): float ops "
            f"{ptx_rec['float_ops']}; int8 matmul kernels {ptx_rec['int8_matmul_kernels']} "
            f"{ptx_rec['int8_matmul_units']}; untensorized {ptx_rec['untensorized_int8_matmuls']}")
    elif cuda:
        log(f"recorded at compile time: no PTX check ({cuda.get('ptx_skipped', 'not run')})")
    so = out_dir / "model.so"
    host = scan_binary(so, device_launch=True)  # host code launching kernels: see DEVICE_LAUNCH_SLOTS
    log(f"host code ({so.name}, x86-64): float ops {host.float_ops}")
    src = cuda_source_from_library(so)
    sha = hashlib.sha256(src.encode()).hexdigest()
    if cuda.get("cuda_source_sha256") and cuda["cuda_source_sha256"] != sha:
        raise IBertTVMError(f"the CUDA source in {so} does not match its manifest (sha256 differs)")
    findings: list[Finding] = list(host.findings)
    src_findings, stats = find_float_in_cuda_source(src)
    findings.extend(src_findings)
    log(f"CUDA source ({stats.get('cuda.kernel', 0)} kernels): float ops {len(src_findings)}")
    ops = dict(host.ops)
    ops["cuda.kernel"] = stats.get("cuda.kernel", 0)
    arch = cuda.get("arch", DEFAULT_ARCH)
    nvcc = find_nvcc()
    if nvcc is None:
        log("PTX: not re-checked (nvcc not found); the recorded compile-time check stands")
    else:
        rep = cuda_ptx_report(src, arch, nvcc=nvcc)
        log(rep.format())
        for k in rep.kernels:
            for op, n in k.float_ops.items():
                findings.append(Finding(f"ptx:{k.name}", "cuda", f"{op} x{n}"))
        ops.update({f"ptx.{u}": n for u, n in rep.summary()["int8_matmul_units"].items()})
        ops["ptx.untensorized_int8_matmul"] = len(rep.untensorized())
    log(NOT_RUN)
    return Report(what=f"CUDA build {out_dir.name} ({m.get('target')}, {arch})", dtypes={}, ops=ops,
                  findings=findings, float_ops=len(findings))
