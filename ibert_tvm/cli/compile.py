"""``ibert-tvm compile q/ --target T -o out/``: integer-only Relax -> verified .so + manifest."""

from __future__ import annotations

import time

from ..errors import IBertTVMError
from .common import check_output_of


def add_parser(sub) -> None:
    from ..targets import TARGETS

    p = sub.add_parser("compile", help="quantized artifact -> verified integer-only .so", description=
                       "Import the float model q/ was calibrated from (TVM's PyTorch frontend), lower it to "
                       "integer ops with Relax passes, prove it float-free, build it for a target and write "
                       ".so + params + manifest atomically.")
    p.add_argument("quantized", help="directory written by `ibert-tvm calibrate`")
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.add_argument("--target", default="llvm", choices=list(TARGETS), help="target (default llvm: this CPU)")
    p.add_argument("--database", help="MetaSchedule database directory to apply (default: the matching "
                   "tuning_logs/<target>/<model-id>/ if there is one)")
    p.add_argument("--no-tuning", action="store_true", help="apply no tuning database (the default schedules)")
    p.add_argument("--model", help="the Hugging Face directory q/ was calibrated from (default: the path q/ "
                   "records; its sha256 must match)")
    p.add_argument("--dump-ir", help="write mod.script() after each pass and pipeline phase to this directory")
    p.set_defaults(func=cmd)


def cmd(args) -> int:
    from ..deploy.export import ARTIFACT, compile_quantized
    from ..quantization.artifact import QuantizedModel

    check_output_of(args.output, args.quantized, ARTIFACT)
    qm = QuantizedModel.load(args.quantized)
    t0 = time.time()
    print(f"compiling {args.quantized} for {args.target} (this builds every integer kernel; minutes for a full model)")
    if args.no_tuning and args.database:
        raise IBertTVMError("--no-tuning and --database contradict each other: pick one")
    database = False if args.no_tuning else args.database
    m = compile_quantized(qm, args.output, target=args.target, database_dir=database, dump_dir=args.dump_ir,
                          model=args.model, where=args.quantized)
    print(f"output: {m['output']['name']} int32, scale {m['output']['scale']:.6g}; max sequence {m['max_seq']} "
          f"({time.time() - t0:.1f} s)")
    return 0
