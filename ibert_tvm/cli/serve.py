"""``ibert-tvm serve out/``: an embedding server (TEI ``/embed``, OpenAI ``/v1/embeddings``).

The options and the work live in :mod:`ibert_tvm.deploy.server`, which a board runs directly
(``python -m ibert_tvm.deploy.server``) from a bundle that has no ``cli`` package.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    from ..deploy.server import add_arguments

    p = sub.add_parser("serve", help="serve a compiled model over HTTP (TEI / OpenAI embeddings)", description=
                       "Serve a compiled model with the TVM runtime (no PyTorch): POST /embed (TEI), "
                       "POST /v1/embeddings (OpenAI), GET /health, GET /info. Concurrent requests are "
                       "batched together. There is no authentication unless --api-key is set.")
    add_arguments(p)
    p.set_defaults(func=cmd)


def cmd(args) -> int:
    from ..deploy.server import serve_from_args

    return serve_from_args(args)
