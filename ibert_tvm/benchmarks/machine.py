"""Where and with what a benchmark ran: CPU, memory, load, package versions, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from ..errors import IBertTVMError


def cpu_info() -> dict:
    info = {"model": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(), "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "model name":
            info["model"] = val.strip()
        elif key == "flags" and not info["flags"]:
            flags = set(val.split())
            info["flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))
    return info


def memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


WAIT_POLICIES = ("auto", "spin", "passive")


def resolve_wait_policy(policy: str) -> str:
    """``spin`` or ``passive`` (idle threads sleep); ``auto`` is passive when the 1-minute load
    average is over half the cores (a shared machine), else spin."""
    if policy not in WAIT_POLICIES:
        raise IBertTVMError(f"wait policy {policy!r}: use auto, spin or passive")
    if policy != "auto":
        return policy
    la = load_average()
    return "passive" if la and la[0] > 0.5 * (os.cpu_count() or 1) else "spin"


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("ibert-tvm", "apache-tvm", "apache-tvm-ffi", "torch", "transformers", "onnx", "onnxruntime", "numpy",
                 "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def git_info() -> dict:
    root = Path(__file__).resolve().parents[2]

    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def machine_info() -> dict:
    return {"cpu": cpu_info(), "memory_gb": memory_gb(), "platform": platform.platform()}
