"""The CUDA source level: the CUDA C that TVM generated for every ``cuda`` module.

:func:`find_float_in_cuda_source` scans every ``__global__`` kernel (comments and string
literals removed) for float types (``float``, ``half``, ``__nv_bfloat16`` ...), float math
functions and conversions (``expf``, ``__int2float_rn``, ``__fdividef`` ...) and float
literals (``1.0f``, ``2e3``); one finding per kernel, kind ``cuda``.

:func:`cuda_source` gets that source out of what a CUDA build produced: the executable
``tvm.compile`` returned, an exported ``model.so`` (read as bytes, never loaded: loading needs
the CUDA driver) or the text itself. :func:`matching_brace` is the one brace-body extractor of
the verifier (kernels here, PTX functions in :mod:`.ptx`).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ...errors import IBertTVMError
from .floats import FLOAT_FUNC_RE
from .report import Finding
from .runtime_modules import root_module, runtime_modules

_C_COMMENT_RE = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_C_STRING_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'')
_C_WORD_RE = re.compile(r"\b[A-Za-z_]\w*\b")
_C_FLOAT_LIT_RE = re.compile(
    r"(?<![\w.])(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?[fFlL]?(?![\w.])"
    r"|(?<![\w.])\d+[eE][+-]?\d+[fFlL]?(?![\w.])"
)
_CUDA_FLOAT_WORDS = frozenset(
    (
        "float double half half2 __half __half2 nv_bfloat16 nv_bfloat162 __nv_bfloat16 "
        "__nv_bfloat162 bfloat16 float1 float2 float3 float4 double1 double2 double3 double4 "
        "__int_as_float __uint_as_float __float_as_int __float_as_uint __longlong_as_double "
        "__double_as_longlong __fdividef __saturatef"
    ).split()
)
_CUDA_FLOAT_PREFIX_RE = re.compile(
    r"^(?:__float2|__double2|__half2|__int2float|__int2double|__int2half|__uint2float"
    r"|__uint2double|__uint2half|__ll2float|__ll2double|__ll2half|__ull2float|__ull2double"
    r"|__ull2half|__short2half|__ushort2half|__nv_fp8|__nv_fp6|__nv_fp4|__nv_bfloat"
    r"|__f(?:add|sub|mul|div|rcp|sqrt|rsqrt|ma)\w*_r[nzdu]|__d(?:add|sub|mul|div|rcp|sqrt|ma)\w*_r[nzdu]"
    r"|__(?:exp|log|sin|cos|tan|pow)\w*f)"
)


def matching_brace(text: str, brace: int) -> int:
    """The index of the ``}`` that closes the ``{`` at ``text[brace]`` (``len(text)`` if none)."""
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return len(text)


def _cuda_kernels(src: str) -> list[tuple[str, str]]:
    """(name, signature+body) of every ``__global__`` function definition."""
    out = []
    pos = 0
    while True:
        k = src.find("__global__", pos)
        if k < 0:
            break
        brace = src.find("{", k)
        semi = src.find(";", k)
        if brace < 0:
            break
        if 0 <= semi < brace:  # a declaration
            pos = semi + 1
            continue
        e = matching_brace(src, brace)
        sig = src[k:brace]
        names = [n for n in re.findall(r"(\w+)\s*\(", sig) if n != "__launch_bounds__"]
        out.append((names[0] if names else "?", src[k : e + 1]))
        pos = e + 1
    return out


def find_float_in_cuda_source(src: str, *, module: str = "cuda") -> tuple[list[Finding], Counter]:
    """Scan CUDA C source: one finding per ``__global__`` kernel that uses float."""
    findings: list[Finding] = []
    stats: Counter = Counter()
    clean = _C_COMMENT_RE.sub(" ", src)
    clean = _C_STRING_RE.sub(lambda m: '""' if m.group(0).startswith('"') else "''", clean)
    prefix = f"{module}:" if module else ""
    for name, code in _cuda_kernels(clean):
        stats["cuda.kernel"] += 1
        hits: Counter = Counter()
        for w in _C_WORD_RE.findall(code):
            if w in _CUDA_FLOAT_WORDS or _CUDA_FLOAT_PREFIX_RE.match(w) or FLOAT_FUNC_RE.match(w):
                hits[w] += 1
        for lit in _C_FLOAT_LIT_RE.findall(code):
            hits[f"literal {lit}"] += 1
        if hits:
            findings.append(
                Finding(
                    f"{prefix}{name}",
                    "cuda",
                    ", ".join(f"{t} x{n}" for t, n in hits.most_common()),
                )
            )
    return findings, stats


def cuda_source_from_library(path: str | os.PathLike) -> str:
    """The CUDA source embedded in an exported ``model.so`` (read as bytes, never loaded).

    TVM serialises the CUDA module as (format, function table, code); the code is the CUDA C
    source, stored as a little-endian uint64 length followed by the bytes. Loading the library
    would need the CUDA runtime, which a machine without a GPU does not have.
    """
    data = Path(path).read_bytes()
    first = data.find(b"__global__")
    if first < 0:
        raise IBertTVMError(f"{path} holds no CUDA kernels (no __global__ in the embedded code)")
    # walk back to the length-prefixed string that contains the first kernel
    for start in range(first, max(8, first - (1 << 20)), -1):
        n = int.from_bytes(data[start - 8 : start], "little")
        if start + n > first and start + n <= len(data) and n < (1 << 30):
            chunk = data[start : start + n]
            if b"\x00" in chunk:
                continue
            try:
                src = chunk.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if src.count("{") == src.count("}"):
                return src
    raise IBertTVMError(f"cannot find the embedded CUDA source in {path}")


def cuda_source(obj: Any) -> str:
    """CUDA C source of a compiled model.

    ``obj``: what ``tvm.compile``/``relax.build`` returned, a ``tvm.runtime.Module``, a compiled
    ``out/`` directory (its ``model.so``), a ``.so`` path, or CUDA source text itself.
    """
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        if isinstance(obj, str) and "__global__" in obj:
            return obj
        if p.is_dir():
            p = p / "model.so"
        if not p.is_file():
            raise IBertTVMError(f"{p} does not exist")
        if p.suffix in (".cu", ".cuh"):
            return p.read_text()
        return cuda_source_from_library(p)
    sources = []
    for m in runtime_modules(root_module(obj)):
        if str(m.kind) == "cuda":
            sources.append(m.inspect_source("cuda"))
    if not sources:
        raise IBertTVMError("the compiled module holds no CUDA code (was it built for a cuda target?)")
    return "\n".join(sources)
