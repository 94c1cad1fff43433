"""Intel AMX on Linux: whether this CPU has AMX-INT8, and the per-process tile permission.

Linux enables the AMX tile state lazily, per process: until a process asks for it
(``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``), the first tile instruction faults
(SIGILL). A model compiled for target ``x86-amx`` calls :func:`require_amx` before it runs.
No TVM import here: the runtime-only loader uses it.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from ..errors import IBertTVMError

ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA, SYS_ARCH_PRCTL_X86_64 = 0x1023, 18, 158


def cpu_has_amx_int8(cpuinfo: str | None = None) -> bool:
    """True when ``/proc/cpuinfo`` lists the ``amx_int8`` and ``amx_tile`` flags."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return {"amx_int8", "amx_tile"} <= flags
    return False


def enable_amx() -> bool:
    """Ask the kernel for the AMX tile-data permission in this process (idempotent)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(SYS_ARCH_PRCTL_X86_64, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def require_amx(what: str) -> None:
    """Raise a one-line error unless this CPU has AMX-INT8 and the kernel grants the permission."""
    if not cpu_has_amx_int8():
        raise IBertTVMError(f"{what} was compiled for target x86-amx, but this CPU has no AMX-INT8 "
                            "(/proc/cpuinfo lacks amx_int8/amx_tile): compile it with --target x86")
    if not enable_amx():
        raise IBertTVMError(f"{what} was compiled for target x86-amx, but the kernel refused the AMX "
                            "tile permission (arch_prctl ARCH_REQ_XCOMP_PERM): compile it with --target x86")
