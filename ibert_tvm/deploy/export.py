"""``compile``: quantized artifact -> verified integer-only ``out/`` directory.

``out/`` (written to a temporary sibling, renamed into place only when complete)::

    model.so        the Relax VM executable + kernels for the target
    params.npz      every run-time integer tensor, in call order (names, dtypes and shapes in
                    the manifest: ``params``, ``param_types``); on x86, last, the serial/parallel
                    thresholds of ``schedules.serial_when_small`` (its "spin" table; the manifest's
                    ``serial_thresholds`` records both tables, the loader picks one)
    manifest.json   format, target, identities (source model sha256, quantized-artifact
                    sha256, executable sha256), inputs, output name/dtype/scale, max sequence
                    length, family, labels, tuning database used (``tuning``: records applied / stale), verifier summary, and
                    ``files``: the sha256 of every other file of ``out/`` (``lib_sha256``, the
                    model.so entry, is kept for readers of older manifests)
    tokenizer.json  the tokenizer

``deploy.runtime.CompiledModel`` checks all of it before running anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import IBertTVMError
from ..quantization.artifact import QuantizedModel
from ..support.fs import ArtifactKind, atomic_dir, check_output
from ..targets import TargetSpec, get_target
from .cuda_check import PTX_REPORT
from ..support.hashing import sha256_file

FORMAT = "ibert-tvm-compiled/1"
LIB = "model.so"
PARAMS = "params.npz"
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
# every file ``compile_quantized`` writes: ``compile -o`` replaces a directory holding only these
ARTIFACT = ArtifactKind("compiled model", FORMAT, MANIFEST, frozenset({LIB, PARAMS, MANIFEST, TOKENIZER, PTX_REPORT}))


def quantized_hash(qm: QuantizedModel) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([qm.config.to_dict(), qm.dims, qm.scales], sort_keys=True).encode())
    for k in sorted(qm.tensors):
        h.update(k.encode())
        h.update(np.ascontiguousarray(qm.tensors[k]).tobytes())
    return h.hexdigest()


def compiler_hash() -> str:
    """Hash of the sources that decide what ``compile_quantized`` builds: a compile cache keyed by
    it is not reused after the compiler changes (new schedules would otherwise never be built)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for sub in ("op", "model", "passes", "schedules", "quantization", "frontend", "deploy/export.py", "targets.py"):
        p = root / sub
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def export_library(ex, path: Path, spec: TargetSpec) -> None:
    if spec.cross_compiler is None:
        ex.export_library(str(path))
        return
    import shutil

    if shutil.which(spec.cross_compiler) is None:
        raise IBertTVMError(
            f"target {spec.name} needs the cross compiler {spec.cross_compiler}: "
            f"apt-get install {spec.debian_package}"
        )
    from tvm.support import cc

    ex.export_library(str(path), fcompile=cc.cross_compiler(spec.cross_compiler, options=list(spec.link_options)))


def _summary(report) -> dict:
    return {"float_ops": report.float_ops, "dtypes": dict(report.dtypes), "ops": dict(report.ops)}


