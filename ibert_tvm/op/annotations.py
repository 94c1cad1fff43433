"""Annotations a TE op puts on its blocks for the passes and schedules downstream.

One definition each: ``passes.pipeline`` reads :data:`OP_PATTERN_ANNOTATION`, the kernels that
need it (``schedules.x86_vnni``) write it.
"""

from __future__ import annotations

# A TE block attr: the fusion pattern of the PrimFunc holding the block (``passes.pipeline``
# copies it to the PrimFunc's ``op_pattern``). For kernels AnnotateTIROpPattern would call opaque
# (a load index using a symbolic shape variable) although they fuse like a matmul.
OP_PATTERN_ANNOTATION = "ibert_tvm.op_pattern"

# Relax/Relay ``OpPatternKind`` values (tvm/relax/op_attr_types.h):
# kElemWise 0, kBroadcast 1, kInjective 2, kCommReduce 3, kOutEWiseFusable 4, kTuple 7, kOpaque 8.
OUT_EWISE_FUSABLE = 4  # a matmul-like op whose element-wise consumers fuse into it
