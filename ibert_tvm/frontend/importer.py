"""A local Hugging Face model -> a float Relax IRModule, through TVM's own PyTorch frontend.

The path is ``torch.export.export`` (eager attention, symbolic batch and sequence) followed by
``tvm.relax.frontend.torch.from_exported_program(ep, keep_params_as_input=True)``. Nothing
here knows a model family: the exported function is the model's own ``forward``.

The imported ``main``::

    main(input_ids, attention_mask, token_type_ids, position_ids,   # int32 [batch, seq]
         *weights)                                                  # float32, HF names (BERT's)
      -> float32 [batch, seq, H] last hidden state (a ``*Model``: the sentence embedding is
         its mean over real tokens, taken outside this graph as the compiled model does)
       | float32 [batch, labels] logits (a ``*ForSequenceClassification``)

``attrs["num_input"]`` is the number of token inputs (the inputs ``forward`` accepts, in the
order above: DistilBERT's and MPNet's have no ``token_type_ids``); ``batch`` is in [1, ``max_batch``] and ``seq`` in [1, the model's longest
sequence]. The inputs are int32, as :class:`~ibert_tvm.support.tokenize.Tokenizer` makes them.

Where the stock importer falls short, and what this file does about it:

* **Parameter names.** ``from_exported_program`` names each weight's Relax variable after the
  export's mangled placeholder (``p_encoder_layer_0_attention_self_query_weight``: dots and
  underscores both become ``_``, so the HF name cannot be recovered from it) and returns the
  values in a ``params`` function attribute in ``ExportedProgram.named_parameters()`` order,
  which matches the function's parameter order only by convention (seen equal on every model
  tested). :func:`_rename_params` renames every weight variable to its HF name
  (``encoder.layer.0.attention.self.query.weight``; TVMScript prints it as
  ``encoder_layer_0_...``), taken from the export's graph signature, and the values are
  re-collected by name from the export's state dict, in the function's own parameter order.
  A weight the graph does not read (the pooler of a ``*Model``) stays a parameter. An
  architecture that renames BERT's modules (DistilBERT's ``transformer.layer.0.attention.q_lin``)
  gets BERT's names here (``HFCheckpoint.canonical``, from its name map in
  ``hf_loader.MODULE_NAMES``): every pass after the import sees one naming.
* **Symbolic shape names.** The importer keeps torch's symbols (``s18``, ``s41``);
  :func:`_rename_shape_vars` names them ``batch`` and ``seq`` (with their bounds).
* **Attention.** Under the default SDPA attention the export holds one
  ``scaled_dot_product_attention``, which the importer's ``run_decompositions`` expands into q
  and k each multiplied by ``d^-1/4``, a ``-inf`` mask and a guard for fully masked rows
  (``equal``/``logical_not``/``max``/``where`` over the scores). The export runs with
  ``config._attn_implementation = "eager"`` (restored after), which gives the plain form the
  quantization points are found on: ``matmul(q, k^T)``, ``multiply`` by ``1/sqrt(d)``, ``add``
  of the additive mask, ``nn.softmax``, ``matmul`` with v.

The high-level float ops survive the import (``matmul`` with ``permute_dims`` of the weight and
a bias ``add``, ``nn.layer_norm``, ``nn.gelu``, ``nn.softmax``, ``take`` for the embedding
gathers, ``tanh``); the mask arithmetic arrives as ``astype``/``index_tensor``/``where``.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import IBertTVMError
from ..model.hf_loader import HFCheckpoint, load_checkpoint

from ..support.tokenize import INPUTS  # noqa: F401  (re-exported)
MAX_BATCH = 64
_WRAPPED = "model."  # parameter-name prefix of the wrapped model (_first_output)


@dataclass
class ImportedModel:
    """The float Relax module of an HF checkpoint and its weights.

    ``mod["main"]`` takes the token inputs (``inputs``, int32 ``[batch, seq]``) and then one
    float32 tensor per name of ``param_names`` (HF names, e.g.
    ``encoder.layer.0.attention.self.query.weight``), in that order; ``params`` holds their
    values (numpy, the checkpoint's own tensors). ``seconds`` times the two steps
    (``export``: ``torch.export``; ``import``: ``from_exported_program`` and the fixes above)."""

    mod: object  # tvm.IRModule
    inputs: tuple[str, ...]
    param_names: list[str]
    params: list[np.ndarray]
    ckpt: HFCheckpoint
    seconds: dict[str, float] = field(default_factory=dict)


def import_model(model: HFCheckpoint | str | os.PathLike, *, max_batch: int = MAX_BATCH) -> ImportedModel:
    """Export ``model`` (an :class:`HFCheckpoint`, or a directory / ``"default"`` for
    :func:`~ibert_tvm.model.hf_loader.load_checkpoint`) and import it as a float Relax module."""
    import torch
    from torch.export import Dim
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.torch import from_exported_program

    ckpt = model if isinstance(model, HFCheckpoint) else load_checkpoint(model)
    accepted = inspect.signature(ckpt.model.forward).parameters
    inputs = tuple(n for n in INPUTS if n in accepted)
    batch, seq = Dim("batch", min=1, max=max_batch), Dim("seq", min=1, max=ckpt.max_positions)
    example = _example_inputs(ckpt, inputs)
    t0 = time.perf_counter()
    with _eager_attention(ckpt.model), _torch_gelu(ckpt.model), torch.no_grad():
        ep = torch.export.export(
            _first_output(ckpt.model), (), kwargs=example, dynamic_shapes={n: {0: batch, 1: seq} for n in inputs}
        )
    t1 = time.perf_counter()
    mod, _ = detach_params(from_exported_program(ep, keep_params_as_input=True, unwrap_unit_return_tuple=True))
    func, own = _rename_params(mod["main"], ep, ckpt.canonical)  # BERT's names (hf_loader.MODULE_NAMES)
    names = [str(p.name) for p in func.params[len(inputs):]]
    if len(set(names)) != len(names):
        raise IBertTVMError(f"{ckpt.architecture}: its name map gives two weights one name")
    mod["main"] = _rename_shape_vars(func, inputs)
    state = ep.state_dict
    params = [state[_WRAPPED + n].detach().numpy() for n in own]
    t2 = time.perf_counter()
    return ImportedModel(mod, inputs, names, params, ckpt, {"export": t1 - t0, "import": t2 - t1})


def _first_output(model):
    """``model`` wrapped so that ``forward`` returns only its first output (the last hidden state
    of a ``*Model``, the logits of a ``*ForSequenceClassification`` / ``*ForTokenClassification``;
    for a ``*ForQuestionAnswering`` the ``[B, S, 2]`` logits of ``qa_outputs``): an unused pooler output
    stays out of the graph. The wrapped parameters are named ``_WRAPPED`` + HF name."""
    import torch

    class FirstOutput(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
            kw = dict(attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids)
            kw = {k: v for k, v in kw.items() if v is not None}
            if hasattr(self.model, "qa_outputs"):  # QA: the [B, S, 2] logits, before the start/end split
                base = getattr(self.model, self.model.base_model_prefix)  # the body: bert, distilbert, albert...
                return self.model.qa_outputs(base(input_ids, **kw, return_dict=False)[0])
            return self.model(input_ids, **kw, return_dict=False)[0]

    return FirstOutput(model)


@contextlib.contextmanager
def _eager_attention(model):
    """Set ``config._attn_implementation = "eager"`` on ``model`` and its submodules for the
    duration (restored afterwards: the checkpoint keeps its own attention for torch runs)."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    saved = {k: getattr(c, "_attn_implementation", None) for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]


@contextlib.contextmanager
def _torch_gelu(model):
    """Export transformers' hand-written GELUs as torch's own ``gelu`` (restored after).

    ``NewGELUActivation`` (``hidden_act="gelu_new"``: ALBERT, ELECTRA variants) computes
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` with ``pow``/``tanh``/``multiply``, and
    ``gelu_python`` writes ``erf`` out: the graph would hold float ops no rule places. They are the
    same functions as ``gelu(x, approximate="tanh")`` / ``gelu(x)``, which import as
    ``nn.gelu_tanh`` / ``nn.gelu`` (both lowered to i-GELU)."""
    import torch
    from transformers import activations

    forms = {activations.NewGELUActivation: "tanh"}
    swapped = []
    for m in model.modules():
        approx = forms.get(type(m))
        if approx is None and isinstance(m, activations.GELUActivation) and m.act is not torch.nn.functional.gelu:
            approx = "none"  # gelu_python: erf written out
        if approx is not None:
            swapped.append(m)
            m.forward = (lambda x, a=approx: torch.nn.functional.gelu(x, approximate=a))
    try:
        yield
    finally:
        for m in swapped:
            del m.forward  # the instance attribute: the class's forward again


def _example_inputs(ckpt: HFCheckpoint, inputs: tuple[str, ...]) -> dict:
    """A 2 x 8 int32 batch (both sizes > 1, so torch.export keeps them symbolic), row 1 padded."""
    import torch

    from ..support.tokenize import position_ids

    ids = np.full((2, 8), 5, dtype=np.int32)
    mask = np.ones((2, 8), dtype=np.int32)
    mask[1, 5:] = 0
    ids[mask == 0] = ckpt.pad_token_id
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
              "position_ids": position_ids(ids, mask, ckpt.family, ckpt.pad_token_id)}
    return {n: torch.from_numpy(arrays[n]) for n in inputs}


