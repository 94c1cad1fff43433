"""``ibert-tvm tune q/ --target T --trials N``: MetaSchedule search, the database kept for compile
(the tuner lives in :mod:`ibert_tvm.tuning`)."""

from __future__ import annotations

import sys

def cmd(args) -> int:
    from ..quantization.artifact import QuantizedModel
    from ..tuning.run import tune

    qm = QuantizedModel.load(args.quantized)
    try:
        tune(qm, target=args.target, trials=args.trials, work_dir=args.work_dir, rpc_tracker=args.rpc_tracker,
             rpc_key=args.rpc_key, only=args.only, seed=args.seed)
    except KeyboardInterrupt:
        print("interrupted: the trials measured so far are saved; run the same command again to resume",
              file=sys.stderr)
        return 130
    return 0


def add_parser(sub) -> None:
    from ..schedules.tuning_db import ENV_ROOT
    from ..targets import TARGETS

    p = sub.add_parser(
        "tune", help="MetaSchedule-tune the integer kernels; keep the database for compile",
        description="Search schedules for the model's fused integer workloads with MetaSchedule and save the "
        "database under tuning_logs/<target>/<model identity>/ (or --work-dir), where `ibert-tvm compile` finds "
        "it. A tuned schedule is kept only if it beats the default one on its kernel, and the database is applied "
        "only if the whole model is faster with it (the in-model check at the end; its numbers are printed and "
        "saved). Re-running the same command resumes an interrupted tune.",
    )
    p.add_argument("quantized", help="quantized artifact directory (from `ibert-tvm calibrate`)")
    p.add_argument("--target", default="x86", choices=list(TARGETS), help="target name (default x86)")
    p.add_argument("--trials", type=int, required=True,
                   help="measured candidates in total for the directory, shared across workloads by op count x "
                   "calls; a re-run tunes only what is missing up to this total (resume / extend)")
    p.add_argument("--work-dir", help=f"database directory (default ${ENV_ROOT} or ./tuning_logs, then "
                   "<target>/<identity>)")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure on devices registered with this RPC tracker")
    p.add_argument("--rpc-key", help="the device key registered with the RPC tracker")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="tune only workloads whose name contains NAME (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="search seed (default 0)")
    p.set_defaults(func=cmd)
