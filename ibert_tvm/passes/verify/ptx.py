"""The PTX level: what ``nvcc`` makes of the CUDA source, checked without a GPU.

There is no GPU (no ``libcuda``) on the build machines, so a CUDA build is never *run* there.
Its CUDA source (:mod:`.cuda_source`) is compiled by ``nvcc -ptx -arch=sm_75`` (CUDA 13 on
these machines) and every PTX function (``.entry`` kernels and ``.func`` helpers) is inspected:

* int8 matrix instructions: ``dp4a.{s32,u32}.{s32,u32}`` (4-wide int8 dot product),
  ``mma.sync...s8/u8`` and ``wmma.mma.sync...s8/u8`` (tensor cores);
* float instructions: any opcode with a floating-point type (``add.f32``, ``cvt.rn.f32.s32``,
  ``fma.rn.f32``, ``ex2.approx.f32``, ``.f64``, ``.f16``/``.bf16`` ...) and declarations of
  float registers (``.reg .f32``).

:func:`cuda_ptx_report` returns a :class:`PtxReport` (which also carries the CUDA-source
findings); :data:`INT8_MATMUL_KERNEL` names the kernels that hold the model's int8 matmuls
(``linear``, ``qk_matmul``, ``pv_matmul``), each of which must contain dp4a or int8 mma/wmma
(:meth:`PtxReport.untensorized`). ``P V`` with a uint16 ``P`` (the scheme's ``softmax_bits`` > 8)
is lowered to two uint8 ``pv_matmul`` byte products (``op.wide_pv``), so it is checked as one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import IBertTVMError
from .cuda_source import cuda_source, find_float_in_cuda_source, matching_brace

DEFAULT_ARCH = "sm_75"  # NVIDIA T4 (Turing)
# the fused PrimFuncs (-> kernels) that hold the model's int8 matmuls: names come from the
# PrimFunc names LowerToInteger gives its te() calls ("linear", "qk_matmul", "pv_matmul")
INT8_MATMUL_KERNEL = re.compile(r"(?:^|_)(?:linear\d*|qk_matmul|pv_matmul)(?:_|\d|$)")

_DP4A = re.compile(r"^dp4a\.[su]32\.[su]32$")
_MMA_INT8 = re.compile(r"^mma\.sync\b.*\.[su]8\b")  # e.g. mma.sync.aligned.m8n8k16.row.col.s32.s8.s8.s32
_WMMA_INT8 = re.compile(r"^wmma\.mma\.sync\b.*\.[su]8\b")  # e.g. wmma.mma.sync.aligned.row.col.m16n16k16.s32.s8.s8.s32
_FLOAT_TYPE = re.compile(r"\.(?:f16|f16x2|bf16|bf16x2|tf32|f32|f64|e4m3|e5m2|e4m3x2|e5m2x2|e2m1x2|e2m3x2|e3m2x2)(?:\.|$)")
_FLOAT_REG = re.compile(r"^\.reg\s+\.(?:f16|f16x2|bf16|bf16x2|f32|f64)\b")


def find_nvcc() -> str | None:
    """``$IBERT_TVM_NVCC``, ``nvcc`` on PATH, or ``$CUDA_HOME/bin/nvcc`` / ``/usr/local/cuda/bin/nvcc``."""
    env = os.environ.get("IBERT_TVM_NVCC")
    if env:
        return env if Path(env).is_file() else None
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


def compile_ptx(src: str, arch: str = DEFAULT_ARCH, *, nvcc: str | None = None) -> str:
    """``nvcc -ptx -arch=<arch>`` of ``src``; raises :class:`IBertTVMError` with nvcc's message."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise IBertTVMError(
            "nvcc (the CUDA toolkit) is needed to compile the CUDA kernels to PTX; install the CUDA "
            "toolkit or set IBERT_TVM_NVCC to the nvcc binary"
        )
    with tempfile.TemporaryDirectory(prefix="ibert-tvm-ptx-") as tmp:
        cu, ptx = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.ptx"
        cu.write_text(src)
        res = subprocess.run(
            [nvcc, "-ptx", f"-arch={arch}", "-w", "-o", str(ptx), str(cu)], capture_output=True, text=True
        )
        if res.returncode != 0:
            raise IBertTVMError(f"nvcc -ptx -arch={arch} failed:\n{(res.stderr or res.stdout).strip()[-3000:]}")
        return ptx.read_text()


