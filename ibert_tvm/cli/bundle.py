"""``ibert-tvm bundle out/ -o board.tar.gz``: the model, the runtime-only modules and pinned requirements."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("bundle", help="pack a compiled model for a board (one .tar.gz)", description=
                       "Pack what a board needs into one file: the compiled model, the runtime-only ibert_tvm "
                       "modules (run, ibert_tvm.load, the server), requirements.txt with exact pins, and a "
                       "README.txt that walks copy -> install -> run / serve.")
    p.add_argument("compiled", help="directory written by `ibert-tvm compile` (e.g. --target aarch64)")
    p.add_argument("-o", "--output", required=True, help="the bundle to write, NAME.tar.gz (unpacks into NAME/)")
    p.set_defaults(func=cmd)


def cmd(args) -> int:
    from ..deploy.bundle import make_bundle

    info = make_bundle(args.compiled, args.output)
    print(f"{args.output}: {info['model_id']} ({info['head']}) for {info['target']} ({info['arch']}), "
          f"{len(info['files'])} files; on the board: see README.txt inside")
    return 0
