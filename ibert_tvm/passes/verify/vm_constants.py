"""The Relax VM level: the dtypes of the tensors a compiled VM executable allocates or checks.

The VM bytecode holds no arithmetic (kernels do, and :mod:`.llvm_ir` / :mod:`.cuda_source`
read those), but its constant pool names the dtype of every tensor it allocates or matches a
shape against. :func:`find_float_in_vm_stats` reads that pool from the executable's ``stats()``
text: every dtype entry is counted, and a float one is a finding (kind ``dtype``).
"""

from __future__ import annotations

import re
from collections import Counter

from .floats import is_float_dtype
from .report import Finding

_DTYPE_ENTRY_RE = re.compile(r"^(?:u?int\d+|bool|float\d+|bfloat\d+|float8\w*|e\d+m\d+\w*)(?:x\d+)?$")


def _split_top_level(s: str) -> list[str]:
    parts, depth, cur, in_str = [], 0, [], False
    for ch in s:
        if ch == '"':
            in_str = not in_str
        elif not in_str:
            if ch in "[(":
                depth += 1
            elif ch in "])":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append("".join(cur).strip())
                cur = []
                continue
        cur.append(ch)
    if cur:
        parts.append("".join(cur).strip())
    return parts


def find_float_in_vm_stats(stats_text: str, dtypes: Counter) -> list[Finding]:
    """Findings in the VM's ``Constant pool`` line of ``stats_text``; counts its dtypes into ``dtypes``."""
    findings = []
    for line in stats_text.splitlines():
        line = line.strip()
        if not line.startswith("Constant pool"):
            continue
        lb, rb = line.find("["), line.rfind("]")
        if lb < 0 or rb < lb:
            continue
        for idx, entry in enumerate(_split_top_level(line[lb + 1 : rb])):
            if _DTYPE_ENTRY_RE.match(entry):
                dtypes[entry] += 1
                if is_float_dtype(entry):
                    findings.append(
                        Finding(
                            f"vm:constant pool[{idx}]",
                            "dtype",
                            f"the VM allocates or checks a {entry} tensor",
                        )
                    )
    return findings

