"""CanonicalizeViews: the importer's flatten -> matmul -> unflatten chains become matmuls on the
model's own shapes, no-op views disappear, and no value changes.

Each case is a small Relax function written the way TVM's torch importer writes it (int32, so
that "no value changes" is exact equality), run before and after the pass in the Relax VM on
random inputs of two shapes; the structure after the pass is asserted op by op.
"""

from __future__ import annotations

import numpy as np
import pytest


def _ops(func) -> list[str]:
    from tvm import relax

    return [b.value.op.name for b in func.body.blocks[0].bindings
            if isinstance(b.value, relax.Call) and hasattr(b.value.op, "name")]


def _run(mod, args):
    import tvm
    from tvm import relax

    ex = relax.build(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()


def _canon(mod):
    from ibert_tvm.passes.canonicalize_views import CanonicalizeViews

    return CanonicalizeViews()(mod)


def _sym():
    from tvm import tirx

    return tirx.Var("batch", "int64"), tirx.Var("seq", "int64")


def _linear_mod(heads_in: bool):
    """``x [b, s, 4, 2]`` (or ``[b, s, 8]``) -> reshape [b*s, 8] -> matmul W^T -> + bias -> reshape
    [b, s, 6], as the importer writes ``nn.Linear`` on a 3-D input."""
    from tvm import relax

    b, s = _sym()
    shape = [b, s, 4, 2] if heads_in else [b, s, 8]
    x = relax.Var("x", relax.TensorType(shape, "int32"))
    w = relax.Var("w", relax.TensorType([6, 8], "int32"))
    bias = relax.Var("bias", relax.TensorType([6], "int32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w, bias]):
        with bb.dataflow():
            flat = bb.emit(relax.op.reshape(x, [b * s, 8]))
            wt = bb.emit(relax.op.permute_dims(w, [1, 0]))
            mm = bb.emit(relax.op.matmul(flat, wt, out_dtype="int32"))
            add = bb.emit(relax.op.add(bias, mm))
            out = bb.emit_output(relax.op.reshape(add, [b, s, 6]))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("heads_in", [False, True], ids=["3d", "heads"])
def test_linear_runs_on_the_unflattened_input(heads_in):
    mod = _linear_mod(heads_in)
    out = _canon(mod)
    ops = _ops(out["main"])
    assert ops.count("relax.matmul") == 1
    mm = next(b.value for b in out["main"].body.blocks[0].bindings if _ops_one(b) == "relax.matmul")
    assert mm.args[0].ty.ndim == 3 and mm.ty.ndim == 3  # [b, s, 8] x [8, 6] -> [b, s, 6]
    # heads: one reshape [b, s, 4, 2] -> [b, s, 8] stays; no reshape after the matmul
    assert ops.count("relax.reshape") == (1 if heads_in else 0)
    rng = np.random.default_rng(0)
    for bsz, seq in [(1, 1), (3, 5)]:
        shape = (bsz, seq, 4, 2) if heads_in else (bsz, seq, 8)
        args = [rng.integers(-100, 100, shape).astype("int32"), rng.integers(-100, 100, (6, 8)).astype("int32"),
                rng.integers(-100, 100, (6,)).astype("int32")]
        np.testing.assert_array_equal(_run(out, args), _run(mod, args))


def _ops_one(binding):
    from tvm import relax

    v = binding.value
    return v.op.name if isinstance(v, relax.Call) and hasattr(v.op, "name") else None


def test_batched_matmul_keeps_its_heads():
    """expand -> reshape [b*h, s, d] -> bmm -> reshape [b, h, s, s] (torch's 4-D matmul) becomes one
    4-D matmul; the composed transposes of K collapse into one ``permute_dims``."""
    from tvm import relax

    b, s = _sym()
    q = relax.Var("q", relax.TensorType([b, s, 3, 4], "int32"))
    k = relax.Var("k", relax.TensorType([b, s, 3, 4], "int32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [q, k]):
        with bb.dataflow():
            qh = bb.emit(relax.op.permute_dims(q, [0, 2, 1, 3]))  # [b, 3, s, 4]
            kh = bb.emit(relax.op.permute_dims(k, [0, 2, 1, 3]))
            kt = bb.emit(relax.op.permute_dims(kh, [0, 1, 3, 2]))  # [b, 3, 4, s]
            qe = bb.emit(relax.op.broadcast_to(qh, [b, 3, s, 4]))
            q3 = bb.emit(relax.op.reshape(qe, [b * 3, s, 4]))
            ke = bb.emit(relax.op.broadcast_to(kt, [b, 3, 4, s]))
            k3 = bb.emit(relax.op.reshape(ke, [b * 3, 4, s]))
            mm = bb.emit(relax.op.matmul(q3, k3, out_dtype="int32"))
            out = bb.emit_output(relax.op.reshape(mm, [b, 3, s, s]))
        bb.emit_func_output(out)
    mod = bb.get()
    out = _canon(mod)
    ops = _ops(out["main"])
    assert ops == ["relax.permute_dims", "relax.permute_dims", "relax.matmul"], ops
    perms = [b.value for b in out["main"].body.blocks[0].bindings if _ops_one(b) == "relax.permute_dims"]
    assert sorted([int(a) for a in p.attrs.axes] for p in perms) == [[0, 2, 1, 3], [0, 2, 3, 1]]
    rng = np.random.default_rng(1)
    for bsz, seq in [(1, 1), (2, 7)]:
        args = [rng.integers(-50, 50, (bsz, seq, 3, 4)).astype("int32") for _ in range(2)]
        np.testing.assert_array_equal(_run(out, args), _run(mod, args))


def test_gather_of_flattened_ids_and_no_op_views():
    """take(E, reshape(astype(ids), [b*s])) -> reshape [b, s, D] (the importer's embedding lookup)
    becomes take(E, ids); a reshape / broadcast / astype / permute to what the value already is goes."""
    from tvm import relax

    b, s = _sym()
    ids = relax.Var("ids", relax.TensorType([b, s], "int32"))
    table = relax.Var("table", relax.TensorType([10, 4], "int32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [ids, table]):
        with bb.dataflow():
            i32 = bb.emit(relax.op.astype(ids, "int32"))
            flat = bb.emit(relax.op.reshape(i32, [b * s]))
            rows = bb.emit(relax.op.take(table, flat, axis=0))
            x = bb.emit(relax.op.reshape(rows, [b, s, 4]))
            x = bb.emit(relax.op.broadcast_to(x, [b, s, 4]))
            x = bb.emit(relax.op.permute_dims(bb.emit(relax.op.permute_dims(x, [1, 0, 2])), [1, 0, 2]))
            out = bb.emit_output(relax.op.add(x, x))
        bb.emit_func_output(out)
    mod = bb.get()
    out = _canon(mod)
    assert _ops(out["main"]) == ["relax.take", "relax.add"]
    rng = np.random.default_rng(2)
    args = [rng.integers(0, 10, (2, 3)).astype("int32"), rng.integers(-9, 9, (10, 4)).astype("int32")]
    np.testing.assert_array_equal(_run(out, args), _run(mod, args))


def test_a_reshape_that_is_not_a_flattening_stays():
    """[b, s, 8] viewed as [b*s*2, 4] is not rows x features of the linear: nothing is rewritten."""
    from tvm import relax

    b, s = _sym()
    x = relax.Var("x", relax.TensorType([b, s, 8], "int32"))
    w = relax.Var("w", relax.TensorType([4, 6], "int32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            flat = bb.emit(relax.op.reshape(x, [b * s * 2, 4]))
            out = bb.emit_output(relax.op.matmul(flat, w, out_dtype="int32"))
        bb.emit_func_output(out)
    mod = bb.get()
    out = _canon(mod)
    assert _ops(out["main"]) == ["relax.reshape", "relax.matmul"]
    mm = out["main"].body.blocks[0].bindings[-1].value
    assert mm.args[0].ty.ndim == 2
