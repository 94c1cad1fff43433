"""x86: element-wise and layout kernels (the head split's slice + transpose) in one pass, vectorized.

What it is for: the attention's layout kernels. The head split of the fused q/k/v output
(``ModelPlan.fused_qkv``) is ``strided_slice`` then ``permute_dims``; FuseOps makes them one
PrimFunc, but unscheduled it is two loop nests with the slice materialised in between (a
``[batch, seq, heads, d]`` workspace allocated per call, written, then read back transposed),
and every element is a scalar load and store with its own index arithmetic. In the BERT-Base
8 x 128 profile the layout kernels took 9.6 ms of 127 (the V one, ``[batch, heads, d, seq]``,
5.6 ms).

The schedule uses schedule primitives only (the values are the PrimFunc's, bit for bit):

* every block but the last is inlined into its consumer (``compute_inline``): the slice becomes
  an index offset of the transpose's load, and the workspace disappears;
* the output block's innermost loop is vectorized when its extent is static and at most
  :data:`MAX_LANES` elements (``d`` = 32 or 64 int8 for q and k: one contiguous load and store per
  row of a head); a symbolic innermost loop (V's ``seq``) is left to LLVM;
* no parallel loop: a copy of a few hundred KiB costs less than a thread-pool launch (so
  ``serial_when_small`` has nothing to decide here).

Matching: a PrimFunc whose blocks are all spatial (no reduction iterator), with one block
writing a parameter last. Any other PrimFunc, or a step that fails on it, keeps its schedule
(:class:`InjectiveRule` returns None). It runs last in x86's rule set (``x86_vnni.x86_rules``),
so the linear, attention, softmax and LayerNorm rules see their kernels first.
"""

from __future__ import annotations

from tvm import tirx

from .row_rule import MatchScheduleRule

MAX_LANES = 64  # elements of the innermost loop vectorized at most (64 int8 = one zmm register)


def _match(sch):
    """``[producers..., output block]`` when every block of the function is spatial and the
    last one writes a parameter, else None."""
    func = sch.mod["main"]
    blocks = sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []
    if not blocks:
        return None
    params = [p for p in func.params if isinstance(p, tirx.Buffer)]
    for b in blocks:
        blk = sch.get(b)
        if any(int(iv.iter_type) != 0 for iv in blk.iter_vars):  # a reduction (or opaque) iterator
            return None
        if sch.get_child_blocks(b):  # nested blocks: not a plain element-wise nest
            return None
    last = sch.get(blocks[-1])
    if len(last.writes) != 1 or not any(last.writes[0].source.same_as(p) for p in params):
        return None
    return list(blocks)


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - no root block
        return False
    return True


def _schedule(sch, blocks) -> None:
    for b in blocks[:-1]:
        sch.compute_inline(b)
    loops = sch.get_loops(blocks[-1])
    if not loops:
        return
    inner = sch.get(loops[-1]).extent
    if isinstance(inner, tirx.IntImm) and 1 < inner.value <= MAX_LANES:
        sch.vectorize(loops[-1])


class InjectiveRule(MatchScheduleRule):
    """Target ``x86``: a spatial-only PrimFunc (slices, transposes, element-wise) in one vectorized
    pass (see the module doc). None when the PrimFunc is not one or a step fails."""

    match = staticmethod(_match)
    schedule = staticmethod(_schedule)
