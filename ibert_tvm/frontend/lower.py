"""The imported float model lowered to the integer model: the front half of ``compile``.

    HF dir / HFCheckpoint / ImportedModel, QuantizedModel (``qm``: duck-typed, so that frontend/
                                        stays below quantization/, which calibrates on its points)
      -> importer.import_model          float Relax, HF weight names (skipped for an ImportedModel)
      -> passes.FoldLayerNorm           hand-written float LayerNorm -> nn.layer_norm
      -> passes.CanonicalizeViews       the importer's flatten/matmul/unflatten chains undone
      -> passes.LowerToInteger(plan)    every float op on an activation -> an op plan's te()
      -> passes.CanonicalizeViews       the lowering's own view chains merged
      -> passes.EliminateFloat          the dead mask arithmetic dropped; live float refused
      -> passes.OutlineSharedLayer      shared layers (ALBERT) only: one layer function called L times
    -> (IRModule, param names, arrays)  ready for passes.pipeline.build (which runs
                                        VerifyIntegerOnly after TVM's lowering)

:func:`lowering_passes` is that sequence as one ``tvm.transform.Sequential`` (with a
:class:`~ibert_tvm.passes.dump_ir.DumpIR` after each pass when given a ``dump_dir``).

The plan is today's ``ModelPlan(qm)``: the op plans and their integer constants are the ones the
hand-built ``IntBertModel`` uses, so the compiled outputs are bit-identical to today's path
(tests/passes/test_lower_to_integer.py); what changed is where the graph comes from.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import IBertTVMError
from ..model.hf_loader import HFCheckpoint
from ..schedules import GENERIC, LinearStrategy
from .importer import INPUTS, ImportedModel, import_model


def lowering_passes(plan, strategy: LinearStrategy = GENERIC, *, dump_dir: str | os.PathLike | None = None):
    """FoldLayerNorm, LowerToInteger(plan, strategy), EliminateFloat as one Sequential."""
    import tvm

    from ..passes.canonicalize_views import CanonicalizeViews
    from ..passes.dump_ir import DumpIR
    from ..passes.eliminate_float import EliminateFloat
    from ..passes.fold_layer_norm import FoldLayerNorm
    from ..passes.lower_to_integer import LowerToInteger

    passes = [("0_import", None), ("1_fold_layer_norm", FoldLayerNorm()), ("2_canonicalize_views", CanonicalizeViews()),
              ("3_lower_to_integer", LowerToInteger(plan, strategy)), ("4_canonicalize_views", CanonicalizeViews()),
              ("5_eliminate_float", EliminateFloat())]
    if getattr(plan, "shared_layers", False) and plan.n_layers > 1:  # ALBERT: one layer function, called L times
        from ..passes.outline_shared_layer import OutlineSharedLayer

        end = plan.layers[0].prefix + "output.LayerNorm.g"  # read by the last binding of each application
        passes.append(("6_outline_shared_layer", OutlineSharedLayer(end, plan.n_layers)))
    seq = []
    for name, p in passes:
        if p is not None:
            seq.append(p)
        if dump_dir is not None:
            seq.append(DumpIR(dump_dir, name))
    return tvm.transform.Sequential(seq, name="ibert_tvm.LowerImportedToInteger")


def lower_to_integer(
    model: HFCheckpoint | ImportedModel | str | os.PathLike,
    qm,
    *,
    strategy: LinearStrategy = GENERIC,
    dump_dir: str | os.PathLike | None = None,
):
    """-> ``(mod, names, arrays)``: the integer Relax module of ``model`` with the scales and
    integer tensors of ``qm``.

    ``mod["main"]`` takes the token inputs of the model's ``forward`` among ``input_ids,
    attention_mask, token_type_ids, position_ids`` (int32 ``[batch, seq]``, in that order: all
    four for BERT/RoBERTa/ELECTRA, no ``token_type_ids`` for DistilBERT and MPNet; :func:`model_inputs`)
    and then one integer tensor per name of ``names``; ``arrays[name]`` is
    its value (``ModelPlan(qm).arrays_for(strategy)``). It returns int32 ``[batch, labels]`` logits
    or the ``[batch, H]`` pooled embedding (scale ``ModelPlan(qm).out_scale``).
    ``IBertTVMError`` when ``qm`` was not calibrated from ``model`` or the graph has an op that
    cannot be lowered."""
    from ..model.plan import ModelPlan

    im = model if isinstance(model, ImportedModel) else import_model(model)
    if im.ckpt.model_hash != qm.source.get("model_hash"):
        raise IBertTVMError(f"the quantized model was calibrated from {qm.source.get('path')} "
                            f"(sha256 {qm.source.get('model_hash')}), not from {im.ckpt.path} (sha256 {im.ckpt.model_hash})")
    plan = ModelPlan(qm)
    mod = lowering_passes(plan, strategy, dump_dir=dump_dir)(im.mod)
    main = mod["main"]
    names = [str(n) for n in main.attrs["ibert_param_names"]]
    mod["main"] = _model_inputs(main)
    arrays = plan.arrays_for(strategy)
    return mod, names, {n: np.asarray(arrays[n]) for n in names}


def source_model(qm, model: str | os.PathLike | None = None, *, where: str = "q/") -> str:
    """The HF directory ``compile`` imports for ``qm``: ``model`` when given, else the path ``qm`` was
    calibrated from (``quantization.json``'s ``source.path``). Its sha256 is checked against the
    artifact's by :func:`lower_to_integer`."""
    if model is not None:
        return str(model)
    path = qm.source.get("path")
    if not path or not os.path.isdir(path):
        raise IBertTVMError(
            f"{where}/quantization.json: source.path {path!r} is not a directory: compile imports the float "
            f"model the artifact was calibrated from; pass --model DIR (a checkpoint with sha256 "
            f"{qm.source.get('model_hash')})")
    return str(path)


def integer_module(
    qm,
    strategy: LinearStrategy = GENERIC,
    *,
    model: HFCheckpoint | ImportedModel | str | os.PathLike | None = None,
    where: str = "q/",
    dump_dir: str | os.PathLike | None = None,
):
    """-> ``(mod, names, arrays)``: what ``compile`` builds. :func:`lower_to_integer` of the source
    model of ``qm``, with its entry function named ``forward`` (the name the runtime, the board
    runner and RPC call) and no upper bounds on ``batch``/``seq``: those are the export's tracing
    ranges, not limits of the compiled model (``seq`` is checked against ``max_seq`` at run time;
    bounded, memory planning would reserve the largest batch on every call)."""
    import tvm

    if not isinstance(model, (HFCheckpoint, ImportedModel)):
        model = source_model(qm, model, where=where)
    mod, names, arrays = lower_to_integer(model, qm, strategy=strategy, dump_dir=dump_dir)
    main = mod["main"]
    for k in ("tir_var_upper_bound", "tir_var_lower_bound"):
        if k in main.attrs:
            main = main.without_attr(k)
    funcs = {gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"}
    funcs[tvm.ir.GlobalVar("forward")] = main.with_attr("global_symbol", "forward")
    return tvm.IRModule(funcs, attrs=mod.attrs), names, arrays


def model_inputs(func) -> list[str]:
    """The token inputs ``func`` (an imported or lowered ``main`` / ``forward``) takes, in order."""
    return [str(p.name) for p in func.params[: int(func.attrs["num_input"])]]


def _model_inputs(func):
    """``func``, checked to take the inputs of the model's own ``forward`` in ``INPUTS`` order, with
    ``input_ids`` and ``attention_mask`` among them. A model without token types (DistilBERT, MPNet) has
    no ``token_type_ids`` parameter: the compiled model never reads ids it has no table for."""
    have = model_inputs(func)
    if have != [n for n in INPUTS if n in have] or not {"input_ids", "attention_mask"} <= set(have):
        raise IBertTVMError(f"the imported model takes {have}: expected input_ids, attention_mask and any of "
                            f"{', '.join(INPUTS[2:])}, in that order")
    return func
