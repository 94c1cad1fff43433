"""LowerToInteger + EliminateFloat (``frontend.lower.lower_to_integer``): the imported float graph
lowered to integers is bit-identical to today's hand-built integer model.

(a) On the five tiny architectures, at batch 1-8 x sequence 1-128 with random right padding, the
    lowered module built by ``passes.pipeline.build`` for llvm and run in the Relax VM returns
    exactly ``run_golden``'s int32 (which tests/model/test_end_to_end proves equal to today's
    compiled module).
(b) ``compile`` (which now takes this path) against the hand-built ``IntBertModel`` it replaced: equal outputs
    on padded batches, and the run-time tensors are today's, name for name, byte for byte.
(c) The verifier finds zero float in the lowered module and in its code.
(d) What cannot be lowered is an error naming the op and its binding: an unknown float op on an
    activation, a score scale the plan does not fold, a quantized model of another checkpoint, a
    float that stays live after lowering.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_batch
from frontend_support import ARCHS, imported
from ibert_tvm.errors import IBertTVMError

SHAPES = [(1, 1), (1, 128), (2, 7), (3, 33), (8, 16), (5, 64), (8, 128)]


_BUILT: dict = {}


def _built(model_dir: str, qm):
    """-> (mod, names, arrays, vm, module report, code report): ``model_dir`` lowered with ``qm``
    and built, once per session."""
    key = (model_dir, id(qm))
    if key not in _BUILT:
        _BUILT[key] = (qm, _build(model_dir, qm))  # qm kept alive: its id stays unique
    return _BUILT[key][1]


def _build(model_dir: str, qm):
    import tvm
    from tvm import relax

    from ibert_tvm.frontend.lower import lower_to_integer
    from ibert_tvm.passes.pipeline import build

    im, _ = imported(model_dir)
    mod, names, arrays = lower_to_integer(im, qm)
    ex, mod_report, code_report = build(mod, tvm.target.Target("llvm"))
    return mod, names, arrays, relax.VirtualMachine(ex, tvm.cpu()), mod_report, code_report


def lowered(arch, tiny_factory, quantized_factory):
    qm, _ = quantized_factory(arch)
    return _built(str(tiny_factory(arch)), qm)


def run(built, inputs) -> np.ndarray:
    import tvm

    from ibert_tvm.frontend.importer import INPUTS

    _, names, arrays, vm, _, _ = built
    args = [tvm.runtime.tensor(inputs[n]) for n in INPUTS] + [tvm.runtime.tensor(arrays[n]) for n in names]
    return vm["main"](*args).numpy()


def _batch(rng, qm, batch, seq):
    d = qm.dims
    return random_batch(rng, batch, seq, family=d["family"], pad_id=d["pad_id"], type_vocab=d["type_vocab"])


@pytest.mark.parametrize("arch", ARCHS)
def test_lowered_equals_golden(arch, tiny_factory, quantized_factory):
    """(a) exact int32 equality with today's golden executor at every shape, padding included."""
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan

    qm, _ = quantized_factory(arch)
    plan = ModelPlan(qm)
    built = lowered(arch, tiny_factory, quantized_factory)
    rng = np.random.default_rng(12)
    padded = 0
    for batch, seq in SHAPES:
        inputs = _batch(rng, qm, batch, seq)
        padded += int((inputs["attention_mask"] == 0).any(axis=1).sum())
        got, want = run(built, inputs), run_golden(plan, **inputs)
        assert got.dtype == np.int32 and want.dtype == np.int32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=f"{arch} batch={batch} seq={seq}")
    assert padded >= 10  # padded rows really were compared (seen: 17 of the 28 rows)


_HAND_BUILT: dict = {}


def hand_built(qm):
    """The hand-built ``IntBertModel`` (the path ``compile`` took before issue 12), built for llvm:
    -> (vm, param names, arrays)."""
    import tvm
    from tvm import relax

    from hand_built import IntBertModel
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.passes.pipeline import build

    if id(qm) not in _HAND_BUILT:
        model = IntBertModel(ModelPlan(qm))
        mod, names = model.export()
        ex, _, _ = build(mod, tvm.target.Target("llvm"))
        _HAND_BUILT[id(qm)] = (qm, (relax.VirtualMachine(ex, tvm.cpu()), names, model.arrays()))
    return _HAND_BUILT[id(qm)][1]


