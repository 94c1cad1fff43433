"""The engines, one class each: ``prepare`` builds artifacts, ``load`` returns a runner.

``prepare(ctx)`` runs in a child process of the harness (a crash or a missing package there
skips the engine, never the run) and returns a JSON-serialisable *spec* (paths, notes).
``load(model, spec, threads)`` runs in the engine's own worker process and returns a
:class:`Runner`: ``runner(inputs)`` maps the int64 numpy inputs of
:func:`~ibert_tvm.benchmarks.models.bench_inputs` to a float64 numpy ``[B, H]`` pooled embedding
(or ``[B, labels]`` logits), which is what every engine is timed doing.

    tvm-int8    ours: the integer-only artifact of ``compile_quantized`` (x86 VNNI target when
                this CPU has VNNI and the project registers it, else ``llvm``), with a tuned
                MetaSchedule database when ``ibert_tvm.tuning`` provides one
    tvm-fp32    the same model in FP32 through the same TVM (``tvm_fp32``), same trial budget
    torch-fp32  PyTorch eager, ``torch.inference_mode``
    torch-int8  ``torch.ao.quantization.quantize_dynamic`` (int8 Linear, dynamic activations)
    ort-fp32    ONNX (TorchScript exporter, opset 17) + ONNX Runtime's BERT fusions
    ort-int8    the same graph + ``onnxruntime.quantization.quantize_dynamic`` (QInt8 weights)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from .models import BenchModel, model_slug
from ..support.tokenize import INPUTS

INSTALL_HINTS = {"onnxruntime": "pip install onnxruntime onnx", "onnx": "pip install onnx onnxruntime",
                 "torch": "pip install torch", "tvm": "pip install apache-tvm", "matplotlib": "pip install matplotlib"}


class Runner:
    """``runner(inputs) -> np.ndarray`` float64; ``profile(inputs)`` for TVM runners."""

    def __call__(self, inputs: dict) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    profile = None
    serial_thresholds = None  # x86 TVM builds: the serial/parallel threshold table the loader fed


class Engine:
    name = ""
    label = ""
    precision = "fp32"
    blocks_torch = False  # the worker refuses ``import torch`` (a deployment has no PyTorch)

    def prepare(self, ctx: dict, log=print) -> dict:
        return {}

    def imports(self) -> None:
        """Import the engine's libraries (so that the model's own memory can be told apart)."""
        import torch  # noqa: F401
        import transformers  # noqa: F401

    def load(self, model: BenchModel, spec: dict, threads: int) -> Runner:  # pragma: no cover - interface
        raise NotImplementedError

    def files(self, model: BenchModel, spec: dict) -> dict[str, int]:
        """What must be shipped to run this engine: ``{file: bytes}``."""
        return {}


def _sizes(paths) -> dict[str, int]:
    return {str(p): Path(p).stat().st_size for p in paths if Path(p).is_file()}


def _weights_files(model_dir: str) -> list[Path]:
    d = Path(model_dir)
    st = sorted(d.glob("*.safetensors"))
    return [d / "config.json", *(st or sorted(d.glob("*.bin")))]


def _dir_hash(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(d.glob("database_*.json")):
        h.update(f.read_bytes())
    return h.hexdigest()[:8]


# -- the torch graph every non-TVM-int8 engine computes ------------------------------------------
def pooled_module(ckpt):
    """``(input_ids, attention_mask, token_type_ids, position_ids) -> [B, H]`` embedding, pooled as
    the model's sentence-transformers config says, or ``[B, labels]`` logits: what the integer model
    outputs (:func:`ibert_tvm.model.reference.reference_module`)."""
    from ..model.reference import reference_module

    return reference_module(ckpt.model, ckpt.head, ckpt.pooling)


def _torch_model(model: BenchModel, threads: int):
    import torch

    from ..model.hf_loader import load_checkpoint

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (a second engine in one process: tests)
        pass
    return pooled_module(load_checkpoint(model.path))


class _TorchRunner(Runner):
    def __init__(self, module):
        self.module = module

    def __call__(self, inputs):
        import torch

        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(inputs[n]) for n in _INPUTS))
        return out.numpy().astype(np.float64)


_INPUTS = INPUTS


# -- ours -------------------------------------------------------------------------------------------
def default_int8_target() -> str:
    """``x86-amx`` when this CPU has AMX-INT8, ``x86`` when it has AVX-512 VNNI (and the project
    registers the strategy), else ``llvm``."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if "avx512_vnni" not in flags:
        return "llvm"
    from ..support.amx import cpu_has_amx_int8

    if cpu_has_amx_int8(flags):
        from ..schedules import _LINEAR, _load_target_modules

        _load_target_modules()
        if "x86-amx" in _LINEAR:
            return "x86-amx"
    from ..schedules import _LINEAR, _load_target_modules

    try:
        _load_target_modules()
    except Exception:  # noqa: BLE001 - a broken target module: fall back to the generic target
        return "llvm"
    return "x86" if "x86" in _LINEAR else "llvm"