def _ptx_functions(ptx: str) -> list[tuple[str, str, str]]:
    """(kind 'entry'/'func', name, body) of every PTX function definition (not prototypes)."""
    out = []
    for m in re.finditer(r"\.(entry|func)\s+(?:\([^)]*\)\s*)?([A-Za-z_$][\w$]*)", ptx):
        e = m.end()
        if ptx[e:].lstrip().startswith("("):  # the parameter list
            e = ptx.find(")", ptx.find("(", e)) + 1
        brace, semi = ptx.find("{", e), ptx.find(";", e)
        if brace < 0 or 0 <= semi < brace:
            continue  # a prototype: `.func name(...);`
        out.append((m.group(1), m.group(2), ptx[brace + 1 : matching_brace(ptx, brace)]))
    return out


def _instructions(body: str):
    """(opcode, line) of every instruction; directives (``.reg`` ...) as (directive, line)."""
    for raw in body.splitlines():
        line = raw.split("//", 1)[0].strip().rstrip(";").strip()
        if not line or line in "{}" or line.endswith(":"):
            continue
        line = line.lstrip("{").strip()
        if not line:
            continue
        if line.startswith("@"):  # predicate guard
            parts = line.split(None, 1)
            line = parts[1] if len(parts) > 1 else ""
        if not line:
            continue
        yield line.split(None, 1)[0], line


@dataclass
class PtxKernel:
    name: str
    kind: str  # "entry" (a __global__ kernel) or "func"
    ops: Counter = field(default_factory=Counter)
    float_ops: Counter = field(default_factory=Counter)

    @property
    def dp4a(self) -> int:
        return sum(n for op, n in self.ops.items() if _DP4A.match(op))

    @property
    def mma_int8(self) -> int:
        return sum(n for op, n in self.ops.items() if _MMA_INT8.match(op))

    @property
    def wmma_int8(self) -> int:
        return sum(n for op, n in self.ops.items() if _WMMA_INT8.match(op))

    @property
    def int8_matmul_unit(self) -> str | None:
        """'tensor cores (mma)', 'tensor cores (wmma)', 'dp4a', or None."""
        if self.mma_int8:
            return "tensor cores (mma)"
        if self.wmma_int8:
            return "tensor cores (wmma)"
        if self.dp4a:
            return "dp4a"
        return None

    @property
    def is_int8_matmul(self) -> bool:
        return bool(INT8_MATMUL_KERNEL.search(self.name))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "int8_matmul": self.is_int8_matmul,
            "unit": self.int8_matmul_unit,
            "dp4a": self.dp4a,
            "mma_int8": self.mma_int8,
            "wmma_int8": self.wmma_int8,
            "int8_ops": {op: n for op, n in sorted(self.ops.items()) if _DP4A.match(op) or _MMA_INT8.match(op) or _WMMA_INT8.match(op)},
            "float_ops": dict(self.float_ops),
            "instructions": sum(self.ops.values()),
        }


