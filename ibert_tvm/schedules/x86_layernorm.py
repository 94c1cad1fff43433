"""x86: i-LayerNorm (``op.int_layernorm.IntLayerNorm.te``) one row at a time (target ``x86``).

Unscheduled, the LayerNorm PrimFunc is five loop nests over ``[..., H]`` on one core: the row sums
(``ln_sum``), the means (``ln_mean``), the variances (``ln_var``, a second pass over the input),
the per-row factors (``ln_factor``: the Newton square root and one division) and the output
(``int_layernorm``: a third pass, int64 multiplies), each over every row before the next starts.
This schedule uses schedule primitives only: the arithmetic is the TE's, unchanged (int64 where the
TE says int64), so the result is bit-identical to the unscheduled PrimFunc and to
``IntLayerNorm.numpy``.

* The leading loops (``b, s``: the rows) are fused and run in parallel.
* Under the row loop (``compute_at``), per row: ``ln_sum``, ``ln_mean``, ``ln_var``,
  ``ln_factor`` (scalars) and ``int_layernorm``. The row (``H`` int32, 3 KiB at ``H = 768``) is
  read three times from L1 instead of three times from memory.
* The two reductions are split by the vector width ``w`` (:data:`LANES` = 16, else 8 or 4: the
  widest that divides ``H``, so no tail) and ``rfactor``-ed: ``w`` partial sums per row (a vector
  loop, kept in zmm registers by LLVM), then one sum of ``w`` terms. Integer addition is
  associative (int64 two's-complement addition is, even where it would wrap; the plan proves it
  does not), so the sums are the same integers in any order.
* The output loop (element-wise over the channels, ``H`` static) is split by ``w`` and
  vectorized: int64 lanes (``vpmullq``, ``vpsraq``, ``vpminsq``/``vpmaxsq`` on AVX-512), then
  the narrowing to int8. An ``H`` that 4 does not divide keeps scalar loops (still per row, in
  parallel).

Measured (kernel alone, ``H = 768``, 1 thread, CPU time, load ~7): 1.37x faster than the
unscheduled PrimFunc at 8 x 128 and 1 x 128; the rows in parallel come on top. What is left is
the int64 arithmetic itself (3 passes over the row, ~5 multiplies per element: the variance's
``y * y`` and the output's ``n * g`` are 32 x 32 -> 64-bit products, ``vpmuldq``, since the TE
writes those operands ``sign_extend_32``; ``y * f`` and the requantization stay ``vpmullq``) and
the Newton square root's 7 divisions per row. A BERT-Base LayerNorm at 1 x 32 (32 rows) takes
~13.5 us on one thread and ~7.8 us on two (the spin table's layernorm threshold, 2**16, makes it
parallel there; ``serial_when_small``).

Matching is structural: a PrimFunc with the blocks :data:`BLOCKS` (the TE's stage names) whose
output block is spatial over ``[..., H]`` with a static ``H``, the reductions over the last axis.
Any other block (an element-wise stage fused in by ``FuseOps``) is inlined into its consumer or
producer; where that fails, or anything else fails, the PrimFunc is left to the next rule (the rule
returns None).

The rule serves target ``x86`` only (x86's rule set, ``x86_vnni.x86_rules``). The parallel loop
makes it a ``serial_when_small`` kernel of class ``other``.
"""

from __future__ import annotations

from .row_rule import MatchScheduleRule

# the stage (block) names of ``IntLayerNorm.te``, in order
BLOCKS = ("ln_sum", "ln_mean", "ln_var", "ln_factor", "int_layernorm")
SUM, MEAN, VAR, FACTOR, OUT = BLOCKS
LANES = 16  # int64 / int32 lanes per vector step (two zmm registers of int64)


def _static(e):
    try:
        return int(e)
    except TypeError:
        return None


def _match(sch):
    """``{name: block}`` when ``sch``'s function is an ``IntLayerNorm`` body, else None."""
    blocks = {}
    for name in BLOCKS:
        try:
            blocks[name] = sch.get_sblock(name)
        except Exception:  # noqa: BLE001 - no such block (ScheduleError): not a LayerNorm
            return None
    kinds = {name: [int(iv.iter_type) for iv in sch.get(b).iter_vars] for name, b in blocks.items()}
    rank = len(kinds[OUT])  # 0: spatial, 2: reduction
    if rank < 2 or kinds[OUT] != [0] * rank:
        return None
    lead = [0] * (rank - 1)
    if kinds[SUM] != lead + [2] or kinds[VAR] != lead + [2] or kinds[MEAN] != lead or kinds[FACTOR] != lead:
        return None
    if _static(sch.get(blocks[OUT]).iter_vars[-1].dom.extent) is None:
        return None
    return blocks


def _inline_others(sch, blocks) -> None:
    """Inline every block that is not one of :data:`BLOCKS` (e.g. a fused element-wise producer)."""
    ours = {sch.get(b).name_hint for b in blocks.values()}
    root = sch.get_sblock("root")
    for b in sch.get_child_blocks(root):
        if sch.get(b).name_hint in ours:
            continue
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001 - a consumer of the output: inline it into the output
            sch.reverse_compute_inline(b)


def _rfactor(sch, block, lanes: int):
    """The reduction ``block`` as ``lanes`` partial sums (``rfactor``) and their sum: returns the
    partial-sum block."""
    k = sch.get_loops(block)[-1]
    _, ki = sch.split(k, [None, lanes])
    return sch.rfactor(ki, factor_axis=len(sch.get(block).iter_vars) - 1)


def _lanes(h: int) -> int:
    """The vector width for a row of ``h`` channels: the widest of :data:`LANES`, 8, 4 dividing it
    (no tail), else 0 (the row stays scalar)."""
    return next((n for n in (LANES, 8, 4) if h % n == 0), 0)


def _schedule(sch, blocks) -> None:
    _inline_others(sch, blocks)
    lanes = _lanes(_static(sch.get(sch.get_loops(blocks[OUT])[-1]).extent))
    # the reductions first (rfactor needs them unmoved): lanes partial sums each
    rfs = [_rfactor(sch, blocks[name], lanes) for name in (SUM, VAR)] if lanes else []
    *lead, col = sch.get_loops(blocks[OUT])
    row = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    sch.parallel(row)
    order = [blocks[FACTOR], blocks[VAR], *rfs[1:], blocks[MEAN], blocks[SUM], *rfs[:1]]
    for b in order:  # producers at the row, last consumer first
        sch.compute_at(b, row, preserve_unit_loops=False)
    for rf in rfs:  # at the row, its loops are (lanes, k / lanes): the lanes innermost, one vector
        part, ko = sch.get_loops(rf)[-2:]
        sch.reorder(ko, part)
        sch.vectorize(part)
    if lanes:
        _, inner = sch.split(col, [None, lanes])
        sch.vectorize(inner)


class RowLayerNormRule(MatchScheduleRule):
    """Target ``x86``: an ``IntLayerNorm`` PrimFunc row by row (see the module doc). None when the
    PrimFunc is not one (:func:`_match`) or a step fails on its shapes."""

    match = staticmethod(_match)
    schedule = staticmethod(_schedule)
