"""Verify a compiled ``out/``: the recorded IR check, plus the machine code itself.

The build already refused any float in the lowered Relax/TIR and in the generated LLVM IR
(``passes/pipeline.py``); the manifest records those reports. This re-checks the shipped
binary independently: ``model.so`` is disassembled (``objdump``; ``aarch64-linux-gnu-objdump``
for ARM builds) and every function is scanned for floating-point instructions (x86 SSE/AVX
scalar/packed float arithmetic, conversions, FMA, x87; AArch64 ``f*``/``scvtf``/``ucvtf``).
Register moves and bitwise ops on vector registers are integer-neutral and not counted.
TVM's two weak fp16 conversion helpers (``__truncsfhf2``, ``__extendhfsf2``), linked into
every module, are allowlisted as long as no other function calls them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from ..errors import IBertTVMError
from ..passes.verify_integer_only import Finding, Report

ALLOWED = {"__truncsfhf2", "__extendhfsf2"}
_X86_FLOAT = re.compile(
    r"^v?(?:"
    r"(?:add|sub|mul|div|sqrt|min|max|rcp\d*|rsqrt\d*|round|rndscale|hadd|hsub|dp|cmp\w*|ucomi|comi|scalef|getexp|getmant|reduce|range|fixupimm)(?:ss|sd|ps|pd|sh|ph|bf16)"
    r"|f(?:n)?m(?:add|sub)\w*|fmaddsub\w*|fmsubadd\w*"
    r"|cvt\w*"
    r")$"
)
_X87 = re.compile(r"^f(?:ld|st|add|sub|mul|div|sqrt|ild|ist|comi|ucomi|xch|chs|abs|prem|scale|rndint|sin|cos|yl2x|2xm1)\w*$")
_A64_FLOAT = re.compile(r"^(?:f(?!mov)\w+|scvtf|ucvtf|bfcvt\w*|bfmla\w*|bfdot)$")


def _objdump(so: Path, target: str) -> tuple[str, list[str]]:
    tool = "aarch64-linux-gnu-objdump" if target == "aarch64" else "objdump"
    if shutil.which(tool) is None:
        pkg = "binutils-aarch64-linux-gnu" if target == "aarch64" else "binutils"
        raise IBertTVMError(f"{tool} is needed to disassemble {so}: apt-get install {pkg}")
    args = [tool, "-d", "--no-show-raw-insn", str(so)]
    if target != "aarch64":
        args[2:2] = ["-M", "intel"]
    res = subprocess.run(args, capture_output=True, text=True)
    if res.returncode != 0:
        raise IBertTVMError(f"{tool} failed on {so}: {res.stderr.strip()[:300]}")
    return tool, res.stdout.splitlines()


def scan_binary(so: Path, target: str = "llvm") -> Report:
    """Disassemble ``so`` and report float instructions per function."""
    _, lines = _objdump(so, target)
    is_float = (lambda m: bool(_A64_FLOAT.match(m))) if target == "aarch64" else (
        lambda m: bool(_X86_FLOAT.match(m) or _X87.match(m))
    )
    func = None
    ops: Counter = Counter()
    findings: list[Finding] = []
    n_funcs = 0
    head = re.compile(r"^[0-9a-f]+ <(.+)>:$")
    for ln in lines:
        m = head.match(ln)
        if m:
            func = m.group(1)
            n_funcs += 1
            continue
        if func is None or "\t" not in ln:
            continue
        parts = ln.split("\t")
        if len(parts) < 2:
            continue
        ins = parts[1].strip().split()
        if not ins:
            continue
        mnem = ins[0]
        if mnem in ("lock", "rep", "repz", "repnz", "bnd", "notrack") and len(ins) > 1:
            mnem = ins[1]
        ops[mnem] += 1
        if func in ALLOWED:
            continue
        if any(h in ln for h in ALLOWED) and mnem.startswith(("call", "jmp", "bl", "b")):
            findings.append(Finding(f"binary:{func}", "llvm", f"calls fp16 helper: {ln.strip()}"))
        elif is_float(mnem):
            findings.append(Finding(f"binary:{func}", "llvm", ln.strip()))
    top = dict(ops.most_common(15))
    top["functions"] = n_funcs
    return Report(what=f"machine code of {so.name} ({target})", dtypes={}, ops=top, findings=findings, float_ops=len(findings))


def verify_compiled(out_dir: Path) -> Report:
    """Print the recorded IR check, then return the binary scan."""
    m = json.loads((out_dir / "manifest.json").read_text())
    if str(m.get("target", "")).startswith("cuda"):  # the device code is PTX, not host assembly
        from .cuda_check import verify_cuda_compiled

        return verify_cuda_compiled(out_dir)
    rec = m.get("verify", {})
    for key in ("module", "code"):
        r = rec.get(key)
        if r is None:
            continue
        print(f"recorded at compile time ({key}): float ops {r['float_ops']}; dtypes {r.get('dtypes', {})}")
    so = out_dir / "model.so"
    if not so.is_file():
        raise IBertTVMError(f"{so} is missing")
    return scan_binary(so, m.get("target", "llvm"))