@pytest.mark.parametrize("arch", ["BertModel", "RobertaForSequenceClassification"])
def test_compile_equals_the_hand_built_model(arch, tiny_factory, quantized_factory, compiled_factory):
    """(b) ``compile`` (import + passes) against the hand-built integer model it replaced: the same
    run-time tensors, name for name and byte for byte, and the same outputs on padded batches."""
    import json

    import tvm

    from ibert_tvm.deploy.runtime import CompiledModel
    from ibert_tvm.frontend.importer import INPUTS

    qm, _ = quantized_factory(arch)
    out = compiled_factory(arch)
    vm, names, arrays = hand_built(qm)
    compiled = json.loads((out / "manifest.json").read_text())["params"]
    with np.load(out / "params.npz") as npz:
        compiled_arrays = {n: npz[f"p{i:04d}"] for i, n in enumerate(compiled)}
    # a classifier never reads the mean-pool requantization ModelPlan makes (hand-built: unused params)
    unread = {n for n in names if n.startswith("pooler.")} if qm.dims["head"] == "classifier" else set()
    # compile runs each layer's query, key and value as one linear (ModelPlan.fused_qkv): its tensors
    # are the hand-built model's three stacked along the output channels, in that order
    parts = ("query", "key", "value")
    separate = {n for n in names if any(f".attention.self.{p}." in n for p in parts)}
    fused = {n.replace(".attention.self.query.", ".attention.self.qkv.") for n in separate if ".query." in n}
    assert fused and sorted(compiled) == sorted((set(names) - unread - separate) | fused)
    for n in compiled:
        if n in fused:
            want = np.concatenate([arrays[n.replace(".qkv.", f".{p}.")] for p in parts])
        else:
            want = arrays[n]
        assert compiled_arrays[n].dtype == want.dtype, n
        np.testing.assert_array_equal(compiled_arrays[n], want, err_msg=n)
    model = CompiledModel(out)
    rng = np.random.default_rng(5)
    for batch, seq in [(1, 1), (3, 33), (8, 128)]:
        inputs = _batch(rng, qm, batch, seq)
        want = vm["forward"](*[tvm.runtime.tensor(inputs[n]) for n in INPUTS],
                             *[tvm.runtime.tensor(arrays[n]) for n in names]).numpy()
        np.testing.assert_array_equal(model.run_ids(inputs), want, err_msg=f"{batch}x{seq}")


def test_lowered_is_integer_only(tiny_factory, quantized_factory):
    """(c) no float left: in main after EliminateFloat, in the lowered module, in the code."""
    from tvm import relax

    mod, names, _, _, mod_report, code_report = lowered("BertForSequenceClassification", tiny_factory, quantized_factory)
    assert mod_report.float_ops == 0 and code_report.float_ops == 0
    assert not any(d.startswith(("float", "bfloat")) for d in mod_report.dtypes)
    main = mod["main"]
    assert [p.name for p in main.params] == ["input_ids", "attention_mask", "token_type_ids", "position_ids", *names]
    assert "float" not in main.script()
    assert isinstance(main.ret_ty, relax.TensorType) and main.ret_ty.dtype == "int32"


def test_x86_vnni_strategy_lowers_bit_identically(tiny_factory, quantized_factory):
    """The x86 target's linear strategy (VNNI-packed weights, compensated bias, its schedule pass):
    the lowered module reads ``arrays_for(x86)`` and still equals golden."""
    import tvm
    from tvm import relax

    from ibert_tvm.frontend.lower import lower_to_integer
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.passes.pipeline import build
    from ibert_tvm.schedules import linear_strategy
    from ibert_tvm.schedules import serial_when_small as sws
    from ibert_tvm.targets import get_target

    arch = "BertForSequenceClassification"
    im, _ = imported(str(tiny_factory(arch)))
    qm, _ = quantized_factory(arch)
    plan, st = ModelPlan(qm), linear_strategy("x86")
    mod, names, arrays = lower_to_integer(im, qm, strategy=st)
    want_arrays = plan.arrays_for(st)
    # the separate q, k, v tensors of a layer with a fused qkv linear are the golden executor's only
    separate = tuple(f"{p.name}." for L in plan.layers if L.qkv is not None for p in (L.q, L.k, L.v))
    assert separate and st.name == "x86-vnni"
    assert set(names) == set(want_arrays) - {n for n in want_arrays if n.startswith(("pooler.", *separate))}
    extra: dict = {}  # x86: the serial/parallel threshold table, forward's last parameter
    ex, mod_report, code_report = build(mod, get_target("x86").tvm_target(), target_name="x86", extra_params=extra)
    assert mod_report.float_ops == 0 and code_report.float_ops == 0 and list(extra) == [sws.TABLE_PARAM]
    built = (mod, [*names, *extra], {**arrays, **extra}, relax.VirtualMachine(ex, tvm.cpu()), mod_report, code_report)
    rng = np.random.default_rng(8)
    for batch, seq in [(1, 1), (3, 33), (8, 128)]:
        inputs = _batch(rng, qm, batch, seq)
        np.testing.assert_array_equal(run(built, inputs), run_golden(plan, **inputs), err_msg=f"{batch}x{seq}")


