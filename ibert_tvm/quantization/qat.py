"""Quantization-aware training whose forward pass *is* the deployed integer model.

Train/deploy agreement by construction: the forward value of :class:`QATModel` is computed by
the integer executor :func:`integer_forward`, which calls the same op plans
(``ibert_tvm/model/plan.py``) in the same order as the golden executor
(``ibert_tvm/model/golden.py``), and so equals the compiled TVM model bit for bit
(``tests/quantization/test_qat.py`` checks it on the exported artifact). The gradient comes
from the FP32 PyTorch model: a straight-through estimator at every quantization point.

Forward of one training step::

    plan   = ModelPlan(build_quantized(float weights, EMA ranges))   # int8 weights, dyadic scales
    ints   = integer_forward(plan, batch)          # every quantization point's integer tensor
    float model, with a hook at every point p:     # calibrate.quantization_points + the head's tanh output
        y_p = deq(ints[p]) + (f_p - f_p.detach())  # value: exact dequantized integer; grad: d f_p
    output = deq(integer output) + (f - f.detach())

``f_p`` is the float op applied to the *dequantized integer* inputs of point ``p`` (the previous
points were replaced), so every float op sees the values the integer model sees. Weights are
fake-quantized by the same route (value: ``quantize_weight``'s int8 grid; gradient: identity).
In training mode every point's ``max |f_p|`` over real tokens updates an EMA range
(momentum 0.95, I-BERT's), from which the next step's scales are built. ``freeze()`` stops the
updates; :meth:`QATModel.export` returns the :class:`QuantizedModel` that ``compile`` consumes.

The integer executor *is* ``golden.run_golden``, run on a copy of the plan whose op plans record
their outputs; only its matrix products are formed differently: int8 x int8 sums in float64
BLAS instead of int64 numpy. Every product and partial sum is an integer below 2^53
(``check_accumulator`` proves < 2^31), so float64 holds each exactly and the result is the same
integer in any summation order; that makes training feasible (int64 matmuls are ~20x slower).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from ..support.tokenize import Tokenizer
from ..errors import IBertTVMError
from ..model.plan import ModelPlan
from ..model.reference import torch_pool
from ..op.int_matmul import check_accumulator
from ..op.pooling import float_pool
from .artifact import QuantizedModel
from .calibrate import RangeObserver, build_quantized, head_modules, quantization_points, torch_inputs
from .finetune import optimize

MOMENTUM = 0.95  # EMA of activation ranges (I-BERT / transformers QuantAct)

# Quantization points whose scale ``build_quantized`` derives with headroom from max |x|, and
# their bit-width field in QuantConfig (the rest are int8 activations: range = percentile/max).
_WIDE = {"sum": ("residual_bits", "residual_headroom"), "res1": ("residual_bits", "residual_headroom"),
         "res2": ("residual_bits", "residual_headroom"), "inter": ("gelu_in_bits", "gelu_headroom"),
         "pre_tanh": ("tanh_in_bits", "gelu_headroom"), "logits": ("logits_bits", None)}


# -- the integer executor: golden.py itself, with every quantization point tapped --------------
def _mm_exact(a: np.ndarray, b_t: np.ndarray) -> np.ndarray:
    """``a @ b_t`` for integer-valued float64 arrays whose sums are < 2^53: exact, as int64."""
    return np.matmul(a, b_t).astype(np.int64)


def linear_exact(x, w, bias=None) -> np.ndarray:
    """``int_matmul.linear_np`` computed with float64 BLAS: the same int32 result, ~50x faster."""
    from ..op.int_matmul import BIAS_BOUND, linear_np

    if x.dtype.name not in ("int8", "uint8") or w.dtype.name != "int8" or w.ndim != 2 or x.shape[-1] != w.shape[1]:
        return linear_np(x, w, bias)  # let the reference raise its error
    check_accumulator(w.shape[1], x.dtype.name, "int8", BIAS_BOUND if bias is not None else 0)
    y = _mm_exact(x.reshape(-1, x.shape[-1]).astype(np.float64), w.astype(np.float64).T)
    if bias is not None:
        if np.abs(bias.astype(np.int64)).max(initial=0) > BIAS_BOUND:
            return linear_np(x, w, bias)
        y = y + bias.astype(np.int64)
    return y.reshape(*x.shape[:-1], w.shape[0]).astype(np.int32)


def batch_matmul_exact(a, b, *, row_sum: int | None = None) -> np.ndarray:
    """``int_matmul.batch_matmul_np`` computed with float64 BLAS (same int32 result); ``row_sum`` as
    there (a uint16 softmax output: its sums stay < 2^31, far below 2^53)."""
    from ..op.int_matmul import batch_matmul_np

    a_dtypes = ("int8", "uint8") if row_sum is None else ("int8", "uint8", "uint16")
    if a.dtype.name not in a_dtypes or b.dtype.name != "int8" or a.ndim < 2 or a.shape[-1] != b.shape[-1]:
        return batch_matmul_np(a, b, row_sum=row_sum)  # let the reference raise its error
    check_accumulator(a.shape[-1], a.dtype.name, "int8", row_sum=row_sum)
    if row_sum is not None and a.size and np.abs(a.astype(np.int64)).sum(axis=-1).max() > row_sum:
        return batch_matmul_np(a, b, row_sum=row_sum)
    return _mm_exact(a.astype(np.float64), np.swapaxes(b, -1, -2).astype(np.float64)).astype(np.int32)


class _Tap:
    """Stands in for an op plan: forwards everything, records what ``numpy``/``numpy_q`` return."""

    def __init__(self, target, name: str, sink: dict):
        self._target, self._name, self._sink = target, name, sink

    def __getattr__(self, attr):
        return getattr(self._target, attr)

    def numpy(self, *args, **kw):
        out = self._target.numpy(*args, **kw)
        self._sink[self._name] = out
        return out

    def numpy_q(self, *args, **kw):
        out = self._target.numpy_q(*args, **kw)
        self._sink[self._name] = out
        return out


def _tapped_plan(plan: ModelPlan, sink: dict):
    """A shallow copy of ``plan`` whose op plans record their outputs into ``sink``."""
    tp = copy.copy(plan)
    tp.embeddings = _Tap(plan.embeddings, "embeddings.sum", sink)
    tp.emb_ln = _Tap(plan.emb_ln, "embeddings.ln", sink)

    def lin(lp, name):
        c = copy.copy(lp)
        c.requant = _Tap(lp.requant, name, sink)
        return c

    layers = []
    for i, L in enumerate(plan.layers):
        p = f"layer{i}."
        c = copy.copy(L)
        c.q, c.k, c.v = lin(L.q, p + "q"), lin(L.k, p + "k"), lin(L.v, p + "v")
        c.ctx = _Tap(L.ctx, p + "ctx", sink)
        c.attn_out = lin(L.attn_out, p + "res1")
        c.ln1 = _Tap(L.ln1, p + "ln1", sink)
        c.inter = lin(L.inter, p + "inter")
        c.gelu = _Tap(L.gelu, p + "gelu", sink)
        c.out = lin(L.out, p + "res2")
        c.ln2 = _Tap(L.ln2, p + "ln2", sink)
        layers.append(c)
    tp.layers = layers
    if plan.head == "classifier":
        tp.head_dense = lin(plan.head_dense, "head.pre_tanh")
        tp.tanh = _Tap(plan.tanh, "head.tanh", sink)
        tp.head_out = lin(plan.head_out, "head.logits")
    return tp


class _fast_matmuls:
    """Within the block, ``golden.py`` forms its matrix products with the exact float64 BLAS
    versions above (module globals are swapped and restored; not thread-safe)."""

    def __enter__(self):
        from ..model import golden

        self.saved = {n: getattr(golden, n) for n in ("linear_np", "batch_matmul_np") if hasattr(golden, n)}
        if "linear_np" in self.saved:
            golden.linear_np = linear_exact
        if "batch_matmul_np" in self.saved:
            golden.batch_matmul_np = batch_matmul_exact
        return self

    def __exit__(self, *exc):
        from ..model import golden

        for n, f in self.saved.items():
            setattr(golden, n, f)
        return False


def integer_forward(plan: ModelPlan, inputs: dict, *, taps: bool = False):
    """The integer model on int32 ``inputs`` -> ``(output, taps)``.

    It *is* ``golden.run_golden`` (called on a copy of ``plan`` whose op plans record their
    outputs), with the matrix products in exact float64: ``output`` equals the golden executor
    bit for bit. ``taps[point] = (int array, scale)`` for every quantization point of
    ``calibrate.quantization_points`` (``layer{i}.ctx`` with heads merged to ``[B, S, H]``), plus
    ``head.tanh`` for a classifier. Scales are per-tensor floats or per-channel arrays.
    """
    from ..model.golden import run_golden

    sink: dict = {}
    with _fast_matmuls():
        out = run_golden(_tapped_plan(plan, sink) if taps else plan, **inputs)
    if not taps:
        return out, {}
    qm = plan.qm
    t = {}
    for name, x in sink.items():
        if name.endswith(".ctx") and x.ndim == 4:  # [B, n, S, d] -> [B, S, n*d]
            B, n, S, d = x.shape
            x = x.transpose(0, 2, 1, 3).reshape(B, S, n * d)
        if name == "head.tanh":
            scale = plan.tanh.out_scale
        elif name == "head.logits":
            scale = plan.out_scale
        else:
            scale = qm.scale(name)
        t[name] = (x, scale)
    return out, t


# -- ranges <-> scales --------------------------------------------------------------------------
def _kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def ranges_from_quantized(qm: QuantizedModel, names: Iterable[str]) -> dict[str, float]:
    """The EMA state that makes ``build_quantized`` reproduce ``qm``'s activation scales."""
    cfg = qm.config
    out = {}
    for n in names:
        s = qm.scale(n)
        wide = _WIDE.get(_kind(n))
        if wide is None:
            out[n] = s * ((1 << (cfg.act_bits - 1)) - 1)
        else:
            bits = getattr(cfg, wide[0])
            headroom = getattr(cfg, wide[1]) if wide[1] else 2.0  # head.logits: fixed 2.0
            out[n] = s * ((1 << (bits - 1)) - 1) / headroom
    return out


