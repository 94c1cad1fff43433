"""x86: the integer softmax (``op.int_softmax.IntSoftmax.te``) one row at a time (target ``x86``).

Unscheduled, the softmax PrimFunc is five loop nests over the whole ``[B, h, S, S]`` tensor on
one core: the row maxima, then every ``exp`` into an int64 ``[B, h, S, S]`` buffer (8 bytes a
score: 12 MiB at batch 8, seq 128, 12 heads), then the row sums, the per-row factors and the
output, each nest streaming the tensor again. This schedule uses schedule primitives only: the
arithmetic is the TE's, unchanged (int64 where the TE says int64), so the result is
bit-identical to the unscheduled PrimFunc and to ``IntSoftmax.numpy``.

* The leading loops but the row (``b, h``) are fused and run in parallel; the rows of one
  ``(b, h)`` run in order inside the task.
* Under the row loop (``compute_at``), per row: ``softmax_max`` (reduction over the row),
  ``softmax_exp`` (the row's ``S`` int64 values), ``softmax_sum``, ``softmax_factor`` (the one
  division) and ``softmax_out``. The exp buffer shrinks to one row (``S`` int64, 4 KiB at
  ``S = 512``), allocated once per task (TVM hoists it out of the serial row loop) and read
  from L1 by the sum and the output.
* ``softmax_exp`` and ``softmax_out`` (element-wise along the row) are split by
  :data:`LANES` = 8 and vectorized explicitly (8 int64 lanes: one zmm register; LLVM's own
  vectorizer stops at 256 bits for ``-mcpu=cascadelake``). The row length ``S`` is symbolic, so
  the split leaves a last partial vector; the outer loop carries ``pragma_loop_partition_hint``
  and TVM's LoopPartition peels it off as a scalar tail: any ``S`` (1, 7, 77, ...) is exact (a
  static row shorter than a vector is left to LLVM: TVM cannot build that split). The
  two reductions (max, sum) stay serial loops, which LLVM vectorizes itself.

Masked positions are the TE's ``Select`` (a masked score never wins the max and gets ``e = 0``;
an all-masked row gives zeros), evaluated per element as before. Matching is structural: a
PrimFunc with the blocks ``softmax_max``, ``softmax_exp``, ``softmax_sum``, ``softmax_factor``
and ``softmax_out`` (the TE's block names) with the TE's spatial/reduction structure. Anything
else, or a schedule step that fails, keeps the PrimFunc unchanged (:class:`RowSoftmaxRule`
returns None).

The rule serves target ``x86`` only; x86's rule set (``x86_vnni.x86_rules``) tries it on every
fused, unscheduled PrimFunc that is neither a VNNI linear nor an attention product. The block
names are ``op.int_softmax.SOFTMAX_BLOCKS``.
"""

from __future__ import annotations

from tvm import tirx

from ..op.int_softmax import SOFTMAX_BLOCKS as BLOCKS
from .row_rule import MatchScheduleRule

MAX, EXP, SUM, FACTOR, OUT = BLOCKS
LANES = 8  # int64 lanes of one AVX-512 register (512 / 64): the explicit vector width of exp and out
PARTITION_HINT = "pragma_loop_partition_hint"  # LoopPartition: split off the vector loop's tail


def _match(sch):
    """The five blocks (by name) when ``sch``'s function is an ``IntSoftmax`` body, else None."""
    blocks = {}
    for name in BLOCKS:
        try:
            blocks[name] = sch.get_sblock(name)
        except Exception:  # noqa: BLE001 - no such block (ScheduleError): not a softmax
            return None
    kinds = {name: [int(iv.iter_type) for iv in sch.get(b).iter_vars] for name, b in blocks.items()}
    rank = len(kinds[OUT])  # 0: spatial, 2: reduction
    if rank < 2 or kinds[OUT] != [0] * rank or kinds[EXP] != [0] * rank:
        return None
    if kinds[MAX] != [0] * (rank - 1) + [2] or kinds[SUM] != kinds[MAX] or kinds[FACTOR] != [0] * (rank - 1):
        return None
    if len(sch.get_loops(blocks[OUT])) != rank:
        return None
    return blocks


def _vectorize_row(sch, block) -> None:
    """Split the block's (symbolic) row loop by ``LANES``, vectorize the inner loop, and have
    LoopPartition peel the last partial vector off as a scalar tail."""
    outer, inner = sch.split(sch.get_loops(block)[-1], [None, LANES])
    sch.annotate(outer, PARTITION_HINT, 1)
    sch.vectorize(inner)


def _schedule(sch, blocks) -> None:
    *lead, row, col = sch.get_loops(blocks[OUT])
    if lead:  # [B, h, S, S]: (b, h) in parallel, rows in order (the row buffers are per task)
        outer = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        sch.parallel(outer)
    else:  # [B, L]: the rows themselves in parallel
        sch.parallel(row)
    # producers at the row, last consumer first (compute_at needs the consumers placed)
    for name in (FACTOR, SUM, EXP, MAX):
        sch.compute_at(blocks[name], row, preserve_unit_loops=False)
    length = sch.get(col).extent  # the row length: symbolic in the model; a static row
    if not isinstance(length, tirx.IntImm) or length.value >= LANES:  # shorter than a vector stays scalar
        for name in (EXP, OUT):
            _vectorize_row(sch, blocks[name])


class RowSoftmaxRule(MatchScheduleRule):
    """Target ``x86``: an ``IntSoftmax`` PrimFunc row by row (see the module doc). None when the
    PrimFunc is not one (:func:`_match`) or a step fails on its shapes."""

    match = staticmethod(_match)
    schedule = staticmethod(_schedule)
