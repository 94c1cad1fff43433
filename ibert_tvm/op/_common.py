"""Shared checks and helpers for the integer ops.

Conventions used by every op in this package:

* A quantized tensor is ``(x_int, scale)``: the real value is ``x_int * scale``. Scales are
  Python floats known at compile time; they only ever enter the *constants* of a kernel
  (computed here, in Python, with exact integer or float64 arithmetic), never its data path.
* Each op is a *plan*: a small object built once from the static scales and bit widths. The
  constructor computes every integer constant, proves the worst-case magnitude of every
  intermediate for the declared input domain (Python big ints), and picks int32 or int64 from
  that bound. A plan exposes ``numpy(...)`` (the reference: pure integer numpy, int64, no float
  in the data path) and ``te(...)`` (the TVM tensor expression). Both use the same constants and
  the same rounding rules, written twice independently.
* Integer division is floor division (numpy ``//``, TIR ``floordiv``); ``>>`` is an arithmetic
  shift, i.e. floor division by a power of two, in both.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

INT64_MAX = (1 << 63) - 1
INT32_MAX = (1 << 31) - 1


def check_scale(name: str, value) -> float:
    """A scale must be a finite float > 0. Returns it as a Python float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def check_scales(name: str, values) -> np.ndarray:
    """Per-channel scales: a 1-D array of finite floats > 0."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a scalar or a non-empty 1-D array, got shape {arr.shape}")
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} must be positive and finite; element {i} is {arr[i]!r}")
    return arr


def check_bits(name: str, bits, lo: int = 2, hi: int = 32) -> int:
    """A bit width, an int in [lo, hi]."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(f"{name} must be an integer bit width in [{lo}, {hi}], got {bits!r}")
    if not lo <= int(bits) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {bits}")
    return int(bits)


def signed_range(bits: int) -> tuple[int, int]:
    """Saturation bounds of a signed ``bits``-wide integer: [-2^(b-1), 2^(b-1) - 1]."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def storage_dtype(bits: int, signed: bool = True) -> str:
    """The narrowest standard dtype that holds a ``bits``-wide integer."""
    for w in (8, 16, 32, 64):
        if bits <= w:
            return f"{'' if signed else 'u'}int{w}"
    raise ValueError(f"no integer dtype holds {bits} bits")


def prove_fits(what: str, bound: int, dtype: str = "int64") -> None:
    """Raise if a proven worst-case magnitude ``bound`` does not fit ``dtype``."""
    limit = INT64_MAX if dtype == "int64" else INT32_MAX
    if bound > limit:
        raise ValueError(
            f"{what}: worst-case magnitude {bound} (~2^{bound.bit_length()}) does not fit {dtype}; "
            "the scale or bit width is out of the range this kernel supports"
        )


def width_for(bound: int) -> str:
    """int32 if a proven magnitude fits it, else int64 (raises past int64)."""
    if bound <= INT32_MAX:
        return "int32"
    prove_fits("intermediate", bound, "int64")
    return "int64"


def check_int_array(name: str, x, accepted: Iterable[str]) -> np.ndarray:
    """Reference kernels accept only integer arrays of the listed dtypes."""
    x = np.asarray(x)
    accepted = tuple(accepted)
    if x.dtype.name not in accepted:
        raise ValueError(f"{name} must have dtype in {accepted}, got {x.dtype.name}")
    return x


def check_te_dtype(name: str, tensor, accepted: Iterable[str]) -> None:
    accepted = tuple(accepted)
    if str(tensor.dtype) not in accepted:
        raise ValueError(f"{name} must have dtype in {accepted}, got {tensor.dtype}")


def sign_extend_32(v):
    """``(v << 32) >> 32`` of an int64 TIR value: the identity on values a plan has proven to fit
    int32, written so that LLVM's instruction selection sees 33 sign bits (x86 then multiplies
    two such values with ``vpmuldq``, one uop, instead of ``vpmullq``'s three)."""
    return (v << i64(32)) >> i64(32)


def i64(v: int):
    """An int64 TIR constant (helper so TE bodies never mix widths implicitly)."""
    from tvm import tirx

    return tirx.const(int(v), "int64")


def const(v: int, dtype: str):
    from tvm import tirx

    return tirx.const(int(v), dtype)