def tuning_module():
    """``ibert_tvm.tuning`` if it exists (issue 5), else ``None``."""
    import importlib

    try:
        return importlib.import_module("ibert_tvm.tuning")
    except ModuleNotFoundError as e:
        if e.name != "ibert_tvm.tuning":
            raise
        return None


def int8_database(qm, target: str, cache: Path, trials: int, *, log=print) -> tuple[str | None, int, str]:
    """(database dir or None, trials it holds, a note) for the integer model.

    With ``ibert_tvm.tuning``: a database found by ``find_database`` (the repository's
    ``tuning_logs/``, ``$IBERT_TVM_TUNING_LOGS``) or tuned earlier by the bench under
    ``<cache>/tuning``, checked by ``resolve_database``; failing that and with ``trials > 0``,
    ``tune(qm, trials=trials)`` into ``<cache>/tuning``. Without the module: untuned.
    """
    tune = tuning_module()
    if tune is None or not hasattr(tune, "resolve_database"):
        return None, 0, "untuned (ibert_tvm.tuning is not available)"
    bench_root = cache / "tuning"
    db = None
    try:
        db = tune.resolve_database(None, target, qm.identity)
        if db is None and (bench_root / target / qm.identity / tune.META).is_file():
            db = tune.resolve_database(bench_root, target, qm.identity)
    except Exception as e:  # noqa: BLE001 - IBertTVMError: foreign or corrupt database, reported
        log(f"tuning database refused: {e}")
        if trials <= 0:
            return None, 0, f"untuned (database refused: {str(e).splitlines()[0][:200]})"
    if db is None and trials > 0:
        log(f"tuning the integer model for {target}: {trials} MetaSchedule trials (long)")
        t0 = time.time()
        db = tune.tune(qm, target=target, trials=trials, work_dir=bench_root / target / qm.identity,
                       progress=False, log=log)
        log(f"  tuned in {time.time() - t0:.0f} s")
    if db is None:
        return None, 0, "untuned (no tuning database for this model and target; --trials N tunes one)"
    meta = json.loads((Path(db) / tune.META).read_text())
    n = sum(int(g.get("trials") or 0) for g in (meta.get("groups") or {}).values())
    where = f"{Path(db).parent.name}/{Path(db).name}"
    if hasattr(tune, "select_records"):  # what compile would apply of it: stale records and in-model rejects are not
        from ..targets import get_target

        sel = tune.select_records(db, target, get_target(target).tvm_target())
        if not sel.applied:
            why = sel.message(where).split(": not applied: ", 1)[-1].split("; building", 1)[0]
            return None, 0, f"untuned (database {where} not applied: {why})"
        return str(db), n, f"tuned: {n} trials ({where}; {sel.applied} of {sel.workloads} records applied)"
    return str(db), n, f"tuned: {n} trials ({where})"


class _TvmEngine(Engine):
    blocks_torch = True

    def imports(self):
        import tokenizers  # noqa: F401
        import tvm  # noqa: F401
        from tvm.runtime.vm import VirtualMachine  # noqa: F401


