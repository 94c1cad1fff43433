"""``ibert-tvm``: calibrate, compile, run and verify integer-only BERT-family models.

    ibert-tvm calibrate MODEL_DIR|default -o q/        static scales from sample text
    ibert-tvm compile q/ --target llvm -o out/          integer-only Relax -> .so + manifest
    ibert-tvm run out/ "a sentence" ["second"]          embedding or label + logits
    ibert-tvm verify out/|q/                            proves: float ops 0
    ibert-tvm serve out/ [--port 8080]                  HTTP embeddings (TEI / OpenAI protocols)
    ibert-tvm bundle out/ -o board.tar.gz               everything a board needs, in one file
    ibert-tvm tune | eval | bench | sensitivity         tuning, accuracy, speed, Q-BERT bit plans

One module per command in this package (``cli/<command>.py``): ``add_parser(sub)`` registers
its parser with ``func=cmd``, and ``cmd(args)`` returns the exit code. Commands import their
heavy dependencies (torch, TVM's compiler) inside ``cmd``, so ``--help`` stays fast. The work
itself lives in the packages below (quantization, deploy, benchmarks, ...): a command parses,
checks, calls and prints.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import IBertTVMError

COMMANDS = ("calibrate", "compile", "run", "verify", "serve", "bundle", "tune", "eval", "bench", "sensitivity")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    ap = argparse.ArgumentParser(prog="ibert-tvm", description=__doc__.split("\n\n")[0] + "\n\n" +
                                 __doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"ibert-tvm {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except IBertTVMError as e:
        print(f"ibert-tvm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