@dataclass
class PtxReport:
    arch: str
    kernels: list[PtxKernel]
    source_sha256: str
    source_float_findings: list = field(default_factory=list)  # CUDA-source scan (Finding)
    nvcc: str = ""

    @property
    def float_ops(self) -> int:
        return sum(sum(k.float_ops.values()) for k in self.kernels) + len(self.source_float_findings)

    def matmul_kernels(self) -> list[PtxKernel]:
        return [k for k in self.kernels if k.kind == "entry" and k.is_int8_matmul]

    def untensorized(self) -> list[str]:
        """Int8 matmul kernels with neither dp4a nor int8 mma/wmma."""
        return [k.name for k in self.matmul_kernels() if k.int8_matmul_unit is None]

    @property
    def ok(self) -> bool:
        return self.float_ops == 0 and not self.untensorized() and bool(self.matmul_kernels())

    def summary(self) -> dict:
        units = Counter(k.int8_matmul_unit for k in self.matmul_kernels())
        return {
            "arch": self.arch,
            "nvcc": self.nvcc,
            "cuda_source_sha256": self.source_sha256,
            "kernels": sum(k.kind == "entry" for k in self.kernels),
            "int8_matmul_kernels": len(self.matmul_kernels()),
            "int8_matmul_units": {(u or "untensorized"): n for u, n in units.items()},
            "untensorized_int8_matmuls": self.untensorized(),
            "ptx_totals": {
                "dp4a": sum(k.dp4a for k in self.kernels),
                "mma_int8": sum(k.mma_int8 for k in self.kernels),
                "wmma_int8": sum(k.wmma_int8 for k in self.kernels),
            },
            "float_ops": self.float_ops,
            "ok": self.ok,
        }

    def to_dict(self) -> dict:
        d = self.summary()
        d["per_kernel"] = [k.to_dict() for k in self.kernels]
        d["source_float_findings"] = [str(f) for f in self.source_float_findings]
        return d

    def format(self) -> str:
        lines = [f"PTX check ({self.arch}, {self.nvcc or 'nvcc'}): {sum(k.kind == 'entry' for k in self.kernels)} kernels"]
        w = max((len(k.name) for k in self.kernels), default=10)
        for k in self.kernels:
            unit = k.int8_matmul_unit or ("-- NOT TENSORIZED --" if k.is_int8_matmul else "")
            tens = []
            if k.dp4a:
                tens.append(f"dp4a x{k.dp4a}")
            if k.wmma_int8:
                tens.append(f"wmma.s8 x{k.wmma_int8}")
            if k.mma_int8:
                tens.append(f"mma.s8 x{k.mma_int8}")
            fl = ", ".join(f"{op} x{n}" for op, n in k.float_ops.most_common(4))
            lines.append(
                f"  {k.name:<{w}}  {'int8 matmul' if k.is_int8_matmul else '':<11}  {unit:<20} "
                f"{' '.join(tens):<22} float: {fl or 0}"
            )
        for f in self.source_float_findings:
            lines.append(f"  CUDA source: {f}")
        s = self.summary()
        lines.append(
            f"int8 matmul kernels: {s['int8_matmul_kernels']} ({', '.join(f'{u}: {n}' for u, n in s['int8_matmul_units'].items())}); "
            f"untensorized: {len(s['untensorized_int8_matmuls'])}; float PTX/source ops: {self.float_ops}"
        )
        return "\n".join(lines)


def ptx_kernels(ptx: str) -> list[PtxKernel]:
    out = []
    for kind, name, body in _ptx_functions(ptx):
        k = PtxKernel(name, kind)
        for op, line in _instructions(body):
            if op.startswith("."):
                if op == ".reg" and _FLOAT_REG.match(line):
                    k.float_ops[line.split()[1]] += 1
                continue
            k.ops[op] += 1
            if _FLOAT_TYPE.search(op):
                k.float_ops[op] += 1
        out.append(k)
    return out


def _nvcc_version(nvcc: str) -> str:
    try:
        res = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return nvcc
    m = re.search(r"release ([\d.]+)", res.stdout)
    return f"nvcc {m.group(1)}" if m else nvcc


def cuda_ptx_report(ex_or_out: Any, arch: str = DEFAULT_ARCH, *, nvcc: str | None = None) -> PtxReport:
    """Compile the CUDA source of ``ex_or_out`` (see :func:`cuda_source`) to PTX for ``arch``
    and report, per kernel, its int8 matrix instructions and any float instruction."""
    src = cuda_source(ex_or_out)
    nvcc = nvcc or find_nvcc()
    ptx = compile_ptx(src, arch, nvcc=nvcc)
    findings, _ = find_float_in_cuda_source(src)
    return PtxReport(
        arch=arch,
        kernels=ptx_kernels(ptx),
        source_sha256=hashlib.sha256(src.encode()).hexdigest(),
        source_float_findings=list(findings),
        nvcc=_nvcc_version(nvcc) if nvcc else "",
    )