class TvmInt8(_TvmEngine):
    name = "tvm-int8"
    label = "TVM int8 (ours)"
    precision = "int8"
    use_database = True

    def imports(self):
        """What a deployment loads (``deploy.light``): tvm_ffi + libtvm_runtime.so, not ``import tvm``."""
        import tokenizers  # noqa: F401

        from ..deploy import light

        light.load_runtime()

    def prepare(self, ctx, log=print):
        from ..deploy.export import compile_quantized, compiler_hash, quantized_hash
        from .models import quantized

        if ctx.get("prebuilt"):
            out = Path(ctx["prebuilt"])
            m = json.loads((out / "manifest.json").read_text())
            db = m.get("tuning_database")
            return {"out": str(out), "target": m.get("target"), "database": db, "trials": None,
                    "tuning": f"tuned ({db})" if db else "untuned", "prebuilt": True}
        model = BenchModel.from_dict(ctx["model"])
        cache = Path(ctx["cache"])
        qm = quantized(model, cache, log=log)
        target = ctx.get("target") or default_int8_target()
        if self.use_database:
            db, trials, note = int8_database(qm, target, cache, int(ctx.get("trials") or 0), log=log)
        else:
            db, trials, note = None, 0, "untuned: the target's default schedules, no database"
        tag = _dir_hash(Path(db)) if db else "untuned"
        out = cache / "tvm-int8" / f"{model_slug(model.name)}-{quantized_hash(qm)[:12]}-{target}-{tag}-{compiler_hash()}"
        if not (out / "manifest.json").is_file():
            log(f"compiling the integer-only {model.name} for {target} ({note}); minutes for a full model")
            t0 = time.time()
            # False: no database lookup at all (None would let compile pick a matching one up)
            compile_quantized(qm, out, target=target, database_dir=db or False, log=lambda *a: None)
            log(f"  compiled in {time.time() - t0:.0f} s")
        return {"out": str(out), "target": target, "database": db, "trials": trials, "tuning": note}

    def load(self, model, spec, threads):
        return TvmIntRunner(spec["out"])

    def files(self, model, spec):
        out = Path(spec["out"])
        return _sizes([out / "model.so", out / "params.npz", out / "manifest.json"])


class TvmIntRunner(Runner):
    def __init__(self, out):
        from ..deploy.runtime import CompiledModel

        self.out = out
        self.model = CompiledModel(out)
        self.serial_thresholds = self.model.serial_thresholds
        self.scale = self.model.output_scale

    def __call__(self, inputs):
        return self.model.run_ids(inputs).astype(np.float64) * self.scale

    def profile(self, inputs):
        from ..deploy.runtime import CompiledModel
        from .profile import profile_vm

        m = CompiledModel(self.out)  # a fresh VM: the timed one stays uninstrumented
        return profile_vm(m.vm, lambda: m.run_ids(inputs))


class TvmInt8Untuned(TvmInt8):
    """Ours without any tuning database: what the database changes (not in ``all``)."""

    name = "tvm-int8-untuned"
    label = "TVM int8 (ours, untuned)"
    use_database = False

    def prepare(self, ctx, log=print):
        return super().prepare({**ctx, "prebuilt": None}, log=log)


