"""The LLVM IR level: the IR TVM generated for every ``llvm`` module of a compiled executable.

One finding per defined function (or global) with float in it: float types (``float``,
``double``, ``half``, ``bfloat`` ...), float instructions (``fadd``, ``fcmp``, ``sitofp`` ...),
calls to ``llvm.*.f32``-style float intrinsics, float globals. The signature line counts too
(float parameters or returns; a call to libm's ``expf`` shows up by its float types). Names and
string literals are blanked before the scan, so a function *called* ``float_free`` is not a
finding.

The two fp16 helpers (:data:`~.floats.FP16_HELPERS`) are skipped only when both the name and
the section (:data:`~.floats.FP16_HELPER_SECTION`) match; any other function that calls them
is a finding (``calls fp16 helper``).
"""

from __future__ import annotations

import re
from collections import Counter

from .floats import FLOAT_FUNC_RE, FP16_HELPER_SECTION, FP16_HELPERS
from .report import Finding

_LL_DEFINE_RE = re.compile(r'^define\b.*?@("(?:[^"\\]|\\.)*"|[-\w.$]+)\s*\(')
_LL_GLOBAL_RE = re.compile(r'^@("(?:[^"\\]|\\.)*"|[-\w.$]+)\s*=')
_LL_STRING_RE = re.compile(r'c?"(?:[^"\\]|\\.)*"')
_LL_NAME_RE = re.compile(r'[%@!#$][-\w.$]*')
_LL_FLOAT_TOKENS = (
    "float double half bfloat fp128 x86_fp80 ppc_fp128 "
    "fadd fsub fmul fdiv frem fneg fcmp fptosi fptoui sitofp uitofp fpext fptrunc"
).split()
_LL_TOKEN_RE = re.compile(r"\b(" + "|".join(_LL_FLOAT_TOKENS) + r")\b")
_LL_CALLEE_RE = re.compile(r'@("(?:[^"\\]|\\.)*"|[-\w.$]+)')


def _strip_ll_comment(line: str) -> str:
    # ';' starts a comment unless inside a string
    out, in_str = [], False
    for ch in line:
        if ch == '"':
            in_str = not in_str
        elif ch == ";" and not in_str:
            break
        out.append(ch)
    return "".join(out)


def _ll_float_tokens(text: str) -> Counter:
    text = _LL_STRING_RE.sub(" ", text)
    text = _LL_NAME_RE.sub(" ", text)
    return Counter(_LL_TOKEN_RE.findall(text))


def find_float_in_llvm_ir(ll: str, *, module: str = "llvm") -> tuple[list[Finding], Counter]:
    """Scan LLVM IR text: one finding per function (or global) that has float in it.

    Returns ``(findings, stats)``; stats counts defined functions, globals and allowlisted
    helpers. ``module`` prefixes ``where`` when several modules are scanned.
    """
    findings: list[Finding] = []
    stats: Counter = Counter()
    lines = ll.splitlines()
    i = 0
    prefix = f"{module}:" if module else ""
    while i < len(lines):
        raw = lines[i]
        m = _LL_DEFINE_RE.match(raw)
        if m:
            name = m.group(1).strip('"')
            body = [raw]
            j = i + 1
            if not raw.rstrip().endswith("}"):
                while j < len(lines) and lines[j].rstrip() != "}":
                    body.append(lines[j])
                    j += 1
                j += 1
            i = j
            if name in FP16_HELPERS and f'section "{FP16_HELPER_SECTION}"' in raw:
                stats["llvm.allowlisted_fp16_helper"] += 1
                continue
            stats["llvm.function"] += 1
            code = [_strip_ll_comment(b) for b in body]
            tokens: Counter = Counter()
            intrins: Counter = Counter()
            helper_calls: Counter = Counter()
            first_line = None
            for k, c in enumerate(code):
                t = _ll_float_tokens(c)
                callees = [x.strip('"') for x in _LL_CALLEE_RE.findall(c)]
                if k > 0:
                    for callee in callees:
                        if callee in FP16_HELPERS:
                            helper_calls[callee] += 1
                        elif FLOAT_FUNC_RE.match(callee) and callee.startswith("llvm."):
                            intrins[callee] += 1
                if (t or helper_calls or intrins) and first_line is None and k > 0:
                    first_line = c.strip()
                tokens.update(t)
            # the signature itself (k == 0) may carry float params/returns
            if tokens or intrins or helper_calls:
                parts = [f"{tok} x{n}" for tok, n in tokens.most_common()]
                parts += [f"@{n} x{c}" for n, c in intrins.most_common()]
                parts += [f"calls fp16 helper @{n} x{c}" for n, c in helper_calls.most_common()]
                detail = ", ".join(parts)
                if first_line:
                    detail += f"; first: {first_line[:120]}"
                findings.append(Finding(f"{prefix}{name}", "llvm", detail))
            continue
        g = _LL_GLOBAL_RE.match(raw)
        if g:
            stats["llvm.global"] += 1
            t = _ll_float_tokens(_strip_ll_comment(raw))
            if t:
                parts = ", ".join(f"{tok} x{n}" for tok, n in t.most_common())
                findings.append(
                    Finding(f"{prefix}global @{g.group(1).strip(chr(34))}", "llvm", parts)
                )
        i += 1
    return findings, stats
