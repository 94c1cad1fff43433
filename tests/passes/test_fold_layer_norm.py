"""FoldLayerNorm: I-BERT's hand-written float LayerNorm chain -> ``nn.layer_norm`` (Before/Expected)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from frontend_support import imported

H = 8


def _module(body):
    """main(x [batch, seq, H], w [H], b [H]) -> body(x, w, b), one binding per op."""
    bb = relax.BlockBuilder()
    batch, seq = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    x = relax.Var("x", relax.TensorType([batch, seq, H], "float32"))
    w = relax.Var("ln.weight", relax.TensorType([H], "float32"))
    b = relax.Var("ln.bias", relax.TensorType([H], "float32"))
    with bb.function("main", [x, w, b]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x, w, b))
        bb.emit_func_output(out)
    return bb.get()


def _chain(eps=1e-12, axis=2, two=2.0):
    def body(bb, x, w, b):
        op, f32 = relax.op, "float32"
        mean = bb.emit(op.mean(x, axis=[axis], keepdims=True))
        y = bb.emit(op.subtract(x, mean))
        var = bb.emit(op.mean(bb.emit(op.power(y, relax.const(two, f32))), axis=[axis], keepdims=True))
        std = bb.emit(op.sqrt(bb.emit(op.add(relax.const(eps, f32), var))))  # eps + var, as I-BERT writes it
        return op.add(bb.emit(op.multiply(bb.emit(op.divide(y, std)), w)), b)

    return body


def test_chain_becomes_layer_norm():
    from ibert_tvm.passes.fold_layer_norm import FoldLayerNorm

    def expected(bb, x, w, b):
        return relax.op.nn.layer_norm(x, w, b, axes=[-1], epsilon=float(np.float32(1e-12)))  # eps as float32 holds it

    tvm.ir.assert_structural_equal(FoldLayerNorm()(_module(_chain())), _module(expected))


@pytest.mark.parametrize("kw", [dict(axis=1), dict(two=3.0)])
def test_other_chains_are_left_alone(kw):
    """Normalising over another axis, or a cube instead of a square, is not a LayerNorm."""
    from ibert_tvm.passes.fold_layer_norm import FoldLayerNorm

    before = _module(_chain(**kw))
    tvm.ir.assert_structural_equal(FoldLayerNorm()(before), before)


def test_ibert_import_gets_every_layer_norm(tiny_factory):
    """Tiny IBertModel: 0 ``nn.layer_norm`` as imported, 1 + 2 per layer after the fold."""
    im, folded = imported(str(tiny_factory("IBertModel")))
    assert im.mod.script().count("R.nn.layer_norm(") == 0
    assert folded.script().count("R.nn.layer_norm(") == 1 + 2 * 2
    assert "R.sqrt(" not in folded.script() and "R.mean(" not in folded.script()