# -- TVM FP32 ---------------------------------------------------------------------------------------
class TvmFp32(_TvmEngine):
    name = "tvm-fp32"
    label = "TVM FP32"

    def prepare(self, ctx, log=print):
        from ..model.hf_loader import hash_model_dir, load_checkpoint
        from ..targets import get_target
        from .tvm_fp32 import build_fp32

        model = BenchModel.from_dict(ctx["model"])
        target_name = ctx.get("target") or default_int8_target()
        target = get_target(target_name).tvm_target()  # the integer engine's target: same CPU features
        # the integer model's budget (what its database holds) when it is tuned, else --trials
        trials = int(ctx.get("int8_trials") or ctx.get("trials") or 0)
        explicit = ctx.get("fp32_trials") is not None
        if explicit:  # --fp32-trials
            trials = int(ctx["fp32_trials"])
        out = Path(ctx["cache"]) / "tvm-fp32" / (
            f"{model_slug(model.name)}-{hash_model_dir(Path(model.path))[:12]}-{target_name}-t{trials}-v2"
        + ("" if model.pooling == "mean" else f"-{model.pooling}"))
        module = pooled_module(load_checkpoint(model.path))
        log(f"building TVM FP32 {model.name} for {target_name} ({'%d trials per shape' % trials if trials else 'untuned'})")
        meta = build_fp32(module, [tuple(s) for s in ctx["shapes"]], out, target, trials=trials, log=log)
        note = (f"tuned: {trials} trials per shape ({'--fp32-trials' if explicit else 'the integer model budget'})"
                if trials else "untuned (default pipeline, no schedules)"
                + (f"; the integer model had {ctx['int8_trials']} trials" if ctx.get("int8_trials") else ""))
        return {"out": str(out), "target": target_name, "trials": trials, "tuning": note, "meta": meta,
                "shapes": [list(x) for x in ctx["shapes"]]}

    def load(self, model, spec, threads):
        return TvmFp32Runner(spec["out"])

    def files(self, model, spec):
        """One shape's library and weights (the first shape): what a deployment for it ships."""
        from .tvm_fp32 import lib_name

        b, s = spec["shapes"][0]
        lib = Path(spec["out"]) / lib_name(b, s)
        return _sizes([lib, lib.with_suffix(".npz")])


class TvmFp32Runner(Runner):
    def __init__(self, out):
        import hashlib

        import tvm
        from tvm.runtime.vm import VirtualMachine

        self.out = Path(out)
        self.dev = tvm.cpu()
        self.vms, self.params = {}, {}
        shared: dict = {}  # one device copy of each distinct weight across the shapes' libraries
        for lib in sorted(self.out.glob("b*_s*.so")):
            b, s = lib.stem[1:].split("_s")
            key = (int(b), int(s))
            self.vms[key] = VirtualMachine(tvm.runtime.load_module(str(lib)), self.dev)
            params = []
            with np.load(lib.with_suffix(".npz")) as z:
                for i in range(len(z.files)):
                    a = z[f"p{i:04d}"]
                    h = (a.shape, str(a.dtype), hashlib.sha1(a.tobytes()).hexdigest())
                    if h not in shared:
                        shared[h] = tvm.runtime.tensor(a, self.dev)
                    params.append(shared[h])
            self.params[key] = params

    def _vm(self, inputs):
        shape = tuple(int(d) for d in inputs["input_ids"].shape)
        if shape not in self.vms:
            raise RuntimeError(f"no TVM FP32 library for shape {shape} (built: {sorted(self.vms)})")
        return self.vms[shape]

    def _args(self, inputs):
        import tvm

        return [tvm.runtime.tensor(inputs[n], self.dev) for n in _INPUTS]

    def __call__(self, inputs):
        shape = tuple(int(d) for d in inputs["input_ids"].shape)
        out = self._vm(inputs)["main"](*self._args(inputs), *self.params[shape])
        out = out if hasattr(out, "numpy") else out[0]
        return out.numpy().astype(np.float64)

    def profile(self, inputs):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        from .profile import profile_vm

        shape = tuple(int(d) for d in inputs["input_ids"].shape)
        self._vm(inputs)
        vm = VirtualMachine(tvm.runtime.load_module(str(self.out / f"b{shape[0]}_s{shape[1]}.so")), self.dev)
        args = self._args(inputs)
        return profile_vm(vm, lambda: vm["main"](*args, *self.params[shape]))


# -- PyTorch -----------------------------------------------------------------------------------------
class TorchFp32(Engine):
    name = "torch-fp32"
    label = "PyTorch FP32"

    def load(self, model, spec, threads):
        return _TorchRunner(_torch_model(model, threads))

    def files(self, model, spec):
        return _sizes(_weights_files(model.path))