# -- errors ------------------------------------------------------------------------------------
def _rewritten(mod, op_name, arity, make):
    """``mod`` with every call of ``op_name`` (``arity`` arguments) replaced by ``make(call)``."""
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    out = mod.clone()
    out["main"] = rewrite_call(is_op(op_name)(*[wildcard() for _ in range(arity)]),
                               lambda call, _m: make(call), mod["main"])
    return out


def _lower(mod, qm):
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.passes.lower_to_integer import LowerToInteger

    return LowerToInteger(ModelPlan(qm))(mod)


def test_unlowerable_op_names_op_and_binding(tiny_factory, quantized_factory):
    """(d) a float op no rule lowers (a sigmoid where GELU was) is refused, naming it."""
    from tvm import relax

    _, folded = imported(str(tiny_factory("BertModel")))
    qm, _ = quantized_factory("BertModel")
    bad = _rewritten(folded, "relax.nn.gelu", 1, lambda call: relax.op.sigmoid(call.args[0]))
    with pytest.raises(IBertTVMError, match=r"LowerToInteger: cannot lower relax\.sigmoid at binding lv\d+ = "
                                        r"R\.sigmoid\(lv\d+\): no rule lowers it"):
        _lower(bad, qm)


def test_score_scale_must_match_the_plan(tiny_factory, quantized_factory):
    """(d) the plan folds 1/sqrt(d) into i-softmax; a graph scaling by anything else is refused."""
    from tvm import relax

    _, folded = imported(str(tiny_factory("BertModel")))
    qm, _ = quantized_factory("BertModel")
    bad = _rewritten(folded, "relax.multiply", 2,
                     lambda call: relax.op.multiply(call.args[0], relax.const(0.5, "float32"))
                     if call.args[1].ty.ndim == 0 else call)
    with pytest.raises(IBertTVMError, match=r"cannot lower relax\.multiply .*scores of head size 8 scaled by 0\.5, the plan folds "
                                        r"1/sqrt\(8\)"):
        _lower(bad, qm)


def test_quantized_model_of_another_checkpoint_is_refused(tiny_factory, quantized_factory):
    """(d) lower_to_integer checks the source hash; LowerToInteger itself the tensor shapes."""
    from ibert_tvm.frontend.lower import lower_to_integer

    im, folded = imported(str(tiny_factory("BertModel")))
    qm, _ = quantized_factory("RobertaModel")
    with pytest.raises(IBertTVMError, match="calibrated from .* not from"):
        lower_to_integer(im, qm)
    # BERT's graph gathers token types before positions: RoBERTa has 1 type row, BERT 2
    with pytest.raises(IBertTVMError, match=r"cannot lower relax\.take at binding lv\d+ = R\.take\(embeddings_token_type"
                                        r".*table embeddings\.token_type_embeddings is \[2, 32\] in the graph, "
                                        r"\[1, 32\] in the quantized model"):
        _lower(folded, qm)


def test_eliminate_float_drops_dead_float():
    """EliminateFloat: Before (a dead float mask chain) -> Expected (gone), structurally."""
    import tvm
    from tvm.script import relax as R

    from ibert_tvm.passes.eliminate_float import EliminateFloat

    @tvm.script.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 3), "int32"), mask: R.Tensor((2, 3), "int32")) -> R.Tensor((2, 3), "int32"):
            with R.dataflow():
                keep = R.astype(mask, "bool")
                neg = R.where(keep, R.const(0.0, "float32"), R.const(-3.4e38, "float32"))
                y = R.add(x, mask)
                R.output(y)
            return y

    @tvm.script.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 3), "int32"), mask: R.Tensor((2, 3), "int32")) -> R.Tensor((2, 3), "int32"):
            with R.dataflow():
                y = R.add(x, mask)
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(EliminateFloat()(Before), Expected)