def _rename_params(func, ep, canonical=lambda n: n):
    """-> (``func`` with each weight variable named ``canonical(its HF name)``, the HF names in order).

    A weight's Relax variable carries the export placeholder name (``spec.arg.name``); the
    graph signature maps it to the module attribute path (``spec.target``)."""
    from tvm import relax

    target = {s.arg.name: s.target for s in ep.graph_signature.input_specs if s.target is not None}
    n_in = int(func.attrs["num_input"])
    own = [target[p.name][len(_WRAPPED):] for p in func.params[n_in:]]
    renamed = {p: relax.Var(canonical(n), p.ty) for p, n in zip(func.params[n_in:], own, strict=True)}
    body = func.bind_params(renamed).body
    params = list(func.params[:n_in]) + list(renamed.values())
    return relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs), own


def _rename_shape_vars(func, inputs):
    """Name the symbolic batch and sequence sizes ``batch`` and ``seq`` (and their bounds)."""
    from tvm import tirx

    b, s = func.params[0].ty.shape  # every token input is [batch, seq]
    new = {b: tirx.Var("batch", "int64"), s: tirx.Var("seq", "int64")}
    func = func.bind_symbolic_vars(new)
    for key in ("tir_var_lower_bound", "tir_var_upper_bound"):
        if key in func.attrs:
            old = {v.name: new_v.name for v, new_v in new.items()}
            func = func.with_attr(key, {old.get(k, k): v for k, v in func.attrs[key].items()})
    return func
