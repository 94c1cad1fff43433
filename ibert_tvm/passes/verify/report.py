"""Level 0 of the verifier: what every level reports.

A :class:`Finding` is one piece of floating point (where, what kind, a readable detail); a
:class:`Report` is what one check saw (dtype and op histograms) plus its findings. Every level
of :mod:`ibert_tvm.passes.verify` returns these, so the pipeline, ``compile``'s manifest and
``ibert-tvm verify`` print and record them the same way.

Finding kinds: ``dtype``, ``constant``, ``cast``, ``intrinsic`` (IR level); ``llvm``, ``cuda``,
``opaque`` (compiled level; VM constant-pool entries use ``dtype``); ``link``, ``import``,
``control``, ``fp16`` (machine code, :mod:`.machine_code`; float instructions there use ``llvm``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("dtype", "constant", "cast", "intrinsic", "llvm", "cuda", "opaque")
MAX_LISTED = 20

# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One piece of floating point: where it is, what kind, and a human-readable detail."""

    where: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.where}: {self.detail}"


@dataclass
class Report:
    """What the verifier saw: dtype and op histograms plus the float findings (if any)."""

    what: str = "module"
    dtypes: dict[str, int] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    float_ops: int = 0

    @property
    def ok(self) -> bool:
        return self.float_ops == 0

    def format(self) -> str:
        lines = [f"integer-only check of {self.what}"]
        for title, counts in (("dtypes", self.dtypes), ("ops", self.ops)):
            lines.append(f"{title}:")
            w = max((len(k) for k in counts), default=0)
            for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {k:<{w}}  {n:>7}")
            if not counts:
                lines.append("  (none)")
        if self.findings:
            lines.append("findings:")
            for f in self.findings[:MAX_LISTED]:
                lines.append(f"  {f}")
            if len(self.findings) > MAX_LISTED:
                lines.append(f"  ... and {len(self.findings) - MAX_LISTED} more")
        lines.append(f"float ops: {self.float_ops}")
        return "\n".join(lines)

