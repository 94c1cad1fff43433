"""ReLU on integers: ``max(q, 0)``, the scale unchanged.

For a symmetric quantizer ``Q`` (round, clip to ``[-N, N]``), ``Q(relu(x)) = relu(Q(x))``: a
ReLU after a requantization loses nothing, so the requantization before it targets the scale of
the ReLU's *output* (calibrated on non-negative values: the whole int8 range for the positive
half). Used by DistilBERT's classifier (``pre_classifier -> ReLU -> classifier``). No constant,
no intermediate wider than the input: output dtype = input dtype.
"""

from __future__ import annotations

import numpy as np

from ._common import check_int_array, check_te_dtype

_DTYPES = ("int8", "int16", "int32")


class IntReLU:
    def numpy(self, q) -> np.ndarray:
        q = check_int_array("q", q, _DTYPES)
        return np.maximum(q, np.zeros((), q.dtype))

    def te(self, q):
        from tvm import te, tirx

        check_te_dtype("q", q, _DTYPES)
        zero = tirx.const(0, str(q.dtype))
        return te.compute(q.shape, lambda *i: tirx.max(q(*i), zero), name="int_relu")
