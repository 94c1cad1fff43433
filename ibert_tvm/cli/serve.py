"""``ibert-tvm serve out/``: an embedding server (TEI ``/embed``, OpenAI ``/v1/embeddings``)."""

from __future__ import annotations

import sys

from .argtypes import positive_int


def port_number(s: str) -> int:
    import argparse

    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a port number") from None
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{s} is not a port number (0..65535)")
    return n


def add_parser(sub) -> None:
    from ..deploy.server import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_CLIENT_BATCH_SIZE, DEFAULT_PAYLOAD_LIMIT

    p = sub.add_parser("serve", help="serve a compiled model over HTTP (TEI / OpenAI embeddings)", description=
                       "Serve a compiled model with the TVM runtime (no PyTorch): POST /embed (TEI), "
                       "POST /v1/embeddings (OpenAI), GET /health, GET /info. Concurrent requests are "
                       "batched together. There is no authentication unless --api-key is set.")
    p.add_argument("compiled", help="directory written by `ibert-tvm compile`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; another address exposes the model to the network)")
    p.add_argument("--port", type=port_number, default=8080, help="port (default 8080)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every route but /health "
                   "(default: no authentication)")
    p.add_argument("--max-batch-tokens", type=positive_int, default=DEFAULT_MAX_BATCH_TOKENS,
                   help=f"padded tokens (rows x longest row) per model call (default {DEFAULT_MAX_BATCH_TOKENS})")
    p.add_argument("--max-client-batch-size", type=positive_int, default=DEFAULT_MAX_CLIENT_BATCH_SIZE,
                   help=f"texts per request; more is a 413 (default {DEFAULT_MAX_CLIENT_BATCH_SIZE})")
    p.add_argument("--payload-limit", type=positive_int, default=DEFAULT_PAYLOAD_LIMIT,
                   help=f"request body bytes; more is a 413 (default {DEFAULT_PAYLOAD_LIMIT})")
    p.add_argument("--served-model-name", help="the model name /info and /v1/embeddings report "
                   "(default: the manifest's model identity)")
    p.set_defaults(func=cmd)


def cmd(args) -> int:
    import ibert_tvm

    from ..deploy.server import is_loopback, serve
    from ..errors import IBertTVMError

    if args.api_key is not None and not args.api_key.strip():
        raise IBertTVMError("--api-key is empty")
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise IBertTVMError(f"serve needs starlette and uvicorn ({e}): pip install 'ibert-tvm[serve]'") from None
    model = ibert_tvm.load(args.compiled)
    if args.max_batch_tokens < model.max_seq_length:
        raise IBertTVMError(f"--max-batch-tokens {args.max_batch_tokens} is below the model's maximum sequence "
                            f"length {model.max_seq_length}: one text must fit in a model call")
    if not is_loopback(args.host) and args.api_key is None:
        print(f"ibert-tvm serve: warning: listening on {args.host} with no authentication: anyone who can reach "
              "this address can use the model (set --api-key)", file=sys.stderr)
    serve(model.compiled, args.host, args.port, api_key=args.api_key, max_batch_tokens=args.max_batch_tokens,
          max_client_batch_size=args.max_client_batch_size, payload_limit=args.payload_limit,
          served_model_name=args.served_model_name)
    return 0