class TorchInt8(Engine):
    name = "torch-int8"
    label = "PyTorch dynamic int8"
    precision = "int8"

    @staticmethod
    def _quantize(module):
        import torch

        return torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)

    def prepare(self, ctx, log=print):
        """Quantize once and save the state dict: its size is this engine's model on disk."""
        import torch

        from ..model.hf_loader import hash_model_dir, load_checkpoint

        model = BenchModel.from_dict(ctx["model"])
        path = Path(ctx["cache"]) / "torch-int8" / f"{model_slug(model.name)}-{hash_model_dir(Path(model.path))[:12]}.pt"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            q = self._quantize(pooled_module(load_checkpoint(model.path)))
            tmp = path.with_suffix(".tmp")
            torch.save(q.state_dict(), tmp)
            tmp.rename(path)
        return {"state_dict": str(path), "backend": torch.backends.quantized.engine}

    def load(self, model, spec, threads):
        return _TorchRunner(self._quantize(_torch_model(model, threads)))

    def files(self, model, spec):
        return _sizes([Path(model.path) / "config.json", spec["state_dict"]])


# -- ONNX Runtime ------------------------------------------------------------------------------------
def onnx_fp32(model: BenchModel, cache: Path, *, log=print) -> dict:
    """FP32 ONNX of ``pooled_module`` + ONNX Runtime's BERT fusions, cached; checked against PyTorch.

    ``{"fp32": the graph ORT runs, "plain": the unfused export, "fusions": what was fused}``."""
    import onnxruntime as ort  # noqa: F401  (a missing package is reported before any work)
    import onnx  # noqa: F401

    from ..model.hf_loader import hash_model_dir

    d = cache / "onnx" / (f"{model_slug(model.name)}-{hash_model_dir(Path(model.path))[:12]}"
                          + ("" if model.pooling == "mean" else f"-{model.pooling}"))
    plain, fused = d / "model.onnx", d / "model-fused.onnx"
    meta_path = d / "fp32.json"
    if meta_path.is_file():
        return json.loads(meta_path.read_text())
    d.mkdir(parents=True, exist_ok=True)
    import warnings

    import torch

    from ..model.hf_loader import load_checkpoint
    from .models import bench_inputs

    module = pooled_module(load_checkpoint(model.path))
    probe = bench_inputs(model, 2, 16, seed=1)
    args = tuple(torch.from_numpy(probe[n]) for n in _INPUTS)
    log(f"exporting {model.name} to ONNX")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(plain), input_names=list(_INPUTS), output_names=["out"],
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in _INPUTS}, opset_version=17, dynamo=False)
        ref = module(*args).numpy()

    def diff(path) -> float:
        sess = _ort_session(path, 2)
        got = sess.run(None, {i.name: probe[i.name] for i in sess.get_inputs()})[0]
        return float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())))

    if (err := diff(plain)) > 2e-3:
        raise RuntimeError(f"the ONNX export differs from PyTorch (relative max diff {err:.3g})")
    src, fusion = plain, "none"
    try:  # ONNX Runtime's own recipe for BERT: fuse attention/LayerNorm/GELU (then quantize)
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(str(plain), model_type="bert", num_heads=model.heads, hidden_size=model.hidden)
        opt.save_model_to_file(str(fused))
        stats = opt.get_fused_operator_statistics()
        fusion = ", ".join(f"{k} {v}" for k, v in sorted(stats.items()) if v) or "none"
        if (err := diff(fused)) > 2e-3:
            fusion = f"none (the fused graph differs from PyTorch by {err:.3g})"
        else:
            src = fused
    except Exception as e:  # noqa: BLE001 - the plain export is still a valid ORT model
        fusion = f"none ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    meta = {"fp32": str(src), "plain": str(plain), "fusions": fusion}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def onnx_int8(model: BenchModel, cache: Path, *, log=print) -> dict:
    """``onnxruntime.quantization.quantize_dynamic`` (QInt8 weights) of the fused FP32 graph, cached.

    The fused graph holds contrib ops ONNX shape inference does not know, hence
    ``DefaultTensorType``; if that quantization fails, the unfused export is quantized."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = onnx_fp32(model, cache, log=log)
    d = Path(fp32["fp32"]).parent
    out, meta_path = d / "model-int8.onnx", d / "int8.json"
    if meta_path.is_file():
        return json.loads(meta_path.read_text())
    log(f"quantizing the ONNX model (dynamic int8, QInt8 weights; fusions: {fp32['fusions']})")
    fusion = fp32["fusions"]
    try:
        quantize_dynamic(fp32["fp32"], str(out), weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    except Exception as e:  # noqa: BLE001
        if fp32["fp32"] == fp32["plain"]:
            raise
        fusion = f"none (quantizing the fused graph failed: {type(e).__name__})"
        quantize_dynamic(fp32["plain"], str(out), weight_type=QuantType.QInt8)
    meta = {"int8": str(out), "fusions": fusion}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def _ort_session(path, threads: int, passive: bool = False):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if passive:  # idle threads sleep instead of spinning (see thread_env)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class _OrtRunner(Runner):
    def __init__(self, path, threads, passive=False):
        self.sess = _ort_session(path, threads, passive)
        # the exporter drops inputs the model ignores (DistilBERT: token_type_ids, position_ids)
        self.names = [i.name for i in self.sess.get_inputs()]

    def __call__(self, inputs):
        return self.sess.run(None, {n: inputs[n] for n in self.names})[0].astype(np.float64)


class OrtFp32(Engine):
    name = "ort-fp32"
    label = "ONNX Runtime FP32"

    def imports(self):
        import onnxruntime  # noqa: F401

    def prepare(self, ctx, log=print):
        make = onnx_int8 if self.precision == "int8" else onnx_fp32
        meta = make(BenchModel.from_dict(ctx["model"]), Path(ctx["cache"]), log=log)
        import onnxruntime

        return {"onnx": meta[self.precision], "fusions": meta["fusions"], "onnxruntime": onnxruntime.__version__}

    def load(self, model, spec, threads):
        return _OrtRunner(spec["onnx"], threads, bool(spec.get("passive_wait")))

    def files(self, model, spec):
        p = Path(spec["onnx"])
        return _sizes([p, *p.parent.glob(p.name + ".data")])


class OrtInt8(OrtFp32):
    name = "ort-int8"
    label = "ONNX Runtime dynamic int8"
    precision = "int8"


ENGINES: dict[str, Engine] = {e.name: e for e in (TvmInt8(), TvmInt8Untuned(), TvmFp32(), TorchFp32(), TorchInt8(),
                                                   OrtFp32(), OrtInt8())}
DEFAULT_ENGINES = ("tvm-int8", "tvm-fp32", "torch-fp32", "torch-int8", "ort-fp32", "ort-int8")  # the six
EXTRA_ENGINES = ("tvm-int8-untuned",)  # ours without a tuning database, on request (not in "all")


def skip_reason(e: BaseException) -> str:
    """One line saying why an engine cannot run (a missing package names its install command)."""
    if isinstance(e, ModuleNotFoundError) and e.name:
        top = e.name.split(".")[0]
        hint = INSTALL_HINTS.get(top)
        return f"{top} is not installed" + (f" ({hint})" if hint else "")
    if isinstance(e, ImportError):
        return f"cannot import: {str(e).splitlines()[0][:200]}" if str(e) else "an import failed"
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300] if msg else ''}".rstrip(": ")


def thread_env(threads: int, passive: bool = False) -> dict[str, str]:
    """Environment of a worker: every thread pool sized ``threads``.

    ``passive``: idle pool threads sleep at once instead of spinning (OpenMP ``OMP_WAIT_POLICY``,
    TVM ``TVM_THREAD_POOL_SPIN_COUNT``; ONNX Runtime's ``allow_spinning`` is set on the session).
    Spinning wins on an idle machine; on a loaded one a thread spinning at a barrier while its
    partner is descheduled burns its time slice (PyTorch with 2 threads then ran a 2-layer
    model 300x slower than with 1).
    """
    env = dict(os.environ)
    n = str(threads)
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, TVM_NUM_THREADS=n,
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    for k in ("OMP_WAIT_POLICY", "TVM_THREAD_POOL_SPIN_COUNT"):
        env.pop(k, None)
    if passive:
        env.update(OMP_WAIT_POLICY="PASSIVE", TVM_THREAD_POOL_SPIN_COUNT="0")
    return env