@dataclass
class QATStats:
    steps: int = 0
    losses: list = field(default_factory=list)


class QATModel:
    """The FP32 model trained through the integer forward (see the module docstring).

    ``ckpt``: an :class:`~ibert_tvm.model.hf_loader.HFCheckpoint` (its ``model`` is trained in
    place; pass a copy to keep the original). ``qm``: the post-training-calibrated artifact of the
    same checkpoint, whose scales initialise the EMA ranges.
    """

    def __init__(self, ckpt, qm: QuantizedModel, *, momentum: float = MOMENTUM):
        if qm.source.get("model_hash") != ckpt.model_hash:
            raise IBertTVMError("the quantized artifact was not calibrated from this checkpoint (source hash differs)")
        if ckpt.head not in ("embedding", "classifier"):
            raise IBertTVMError(f"QAT trains embedding and sequence-classification heads; {ckpt.architecture}'s "
                                f"{ckpt.head} head is compiled from calibration (PTQ) only")
        if ckpt.renamed or qm.dims.get("head_act", "tanh") != "tanh":  # DistilBERT, ALBERT; ReLU / GELU heads
            raise IBertTVMError(f"QAT trains BERT-named models with a tanh classifier or an embedding head; "
                                f"{ckpt.architecture} is compiled from calibration (PTQ) only")
        self.ckpt = ckpt
        self.config = qm.config
        self.source = dict(qm.source)
        self.momentum = float(momentum)
        self.points = [(n, mod, kind) for n, mod, kind in quantization_points(ckpt)]
        if ckpt.head == "classifier":
            self.points.append(("head.tanh", head_modules(ckpt)[1], "in"))
        self.ranges = ranges_from_quantized(qm, [n for n, _, _ in self.points if n != "head.tanh"])
        d = qm.dims
        self.tokenizer = Tokenizer(qm.tokenizer_json, d["max_seq"], d["family"], d["pad_id"])
        self.frozen = False
        self.training = False
        self.refresh()

    # -- state ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Rebuild the integer model from the current float weights and ranges."""
        obs = {}
        for n, r in self.ranges.items():
            if np.ndim(r) > 0:  # per-channel activation scales (QuantConfig.per_channel_acts)
                obs[n] = RangeObserver(False, absmax=float(np.max(r)), channel_absmax=np.asarray(r, dtype=np.float64))
            else:
                obs[n] = RangeObserver(False, absmax=float(r))
        self.qm = build_quantized(self.ckpt, obs, self.config)
        self.plan = ModelPlan(self.qm)

    def train(self, mode: bool = True) -> "QATModel":
        self.training = mode
        return self

    def eval(self) -> "QATModel":
        return self.train(False)

    def freeze(self) -> None:
        """Stop updating the activation ranges (and rebuild the integer model once)."""
        self.frozen = True
        self.refresh()

    def parameters(self):
        return [p for p in self.ckpt.model.parameters() if p.requires_grad]

    def export(self, *, tag: str = "qat", info: dict | None = None) -> QuantizedModel:
        """The frozen integer model as a :class:`QuantizedModel` (what ``compile`` consumes).

        ``source.model_hash`` stays the FP32 source model's, so an evaluation pairs the QAT
        artifact with the model it was trained from; ``source.qat`` records the training.
        """
        if not self.frozen:
            self.freeze()
        qm = self.qm
        from .config import QuantConfig

        cfg = QuantConfig.from_dict({**qm.config.to_dict(), "name": f"{qm.config.name}-{tag}"})
        source = {**self.source, "qat": dict(info or {}, momentum=self.momentum)}
        return QuantizedModel(cfg, dict(qm.dims), dict(qm.scales), dict(qm.tensors), source, qm.tokenizer_json,
                              list(qm.labels))

    # -- forward --------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> dict:
        return self.tokenizer(list(texts), list(pairs) if pairs is not None else None)

    def forward_int(self, inputs: dict) -> np.ndarray:
        """The integer output (no PyTorch): equal to the golden executor on :meth:`export`'s artifact."""
        out, _ = integer_forward(self.plan, inputs)
        return out

    def forward(self, inputs: dict):
        """Float output whose value is exactly ``float32(forward_int * out_scale)``; STE gradients.

        In training mode (and not frozen) the EMA ranges are updated from this batch; call
        :meth:`refresh` after the optimizer step to rebuild the integer model.
        """
        import torch

        out_int, taps = integer_forward(self.plan, inputs, taps=True)
        mask = inputs["attention_mask"].astype(bool)
        seen: dict[str, float] = {}
        observe = self.training and not self.frozen

        def ste(name, f):
            q_int, scale = taps[name]
            q = torch.from_numpy(q_int.astype(np.float64) * scale).to(f.dtype)
            if observe and name in self.ranges and f.numel():
                a = f.detach()
                if a.dim() == 3:
                    a = a[torch.from_numpy(mask)]  # real tokens only: [N, C]
                a = a.abs().reshape(-1, a.shape[-1])
                if np.ndim(self.ranges[name]) > 0:
                    seen[name] = a.amax(0).double().numpy()
                else:
                    seen[name] = float(a.max())
            return q + (f - f.detach())

        def make(name, kind):
            if kind == "in":
                return lambda mod, args: (ste(name, args[0]), *args[1:])

            def out_hook(mod, args, out):
                if isinstance(out, tuple):
                    return (ste(name, out[0]), *out[1:])
                return ste(name, out)

            return out_hook

        handles = []
        try:
            for name, mod, kind in self.points:
                h = make(name, kind)
                handles.append(mod.register_forward_pre_hook(h) if kind == "in" else mod.register_forward_hook(h))
            res = self.ckpt.model(**torch_inputs(inputs))
        finally:
            for h in handles:
                h.remove()
        if self.ckpt.head == "classifier":
            f = res.logits
        else:
            f = torch_pool(self.plan.pooling, res.last_hidden_state, torch.from_numpy(mask))
        q = torch.from_numpy(out_int.astype(np.float64) * self.plan.out_scale).to(f.dtype)
        if observe:
            for name, v in seen.items():
                self.ranges[name] = self.momentum * self.ranges[name] + (1 - self.momentum) * v
        return q + (f - f.detach())

    __call__ = forward


