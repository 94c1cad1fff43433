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
  row of a head);
* a symbolic innermost loop (V's ``[batch, heads, d, seq]``: ``seq``) is split by
  :data:`SYMBOLIC_LANES` and the 16 lanes vectorized, the partial last vector peeled off as a
  scalar tail by TVM's LoopPartition (``pragma_loop_partition_hint``, as in ``x86_softmax``), so
  any ``seq`` is exact. Where no input is read contiguously along that loop (a transpose: V reads
  ``qkv[b, s, h, d]``, ``s`` strided), the 16-wide block of ``seq`` moves outside the static loop
  before it (``d``): each step then writes 16 contiguous bytes of one output row while its 16
  strided reads stay in the same few cache lines for all ``d``. Unscheduled, that loop was one
  byte at a time with its own index arithmetic: V's kernel alone (BERT-Base, 1 thread of 2)
  11.6 -> 3.6 us at 1 x 32, 49 -> 14 us at 1 x 128, 429 -> 119 us at 8 x 128 (32 lanes: the
  same; 64: slower). A pool launch would halve the last two, but a layout kernel's block
  iteration is ~15x cheaper than the softmax's that the ``other`` threshold was set for, and
  under the passive policy a wake-up costs more than the copy: none here;
* no parallel loop: a copy of a few hundred KiB costs less than a thread-pool launch (so
  ``serial_when_small`` has nothing to decide here).

Matching: a PrimFunc whose blocks are all spatial (no reduction iterator), with one block
writing a parameter last. Any other PrimFunc, or a step that fails on it, keeps its schedule
(:class:`InjectiveRule` returns None). It runs last in x86's rule set (``x86_vnni.x86_rules``),
so the linear, attention, softmax and LayerNorm rules see their kernels first.
"""

from __future__ import annotations

from tvm import tirx
from tvm.tirx.analysis import undefined_vars

from .row_rule import MatchScheduleRule

MAX_LANES = 64  # elements of the innermost loop vectorized at most (64 int8 = one zmm register)
SYMBOLIC_LANES = 16  # a symbolic innermost loop's vector (16 strided int8 reads, one 16-byte store)


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
    if isinstance(inner, tirx.IntImm):
        if 1 < inner.value <= MAX_LANES:
            sch.vectorize(loops[-1])
        return
    _vectorize_symbolic(sch, blocks[-1], loops)


def _vectorize_symbolic(sch, block, loops) -> None:
    """The symbolic innermost loop as :data:`SYMBOLIC_LANES`-wide vectors with a peeled tail; its
    outer part above the static loop before it when the block is a transpose along it (no read
    contiguous along it, :func:`_transposed_along_last`; module doc)."""
    transposed = _transposed_along_last(sch.get(block), len(loops))
    outer, lanes = sch.split(loops[-1], [None, SYMBOLIC_LANES])
    sch.annotate(outer, "pragma_loop_partition_hint", 1)
    if transposed and len(loops) > 1 and isinstance(sch.get(loops[-2]).extent, tirx.IntImm):
        sch.reorder(outer, loops[-2])
    sch.vectorize(lanes)


def _transposed_along_last(block, n_loops: int) -> bool:
    """Whether the block's last iterator (its innermost loop: a block fresh from TE has one loop
    per iterator, in order) appears in the last index of none of its reads. False when the loops
    and iterators do not correspond one to one (no reordering then)."""
    if len(block.iter_vars) != n_loops or not block.reads:
        return False
    last = block.iter_vars[-1].var
    return not any(v.same_as(last) for r in block.reads if r.region for v in undefined_vars(r.region[-1].min))


class InjectiveRule(MatchScheduleRule):
    """Target ``x86``: a spatial-only PrimFunc (slices, transposes, element-wise) in one vectorized
    pass (see the module doc). None when the PrimFunc is not one or a step fails."""

    match = staticmethod(_match)
    schedule = staticmethod(_schedule)
