"""``ibert-tvm verify out/|q/``: prove a model has no floating point."""

from __future__ import annotations

from ..errors import IBertTVMError


def add_parser(sub) -> None:
    from ..targets import TARGETS

    p = sub.add_parser("verify", help="prove a model has no floating point", description=
                       "For a compiled out/: the recorded module check plus a disassembly scan of model.so. "
                       "For a quantized q/: build it and verify the lowered Relax/TIR and the generated code.")
    p.add_argument("path", help="compiled (out/) or quantized (q/) directory")
    p.add_argument("--target", default="llvm", choices=list(TARGETS), help="target for a quantized dir")
    p.set_defaults(func=cmd)


def cmd(args) -> int:
    from pathlib import Path

    p = Path(args.path)
    if (p / "manifest.json").is_file():
        from ..deploy.verify_artifact import verify_compiled

        report = verify_compiled(p)  # refuses a corrupt manifest or a model.so it does not record
    elif (p / "quantization.json").is_file():
        from ..frontend.lower import integer_module
        from ..passes.pipeline import build
        from ..quantization.artifact import QuantizedModel
        from ..targets import get_target

        qm = QuantizedModel.load(p)
        mod, _, _ = integer_module(qm, where=str(p))
        print(f"building {p} for {args.target} to verify the lowered module and the generated code ...")
        _, mod_report, code_report = build(mod, get_target(args.target).tvm_target())
        print(mod_report.format())
        report = code_report
    else:
        raise IBertTVMError(f"{p} is neither a compiled model (manifest.json) nor a quantized model (quantization.json)")
    print(report.format())
    return 0 if report.float_ops == 0 else 1