# -- training loops ---------------------------------------------------------------------------
def _batches(n: int, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def fp32_embeddings(ckpt, tokenizer: Tokenizer, texts: Sequence[str], *, batch_size: int = 32, progress=None) -> np.ndarray:
    """FP32 embeddings ``[N, H]`` float64, pooled as the model dir says (sentence-transformers)."""
    import torch

    out = []
    chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    with torch.no_grad():
        for chunk in progress(chunks) if progress else chunks:
            enc = tokenizer(list(chunk))
            hs = ckpt.model(**torch_inputs(enc)).last_hidden_state.double().numpy()
            out.append(float_pool(ckpt.pooling, hs, enc["attention_mask"]))
    return np.concatenate(out)


def distill_embeddings(qat: QATModel, sentences: Sequence[str], teacher: np.ndarray, *, epochs: int = 1,
                       batch_size: int = 16, lr: float = 1e-5, seed: int = 0, max_steps: int | None = None,
                       progress: Callable | None = None) -> QATStats:
    """Train toward FP32 embeddings: loss = 1 - cos(integer-forward embedding, teacher).

    ``teacher[i]`` is the frozen FP32 model's pooled embedding of ``sentences[i]``
    (:func:`fp32_embeddings` on the original checkpoint); ``max_steps`` stops early
    (``scripts/qat_distill.py``; docs/fidelity.md, "QAT as embedding distillation")."""
    import torch

    if qat.ckpt.head != "embedding":
        raise IBertTVMError("embedding distillation needs an embedding model (a pooling head)")

    def loss(idx):
        emb = qat(qat.encode([sentences[i] for i in idx]))
        t = torch.from_numpy(teacher[idx]).to(emb.dtype)
        return (1.0 - torch.nn.functional.cosine_similarity(emb, t, dim=1)).mean()

    return _train(qat, len(sentences), loss, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                  progress=progress, max_steps=max_steps)


def train_classifier(qat: QATModel, texts: Sequence[str], labels: Sequence[int], *, epochs: int = 1,
                     batch_size: int = 16, lr: float = 1e-5, seed: int = 0, teacher_logits: np.ndarray | None = None,
                     distill_weight: float = 0.5, temperature: float = 2.0,
                     progress: Callable | None = None) -> QATStats:
    """Fine-tune a classifier through the integer forward: cross-entropy on the labels, plus
    (with ``teacher_logits``) a KL term toward the FP32 logits (``distill_weight``, ``temperature``)."""
    import torch
    import torch.nn.functional as F

    if qat.ckpt.head != "classifier":
        raise IBertTVMError("classifier QAT needs a classification model")
    y_all = torch.tensor(np.asarray(labels, dtype=np.int64))

    def loss(idx):
        logits = qat(qat.encode([texts[i] for i in idx]))
        loss = F.cross_entropy(logits, y_all[idx])
        if teacher_logits is not None and distill_weight > 0:
            t = torch.from_numpy(teacher_logits[idx]).to(logits.dtype)
            kd = F.kl_div(F.log_softmax(logits / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean")
            loss = (1 - distill_weight) * loss + distill_weight * kd * temperature**2
        return loss

    return _train(qat, len(texts), loss, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress)


def _train(qat: QATModel, n: int, loss_of: Callable, *, epochs: int, batch_size: int, lr: float, seed: int,
           progress: Callable | None, max_steps: int | None = None) -> QATStats:
    """The QAT loop both objectives share: AdamW (no weight decay) over ``epochs`` seeded shuffles
    of ``n`` examples; after each step the integer parameters are re-derived (``qat.refresh``).
    The wrapped FP32 model stays in eval mode throughout: the integer model has no dropout."""
    import torch

    opt = torch.optim.AdamW(qat.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    stats = QATStats()
    qat.train()
    qat.ckpt.model.eval()  # no dropout: the integer model has none
    steps = [b for _ in range(epochs) for b in _batches(n, batch_size, rng)]
    if max_steps is not None:
        steps = steps[:max_steps]
    stats.losses = optimize(steps, loss_of, opt, qat.refresh, progress)
    stats.steps = len(stats.losses)
    qat.eval()
    return stats


def copy_checkpoint(ckpt):
    """A deep copy of an HFCheckpoint (the QAT trains its model in place)."""
    c = copy.copy(ckpt)
    c.model = copy.deepcopy(ckpt.model)
    return c
