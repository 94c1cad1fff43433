"""ExposeQuantizationPoints on a hand-built graph, against numpy: per-channel max |x| over real
tokens only, for token rows ``[batch * seq, C]`` and ``[batch, seq, C]``. (Sequence rows
``[batch, C]``, the classification head, are checked against ``collect_ranges`` in
tests/frontend/test_importer.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

V, H, N = 6, 4, 3
PAD = 0


def _graph():
    """main(input_ids, attention_mask, emb.weight [V, H], ln.weight, ln.bias [H],
    out.weight [N, H], out.bias [N]) -> first-token (out(LN(emb[ids])))  [batch, N]; the linear
    runs on token rows [batch * seq, H] (as the importer's graphs do)."""
    op = relax.op
    bb = relax.BlockBuilder()
    b, s = tirx.Var("batch", "int64"), tirx.Var("seq", "int64")
    ids = relax.Var("input_ids", relax.TensorType([b, s], "int32"))
    mask = relax.Var("attention_mask", relax.TensorType([b, s], "int32"))
    weights = [relax.Var(n, relax.TensorType(shape, "float32")) for n, shape in (
        ("emb.weight", [V, H]), ("ln.weight", [H]), ("ln.bias", [H]), ("out.weight", [N, H]), ("out.bias", [N]))]
    table, gamma, beta, w, bias = weights
    with bb.function("main", [ids, mask, *weights], attrs={"num_input": 2}):
        with bb.dataflow():
            flat = bb.emit(op.reshape(ids, relax.ShapeExpr([b * s])))
            x = bb.emit(op.reshape(bb.emit(op.take(table, flat, axis=0)), relax.ShapeExpr([b, s, H])))
            y = bb.emit(op.nn.layer_norm(x, gamma, beta, axes=[-1]))
            rows = bb.emit(op.reshape(y, relax.ShapeExpr([b * s, H])))
            z = bb.emit(op.add(bias, bb.emit(op.matmul(rows, bb.emit(op.permute_dims(w, [1, 0]))))))
            tokens = bb.emit(op.reshape(z, relax.ShapeExpr([b, s, N])))
            first = bb.emit(op.take(tokens, relax.const(0, "int64"), axis=1))
            out = bb.emit_output(first)
        bb.emit_func_output(out)
    return bb.get()


def _numpy(ids, mask, table, gamma, beta, w, bias):
    x = table[ids]
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * gamma + beta
    z = y @ w.T + bias
    real = mask.astype(bool)
    return {"ln:in": np.abs(x[real]).max(0), "ln:out": np.abs(y[real]).max(0), "out:in": np.abs(y[real]).max(0),
            "out:out": np.abs(z[real]).max(0), "first": z[:, 0]}


def test_points_of_the_hand_built_graph():
    from ibert_tvm.passes.find_quantization_points import find_quantization_points

    got = [(p.name, p.kind, p.aliases) for p in find_quantization_points(_graph())]
    assert got == [("emb:out", "residual", ("emb:out", "ln:in")),  # one gather: it is the LayerNorm's input
                   ("ln:out", "act_channel", ("ln:out", "out:in")),
                   ("out:out", "logits", ("out:out",))]  # returned through a reshape and a one-token take


def test_ranges_over_real_tokens_only():
    from ibert_tvm.passes.expose_quantization_points import ExposeQuantizationPoints

    rng = np.random.default_rng(0)
    table = rng.normal(size=(V, H)).astype(np.float32)
    table[PAD] = 1000.0  # a padding row that would dominate every range it entered
    weights = [table, rng.normal(1, 0.3, H).astype(np.float32), rng.normal(0, 0.2, H).astype(np.float32),
               rng.normal(size=(N, H)).astype(np.float32), rng.normal(size=N).astype(np.float32)]
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=np.int32)
    ids = np.where(mask == 1, rng.integers(1, V, mask.shape), PAD).astype(np.int32)

    names = ["ln:in", "out:out", "ln:out", "out:in"]  # an alias names its point too
    mod = ExposeQuantizationPoints(names)(_graph())
    assert list(mod["main"].attrs["quantization_points"]) == names
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target("llvm")), tvm.cpu())
    out, ranges = vm["main"](*(tvm.runtime.tensor(a) for a in (ids, mask, *weights)))
    want = _numpy(ids, mask, *weights)
    np.testing.assert_allclose(out.numpy(), want["first"], rtol=1e-5, atol=1e-5)
    for name, r in zip(names, ranges, strict=True):
        assert r.numpy().shape == want[name].shape
        np.testing.assert_allclose(r.numpy(), want[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert ranges[0].numpy().max() < 100  # the padding row stayed out


def test_unknown_point_name_is_an_error():
    """Raised inside a Python pass, the IBertTVMError reaches the caller through TVM's FFI as itself
    (``ibert_tvm.passes`` registers it), so the CLI prints it as one ``error:`` line."""
    from ibert_tvm.errors import IBertTVMError
    from ibert_tvm.passes.expose_quantization_points import ExposeQuantizationPoints

    with pytest.raises(IBertTVMError, match=r"no quantization point named \['ln:mid'\]"):
        ExposeQuantizationPoints(["ln:in", "ln:mid"])(_graph())