def compile_quantized(
    qm: QuantizedModel,
    out_dir: str | os.PathLike,
    *,
    target: str = "llvm",
    database_dir: str | None = None,
    dump_dir=None,
    model: str | os.PathLike | None = None,
    where: str = "q/",
    log=print,
) -> dict:
    """Import the float model ``qm`` was calibrated from (``model`` overrides its recorded path),
    lower it to the integer model of ``qm`` (``frontend.lower.integer_module``), build, verify and
    write ``out_dir``. Returns the manifest. ``out_dir`` is checked (replaceable, writable) before
    the build, so a bad output costs no compile time. ``where`` names ``qm``'s directory in errors."""
    check_output(out_dir, ARTIFACT)
    from ..frontend.lower import integer_module, source_model
    from ..model.plan import ModelPlan
    from ..passes.pipeline import build
    from ..schedules import linear_strategy
    from ..schedules import serial_when_small as sws
    from ..frontend.lower import model_inputs

    spec = get_target(target)
    tgt = spec.tvm_target()
    strategy = linear_strategy(spec.name)
    plan = ModelPlan(qm)
    log(f"importing {source_model(qm, model, where=where)} (torch.export + TVM's PyTorch frontend) and lowering it "
        "to the integer op plans")
    mod, names, arrays = integer_module(qm, strategy, model=model, where=where,
                                        dump_dir=None if dump_dir is None else Path(dump_dir) / "frontend")
    from ..schedules.tuning_db import database_origin, resolve_database, select_records

    # An explicit database is checked (target + model identity + sha256); otherwise the matching
    # tuning_logs/<target>/<identity>/ is used when there is one. Of its records, only those tuned
    # against today's default schedule apply, and none if tune's in-model check rejected them.
    db = resolve_database(database_dir, spec.name, qm.identity)
    selection = None
    if db is None:
        log(f"tuning database: none for {spec.name}/{qm.identity} (default schedules)")
    else:
        selection = select_records(db, spec.name, tgt)
        log(selection.message(database_origin(db)))
    apply = selection.database if selection is not None else None
    database_dir = str(db) if apply is not None else None
    extra: dict = {}  # run-time parameters the pipeline appended to forward (the serial/parallel thresholds)
    ex, mod_report, code_report = build(mod, tgt, target_name=spec.name, database_dir=apply, dump_dir=dump_dir,
                                        extra_params=extra)
    names, arrays = [*names, *extra], {**arrays, **extra}
    cuda_section = ptx_report = None
    if "gpu" in tgt.keys:  # CUDA: no GPU here; record the CUDA source hash and nvcc's PTX check
        from .cuda_check import cuda_build_record

        cuda_section, ptx_report = cuda_build_record(ex, tgt)
    d = qm.dims
    manifest = {
        "format": FORMAT,
        "target": spec.name,
        "linear_strategy": strategy.name,
        "target_json": str(tgt),
        "model": {
            "source_hash": qm.source["model_hash"],
            "architecture": qm.source["architecture"],
            "quantized_hash": quantized_hash(qm),
            "identity": qm.identity,
            "quantization": qm.config.name,
            "weight_bits": plan.weight_bits(),  # packed (< 8-bit) linears; every other linear is int8
        },
        "inputs": model_inputs(mod["forward"]),  # the model's own: no token_type_ids for DistilBERT
        "params": names,
        "param_types": [[np.asarray(arrays[n]).dtype.name, list(np.shape(arrays[n]))] for n in names],
        "output": {
            "name": plan.output_name,
            "dtype": "int32",
            "scale": plan.out_scale,
            "shape": {"embedding": ["batch", d["hidden"]], "classifier": ["batch", d["num_labels"]]}.get(
                plan.head, ["batch", "seq", d["num_labels"]]),
        },
        "family": d["family"],
        "head": d["head"],
        **({"pooling": plan.pooling, "normalize": bool(d.get("normalize", False))} if d["head"] == "embedding" else {}),
        "max_seq": d["max_seq"],
        "vocab": d["vocab"],
        "type_vocab": d["type_vocab"],
        "pad_id": d["pad_id"],
        "labels": qm.labels,
        "tokenizer": TOKENIZER,
        "tuning_database": str(database_dir) if database_dir else None,  # None when no record applied
        "tuning": selection.summary() if selection is not None else None,
        "verify": {"module": _summary(mod_report), "code": _summary(code_report)},
    }
    if sws.TABLE_PARAM in extra:  # the kernels read their serial/parallel thresholds from this parameter
        manifest["serial_thresholds"] = {"param": sws.TABLE_PARAM, "classes": list(sws.CLASSES),
                                         **{name: sws.table(name) for name in sws.TABLES}}
    if cuda_section is not None:
        manifest["cuda"] = cuda_section
    with atomic_dir(out_dir, ARTIFACT) as tmp:
        export_library(ex, tmp / LIB, spec)
        np.savez(tmp / PARAMS, **{f"p{i:04d}": arrays[n] for i, n in enumerate(names)})
        (tmp / TOKENIZER).write_text(qm.tokenizer_json, encoding="utf-8")
        if ptx_report is not None:
            (tmp / PTX_REPORT).write_text(json.dumps(ptx_report, indent=1))
        manifest["files"] = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
        manifest["lib_sha256"] = manifest["files"][LIB]
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    log(f"wrote {out_dir} ({spec.name}); {mod_report.float_ops} float ops in the module, {code_report.float_ops} in the code")
    if cuda_section is not None:
        ptx = cuda_section["ptx"]
        log(
            f"CUDA {cuda_section['arch']}: PTX not checked ({cuda_section['ptx_skipped']})" if ptx is None else
            f"CUDA {ptx['arch']} PTX ({ptx['nvcc']}): int8 matmul kernels {ptx['int8_matmul_units']}, "
            f"untensorized {len(ptx['untensorized_int8_matmuls'])}, float ops {ptx['float_ops']}; compiled only, "
            "not run here (no GPU)"
        )
    return manifest