def test_eliminate_float_refuses_live_float():
    """A float value an integer result still reads is an error naming op and binding."""
    import tvm
    from tvm.script import relax as R

    from ibert_tvm.passes.eliminate_float import EliminateFloat

    @tvm.script.ir_module
    class Live:
        @R.function
        def main(x: R.Tensor((2, 3), "int32")) -> R.Tensor((2, 3), "int32"):
            with R.dataflow():
                f = R.astype(x, "float32")
                g = R.log(f)
                y = R.astype(g, "int32")
                R.output(y)
            return y

    with pytest.raises(IBertTVMError, match=r"EliminateFloat: main still computes in float after lowering: "
                                        r"relax\.astype at binding f = R\.astype\(x, dtype=\"float32\"\)"):
        EliminateFloat()(Live)


@pytest.mark.slow
def test_minilm_lowered_equals_golden():
    """The real all-MiniLM-L6-v2 (6 layers, hidden 384), calibrated on 64 sentences: the lowered
    module equals golden on padded batches of real and random tokens (~2 minutes)."""
    import tvm
    from tvm import relax

    from ibert_tvm.datasets import default_calibration_sentences, stsb
    from ibert_tvm.support.tokenize import Tokenizer
    from ibert_tvm.frontend.lower import lower_to_integer
    from ibert_tvm.model.golden import run_golden
    from ibert_tvm.model.hf_loader import load_checkpoint
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.passes.pipeline import build
    from ibert_tvm.quantization.calibrate import calibrate

    ckpt = load_checkpoint("default")
    qm = calibrate(ckpt, default_calibration_sentences(64))
    mod, names, arrays = lower_to_integer(ckpt, qm)
    ex, mod_report, code_report = build(mod, tvm.target.Target("llvm"))
    assert mod_report.float_ops == 0 and code_report.float_ops == 0
    built = (mod, names, arrays, relax.VirtualMachine(ex, tvm.cpu()), mod_report, code_report)
    plan = ModelPlan(qm)
    d = qm.dims
    tok = Tokenizer(qm.tokenizer_json, d["max_seq"], d["family"], d["pad_id"])
    enc = tok([p.sentence1 for p in stsb("dev")[:16]])
    assert enc["attention_mask"].min() == 0
    np.testing.assert_array_equal(run(built, enc), run_golden(plan, **enc))
    rng = np.random.default_rng(3)
    for batch, seq in [(1, 1), (4, 37), (2, 128)]:
        inputs = _batch(rng, qm, batch, seq)
        np.testing.assert_array_equal(run(built, inputs), run_golden(plan, **inputs), err_msg=f"{batch}x{seq}")


def test_compile_fuses_into_the_hand_built_kernels(tiny_factory, quantized_factory):
    """With CanonicalizeViews, compile's fused PrimFuncs (what the schedules and the tuning
    database see) are the hand-built model's, structure for structure: the linears fuse with their
    requantization, GELU and residual add as before, and the attention products keep their 4-D
    ``[batch, heads, seq, d]`` shape. The differences: q, k and v run as one linear
    (``ModelPlan.fused_qkv``), and V's transpose is composed into a single ``permute_dims`` where
    the hand-built model fused two."""
    import tvm
    import tvm_ffi

    from hand_built import IntBertModel
    from ibert_tvm.frontend.lower import integer_module
    from ibert_tvm.model.plan import ModelPlan
    from ibert_tvm.passes.pipeline import fuse
    from ibert_tvm.schedules import linear_strategy
    from ibert_tvm.targets import get_target

    qm, _ = quantized_factory("BertModel")
    st = linear_strategy("x86")
    new, _, _ = integer_module(qm, st, model=imported(str(tiny_factory("BertModel")))[0])
    old, _ = IntBertModel(ModelPlan(qm), st).export()

    def prims(mod):
        with get_target("x86").tvm_target():
            fused = fuse(mod)
        return {tvm_ffi.structural_hash(f, map_free_vars=True): gv.name_hint
                for gv, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}

    pn, po = prims(new), prims(old)
    only_new = sorted(pn[h] for h in set(pn) - set(po))
    only_old = sorted(po[h] for h in set(po) - set(pn))
    # q, k and v: one [3H, H] linear (its kernel: fused_linear_requantize of other shapes), whose
    # output is viewed as [batch, seq, 3 heads, d] (reshape) and each part's heads sliced out in
    # its head transpose (fused_strided_slice*_transpose*), where the hand-built model had three
    # [H, H] linears, [batch, seq, heads, d] views and plain transposes
    assert only_new == ["fused_linear_requantize", "fused_strided_slice1_transpose",
                        "fused_strided_slice2_transpose1", "fused_strided_slice_transpose", "reshape"], only_new
    assert only_old == ["fused_linear_requantize", "fused_transpose_transpose1", "reshape", "transpose"], only_old
    assert any(n.startswith("fused_linear") and "int_gelu" in n for n in pn.values())
